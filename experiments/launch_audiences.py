"""Launch audiences on the rolling-origin windows: the default model's audience part with one
variant of its params, on the validation windows (December with November as history, January with
November - December) or, once the choices are made, on the test window (February).

    .venv/bin/python experiments/launch_audiences.py --variant baseline
    .venv/bin/python experiments/launch_audiences.py --variant regression --set cold_item_vectors=regression
    .venv/bin/python experiments/launch_audiences.py --variant chosen --windows test   # once, after

Each run fits the hybrid of ``experiments/configs/default.toml`` (plus ``--set`` overrides) on each
window and scores audiences exactly as the report does (``training.evaluate.evaluate_audiences``:
recall@N of the window's buyers, lift over the N most active members, expected / actual buyers),
for sold products, never-sold products by catalogue id and by attributes alone, with the
category-buyers baseline beside it. The picks ranker is fitted with one tree: the audience models
depend on nothing it learns (their examples draw from their own random stream), so its size only
costs time here. Figures are printed and merged into ``experiments/results/launch_audiences.json``
(variant -> window -> metrics, with the validation mean).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from variant_windows import REPO, load_window, run_variant  # noqa: E402

KEYS = [f"audience_{g}_{m}" for g in ("known", "new", "attr")
        for m in ("lift_most_active@1000", "recall@1000", "recall@5000", "expected_over_actual@1000")]


def run_window(label: str, overrides: dict[str, object], baselines: bool, data_dir: Path) -> dict[str, dict[str, float]]:
    from recsys.models import get_model
    from training.evaluate import evaluate_audiences

    win = load_window(label, data_dir)
    data = win.data
    activity = np.bincount(data.interactions.member, minlength=data.n_members)
    reference = np.lexsort((np.arange(data.n_members), -activity))
    ev = win.config.evaluation
    out: dict[str, dict[str, float]] = {}
    models = {"hybrid": ("hybrid", {**win.config.model.params, "n_estimators": 1, **overrides})}
    if baselines:
        models["category buyers"] = ("category_buyers", {})
    for name, (model_name, params) in models.items():
        t0 = time.perf_counter()
        model = get_model(model_name)(params).fit(data)
        fit_s = time.perf_counter() - t0
        m = evaluate_audiences(model, win.truth, win.seen, sizes=(1000, 5000), min_buyers_known=ev.min_buyers_known,
                               min_buyers_new=ev.min_buyers_new, reference=reference, catalogue=data)
        m["fit_s"], m["total_s"] = fit_s, time.perf_counter() - t0
        out[name] = m
        print(f"  {label} {name}: sold {m['audience_known_lift_most_active@1000']:.3f}x, never-sold "
              f"{m['audience_new_lift_most_active@1000']:.3f}x, by attributes {m['audience_attr_lift_most_active@1000']:.3f}x"
              f" ({m['audience_known_n_products']:.0f} / {m['audience_new_n_products']:.0f} products, "
              f"{m['total_s']:.0f} s)", flush=True)
    return out


def show(window: str, model: str, m: dict[str, float]) -> str:
    def g(key: str) -> float:
        return m.get(key, float("nan"))

    return (f"sold {g('audience_known_lift_most_active@1000'):.3f}x  "
            f"never-sold {g('audience_new_lift_most_active@1000'):.3f}x  "
            f"attributes {g('audience_attr_lift_most_active@1000'):.3f}x  "
            f"R@5000 sold/new/attr {g('audience_known_recall@5000'):.3f} / "
            f"{g('audience_new_recall@5000'):.3f} / {g('audience_attr_recall@5000'):.3f}  "
            f"expected/actual@1000 sold/new/attr {g('audience_known_expected_over_actual@1000'):.2f} / "
            f"{g('audience_new_expected_over_actual@1000'):.2f} / {g('audience_attr_expected_over_actual@1000'):.2f}")


if __name__ == "__main__":
    run_variant(__doc__.split("\n\n")[0], REPO / "experiments" / "results" / "launch_audiences.json",
                "also the category-buyers baseline", run_window, KEYS, show)
