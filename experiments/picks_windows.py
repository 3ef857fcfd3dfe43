"""Picks on the rolling-origin windows: the default model's picks part with one variant of its
params, on the validation windows (December with November as history, January with November -
December) or, once the choices are made, on the test window (February).

    .venv/bin/python experiments/picks_windows.py --variant default
    .venv/bin/python experiments/picks_windows.py --variant lambdarank --set ranker_objective=lambdarank
    .venv/bin/python experiments/picks_windows.py --variant chosen --windows test   # once, after

Each run fits the hybrid of ``experiments/configs/default.toml`` (plus ``--set`` overrides) without
its audience models (they do not touch picks) on each window and scores picks exactly as the report
does (``training.evaluate.evaluate_picks``: replenish mode, Recall@k over min(k, |truth|), NDCG
with the ideal over min(k, |truth|)), with GP-TopFreq (``--baselines``) beside it. Figures are
printed and merged into ``experiments/results/picks_windows.json`` (variant -> window -> metrics,
with the validation mean).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from variant_windows import REPO, load_window, run_variant  # noqa: E402

KEYS = ("recall@10", "ndcg@10", "recall@20", "ndcg@20", "repeat_recall@10", "new_recall@10")


def run_window(label: str, overrides: dict[str, object], baselines: bool, data_dir: Path) -> dict[str, dict[str, float]]:
    from recsys.models import get_model
    from training.evaluate import evaluate_picks

    win = load_window(label, data_dir)
    models = {"hybrid": ("hybrid", {**win.config.model.params, "audiences": False, **overrides})}
    if baselines:
        models["GP-TopFreq"] = ("top_frequency", {})
    out: dict[str, dict[str, float]] = {}
    for name, (model_name, params) in models.items():
        t0 = time.perf_counter()
        model = get_model(model_name)(params).fit(win.data)
        fit_s = time.perf_counter() - t0
        m = evaluate_picks(model, win.truth, win.seen, ks=(10, 20))
        m = {k: float(v) for k, v in m.items() if k in KEYS or k.startswith(("recall@", "ndcg@"))}
        m["fit_s"], m["total_s"] = fit_s, time.perf_counter() - t0
        out[name] = m
        print(f"  {label} {name}: Recall@10 {m['recall@10']:.4f}  NDCG@10 {m['ndcg@10']:.4f}  "
              f"({m['total_s']:.0f} s)", flush=True)
    return out


def show(window: str, model: str, m: dict[str, float]) -> str:
    return (f"Recall@10 {m['recall@10']:.4f}  NDCG@10 {m['ndcg@10']:.4f}  Recall@20 {m['recall@20']:.4f}  "
            f"repeat / new R@10 {m['repeat_recall@10']:.4f} / {m['new_recall@10']:.4f}")


if __name__ == "__main__":
    run_variant(__doc__.split("\n\n")[0], REPO / "experiments" / "results" / "picks_windows.json",
                "also GP-TopFreq", run_window, KEYS, show)
