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

import argparse
import json
import time
import tomllib
from datetime import date
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
WINDOWS = {
    "2000-12": (date(2000, 12, 1), date(2001, 1, 1)),
    "2001-01": (date(2001, 1, 1), date(2001, 2, 1)),
    "2001-02": (date(2001, 2, 1), date(2001, 3, 1)),
}
VALIDATION = ("2000-12", "2001-01")
KEYS = [f"audience_{g}_{m}" for g in ("known", "new", "attr")
        for m in ("lift_most_active@1000", "recall@1000", "recall@5000", "expected_over_actual@1000")]


def parse_value(text: str) -> object:
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def run_window(label: str, overrides: dict[str, object], baselines: bool, data_dir: Path) -> dict[str, dict[str, float]]:
    from recsys.models import get_model
    from training.config import TrainConfig
    from training.data import DataPaths, load_split
    from training.evaluate import evaluate_audiences
    from training.windows import ensure_features

    cutoff, end = WINDOWS[label]
    base = TrainConfig.from_toml(REPO / "experiments" / "configs" / "default.toml")
    ensure_features(data_dir, base.data.dataset, cutoff)
    data_cfg = base.data.model_copy(update={"data_dir": data_dir, "cutoff": cutoff, "test_end": end})
    data, split = load_split(DataPaths(data_cfg.canonical, data_cfg.features), cutoff, end)
    truth, seen = split.truth(), split.seen()
    activity = np.bincount(data.interactions.member, minlength=data.n_members)
    reference = np.lexsort((np.arange(data.n_members), -activity))
    ev = base.evaluation
    out: dict[str, dict[str, float]] = {}
    models = {"hybrid": ("hybrid", {**base.model.params, "n_estimators": 1, **overrides})}
    if baselines:
        models["category buyers"] = ("category_buyers", {})
    for name, (model_name, params) in models.items():
        t0 = time.perf_counter()
        model = get_model(model_name)(params).fit(data)
        fit_s = time.perf_counter() - t0
        m = evaluate_audiences(model, truth, seen, sizes=(1000, 5000), min_buyers_known=ev.min_buyers_known,
                               min_buyers_new=ev.min_buyers_new, reference=reference, catalogue=data)
        m["fit_s"], m["total_s"] = fit_s, time.perf_counter() - t0
        out[name] = m
        print(f"  {label} {name}: sold {m['audience_known_lift_most_active@1000']:.3f}x, never-sold "
              f"{m['audience_new_lift_most_active@1000']:.3f}x, by attributes {m['audience_attr_lift_most_active@1000']:.3f}x"
              f" ({m['audience_known_n_products']:.0f} / {m['audience_new_n_products']:.0f} products, "
              f"{m['total_s']:.0f} s)", flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--variant", required=True, help="a name for this variant (the key in the results file)")
    ap.add_argument("--set", action="append", default=[], metavar="PARAM=VALUE",
                    help="a hybrid param over default.toml's (TOML value: 1.5, true, [\"a\", \"b\"], text)")
    ap.add_argument("--windows", choices=["validation", "test"], default="validation",
                    help="validation: December and January (every choice is made here); test: February, once, after")
    ap.add_argument("--baselines", action="store_true", help="also the category-buyers baseline")
    ap.add_argument("--data-dir", type=Path, default=REPO / "data")
    ap.add_argument("--out", type=Path, default=REPO / "experiments" / "results" / "launch_audiences.json")
    args = ap.parse_args()
    overrides = {}
    for item in args.set:
        key, _, value = item.partition("=")
        overrides[key.strip()] = parse_value(value.strip())
    labels = VALIDATION if args.windows == "validation" else ("2001-02",)
    per = {w: run_window(w, overrides, args.baselines, args.data_dir) for w in labels}
    doc = json.loads(args.out.read_text()) if args.out.exists() else {}
    entry = doc.setdefault(args.variant, {"params": overrides})
    entry["params"] = overrides
    for w, models in per.items():
        entry[w] = models
    if all(w in entry for w in VALIDATION):
        entry["validation_mean"] = {
            name: {k: float(np.mean([entry[w][name][k] for w in VALIDATION])) for k in KEYS
                   if all(k in entry[w].get(name, {}) for w in VALIDATION)}
            for name in entry[VALIDATION[0]] if all(name in entry[w] for w in VALIDATION)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=1) + "\n")
    print(f"variant {args.variant!r} ({overrides}):")
    for w in (*labels, *(("validation_mean",) if "validation_mean" in entry and args.windows == "validation" else ())):
        for name, m in entry[w].items():
            print(f"  {w:>15} {name:>16}: sold {m.get('audience_known_lift_most_active@1000', float('nan')):.3f}x  "
                  f"never-sold {m.get('audience_new_lift_most_active@1000', float('nan')):.3f}x  "
                  f"attributes {m.get('audience_attr_lift_most_active@1000', float('nan')):.3f}x  "
                  f"R@5000 sold/new/attr {m.get('audience_known_recall@5000', float('nan')):.3f} / "
                  f"{m.get('audience_new_recall@5000', float('nan')):.3f} / {m.get('audience_attr_recall@5000', float('nan')):.3f}  "
                  f"expected/actual@1000 sold/new/attr {m.get('audience_known_expected_over_actual@1000', float('nan')):.2f} / "
                  f"{m.get('audience_new_expected_over_actual@1000', float('nan')):.2f} / "
                  f"{m.get('audience_attr_expected_over_actual@1000', float('nan')):.2f}")


if __name__ == "__main__":
    main()
