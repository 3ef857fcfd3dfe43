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

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from launch_audiences import VALIDATION, WINDOWS, parse_value  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
KEYS = ("recall@10", "ndcg@10", "recall@20", "ndcg@20", "repeat_recall@10", "new_recall@10")


def run_window(label: str, overrides: dict[str, object], baselines: bool, data_dir: Path) -> dict[str, dict[str, float]]:
    from recsys.models import get_model
    from training.config import TrainConfig
    from training.data import DataPaths, load_split
    from training.evaluate import evaluate_picks
    from training.windows import ensure_features

    cutoff, end = WINDOWS[label]
    base = TrainConfig.from_toml(REPO / "experiments" / "configs" / "default.toml")
    ensure_features(data_dir, base.data.dataset, cutoff)
    data_cfg = base.data.model_copy(update={"data_dir": data_dir, "cutoff": cutoff, "test_end": end})
    data, split = load_split(DataPaths(data_cfg.canonical, data_cfg.features), cutoff, end)
    truth, seen = split.truth(), split.seen()
    models = {"hybrid": ("hybrid", {**base.model.params, "audiences": False, **overrides})}
    if baselines:
        models["GP-TopFreq"] = ("top_frequency", {})
    out: dict[str, dict[str, float]] = {}
    for name, (model_name, params) in models.items():
        t0 = time.perf_counter()
        model = get_model(model_name)(params).fit(data)
        fit_s = time.perf_counter() - t0
        m = evaluate_picks(model, truth, seen, ks=(10, 20))
        m = {k: float(v) for k, v in m.items() if k in KEYS or k.startswith(("recall@", "ndcg@"))}
        m["fit_s"], m["total_s"] = fit_s, time.perf_counter() - t0
        out[name] = m
        print(f"  {label} {name}: Recall@10 {m['recall@10']:.4f}  NDCG@10 {m['ndcg@10']:.4f}  "
              f"({m['total_s']:.0f} s)", flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--variant", required=True, help="a name for this variant (the key in the results file)")
    ap.add_argument("--set", action="append", default=[], metavar="PARAM=VALUE",
                    help="a hybrid param over default.toml's (TOML value: 1.5, true, [\"a\", \"b\"], text)")
    ap.add_argument("--windows", choices=["validation", "test"], default="validation",
                    help="validation: December and January (every choice is made here); test: February, once, after")
    ap.add_argument("--baselines", action="store_true", help="also GP-TopFreq")
    ap.add_argument("--data-dir", type=Path, default=REPO / "data")
    ap.add_argument("--out", type=Path, default=REPO / "experiments" / "results" / "picks_windows.json")
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
        entry[w] = {**entry.get(w, {}), **models}
    if all(w in entry for w in VALIDATION):
        entry["validation_mean"] = {
            name: {k: float(np.mean([entry[w][name][k] for w in VALIDATION])) for k in KEYS
                   if all(k in entry[w].get(name, {}) for w in VALIDATION)}
            for name in entry[VALIDATION[0]] if all(name in entry[w] for w in VALIDATION)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=1) + "\n")
    print(f"variant {args.variant!r} ({overrides}):")
    shown = (*labels, *(("validation_mean",) if "validation_mean" in entry and args.windows == "validation" else ()))
    for w in shown:
        for name, m in entry[w].items():
            print(f"  {w:>15} {name:>12}: Recall@10 {m['recall@10']:.4f}  NDCG@10 {m['ndcg@10']:.4f}  "
                  f"Recall@20 {m['recall@20']:.4f}  repeat / new R@10 {m['repeat_recall@10']:.4f} / "
                  f"{m['new_recall@10']:.4f}")


if __name__ == "__main__":
    main()
