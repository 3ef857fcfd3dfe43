"""Stopping hopeless trials: a percentile pruner, per model, blind to repeated proposals."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import optuna

from training.experiment.config import SweepConfig


def make_pruner(cfg: SweepConfig) -> Any:
    p = cfg.pruner
    if p.kind == "none":
        return optuna.pruners.NopPruner()
    return PercentilePruner(50.0 if p.kind == "median" else p.percentile, p.startup_trials, p.warmup_steps,
                             p.min_trials, p.per_model)


class PercentilePruner(optuna.pruners.BasePruner):
    """optuna's PercentilePruner, optionally against the trials of the same model only, and
    blind to repeated proposals (they report nothing of their own)."""

    def __init__(self, percentile: float, startup: int, warmup: int, min_trials: int, per_model: bool):
        self.percentile, self.startup, self.warmup = percentile, startup, warmup
        self.min_trials, self.per_model = min_trials, per_model

    def prune(self, study: Any, trial: Any) -> bool:
        step = trial.last_step
        if step is None or step < self.warmup:
            return False
        model = trial.params.get("model")
        done = [t for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
                if "duplicate_of" not in t.user_attrs and (not self.per_model or t.params.get("model") == model)]
        if len(done) < self.startup:
            return False
        values = [t.intermediate_values[step] for t in done if step in t.intermediate_values]
        if len(values) < max(1, self.min_trials):
            return False
        maximize = study.direction == optuna.study.StudyDirection.MAXIMIZE
        mine = [v for v in trial.intermediate_values.values() if math.isfinite(v)]
        if not mine:
            return True
        if maximize:
            return max(mine) < float(np.percentile(values, 100.0 - self.percentile))
        return min(mine) > float(np.percentile(values, self.percentile))
