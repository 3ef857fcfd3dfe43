"""What the rolling-origin variant experiments share (``launch_audiences.py``, ``picks_windows.py``):
the windows, each window's data as the report loads it, the command line (``--variant``, ``--set
PARAM=VALUE`` over ``experiments/configs/default.toml``, ``--windows validation|test``) and the
results file (variant -> window -> model -> metrics, with the validation windows' mean).

Every choice is made on the validation windows (December with November as history, January with
November - December); the test window (February) is run once, after.
"""

from __future__ import annotations

import argparse
import json
import tomllib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
WINDOWS = {
    "2000-12": (date(2000, 12, 1), date(2001, 1, 1)),
    "2001-01": (date(2001, 1, 1), date(2001, 2, 1)),
    "2001-02": (date(2001, 2, 1), date(2001, 3, 1)),
}
VALIDATION = ("2000-12", "2001-01")
TEST = ("2001-02",)

# one window's models -> metrics
WindowRun = Callable[[str, dict[str, object], bool, Path], dict[str, dict[str, float]]]


def parse_value(text: str) -> object:
    """A ``--set`` value as TOML (1.5, true, ["a", "b"]), else the text itself."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


@dataclass
class Window:
    """One window's data, loaded and split as the report does."""

    config: Any  # training.config.TrainConfig: default.toml
    data: Any  # recsys.models.base.TrainData: the history before the window
    truth: Any  # members x products bought in the window
    seen: Any  # members x products bought before it


def load_window(label: str, data_dir: Path) -> Window:
    from training.config import TrainConfig
    from training.data import DataPaths, load_split
    from training.windows import ensure_features

    cutoff, end = WINDOWS[label]
    base = TrainConfig.from_toml(REPO / "experiments" / "configs" / "default.toml")
    ensure_features(data_dir, base.data.dataset, cutoff)
    data_cfg = base.data.model_copy(update={"data_dir": data_dir, "cutoff": cutoff, "test_end": end})
    data, split = load_split(DataPaths(data_cfg.canonical, data_cfg.features), cutoff, end)
    return Window(base, data, split.truth(), split.seen())


def run_variant(description: str, default_out: Path, baselines_help: str, run_window: WindowRun,
                keys: Iterable[str], show: Callable[[str, str, dict[str, float]], str]) -> None:
    """Parse the command line, run ``run_window`` on the chosen windows, merge the figures into
    the results file and print them (``show(window, model, metrics)``: one line)."""
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--variant", required=True, help="a name for this variant (the key in the results file)")
    ap.add_argument("--set", action="append", default=[], metavar="PARAM=VALUE",
                    help="a hybrid param over default.toml's (TOML value: 1.5, true, [\"a\", \"b\"], text)")
    ap.add_argument("--windows", choices=["validation", "test"], default="validation",
                    help="validation: December and January (every choice is made here); test: February, once, after")
    ap.add_argument("--baselines", action="store_true", help=baselines_help)
    ap.add_argument("--data-dir", type=Path, default=REPO / "data")
    ap.add_argument("--out", type=Path, default=default_out)
    args = ap.parse_args()
    overrides = {}
    for item in args.set:
        key, _, value = item.partition("=")
        overrides[key.strip()] = parse_value(value.strip())
    labels = VALIDATION if args.windows == "validation" else TEST
    per = {w: run_window(w, overrides, args.baselines, args.data_dir) for w in labels}
    doc = json.loads(args.out.read_text()) if args.out.exists() else {}
    entry = doc.setdefault(args.variant, {})
    entry["params"] = overrides
    for w, models in per.items():
        entry[w] = {**entry.get(w, {}), **models}  # a model not run this time keeps its figures
    keys = list(keys)
    if all(w in entry for w in VALIDATION):
        entry["validation_mean"] = {
            name: {k: float(np.mean([entry[w][name][k] for w in VALIDATION])) for k in keys
                   if all(k in entry[w].get(name, {}) for w in VALIDATION)}
            for name in entry[VALIDATION[0]] if all(name in entry[w] for w in VALIDATION)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=1) + "\n")
    print(f"variant {args.variant!r} ({overrides}):")
    mean = ("validation_mean",) if "validation_mean" in entry and args.windows == "validation" else ()
    for w in (*labels, *mean):
        for name, m in entry[w].items():
            print(f"  {w:>15} {name:>16}: {show(w, name, m)}")
