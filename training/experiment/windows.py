"""A trial on every validation window: one :class:`~training.experiment.trials.TrialRunner` per
window (each loads its own split once), the trial's value the mean over the windows.

Pruning reads the first window only: its subsample values are what the pruner compares across
trials (the same window for every trial), and the other windows are fitted only for a trial the
pruner let finish there.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.console import Console

from training.experiment.config import SweepConfig
from training.experiment.trials import TrialOutcome, TrialRunner


class _Unpruned:
    """Stands in for the optuna trial on the windows after the first: reports go nowhere."""

    def report(self, value: float, step: int) -> None:
        pass

    def should_prune(self) -> bool:
        return False


class WindowsRunner:
    """Fits and scores one trial on each validation window of ``cfg``."""

    def __init__(self, cfg: SweepConfig, workdir: Path, console: Console | None = None):
        from training.windows import ensure_features

        self.cfg = cfg
        self.labels = [w.label for w in cfg.validation]
        for w in cfg.validation:  # a window's features snapshot, built when missing
            ensure_features(cfg.data.data_dir, cfg.data.dataset, w.cutoff)
        self.runners = [TrialRunner(cfg.for_window(i), workdir / label, console)
                        for i, label in enumerate(self.labels)]
        self.load_s = sum(r.load_s for r in self.runners)

    def run(self, trial: Any, name: str, params: dict[str, Any], out: TrialOutcome) -> float:
        """The trial on every window; ``out.metrics`` holds each window's metrics under
        ``<window>.<metric>`` and their mean under the plain name, ``out.value`` the mean of the
        sweep's metric. Raises ``optuna.TrialPruned`` when the first window's pruner says stop."""
        if len(self.runners) == 1:
            return self.runners[0].run(trial, name, params, out)
        per: list[TrialOutcome] = []
        for i, (label, runner) in enumerate(zip(self.labels, self.runners, strict=True)):
            sub = TrialOutcome(name, params)
            try:
                runner.run(trial if i == 0 else _Unpruned(), name, params, sub)
            finally:
                out.intermediate = out.intermediate or sub.intermediate
                out.curve = out.curve or sub.curve
                for k, v in sub.timings.items():
                    out.timings[k] = out.timings.get(k, 0.0) + v
            per.append(sub)
            out.metrics.update({f"{label}.{k}": v for k, v in sub.metrics.items()})
        keys = [k for k in per[0].metrics if all(k in p.metrics for p in per)]
        out.metrics.update({k: float(sum(p.metrics[k] for p in per) / len(per)) for k in keys})
        out.value = float(sum(float(p.value) for p in per if p.value is not None) / len(per))
        return out.value
