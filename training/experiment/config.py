"""A sweep's config: the search space per model (fixed, searched, conditional and optional
params), the sweep and pruner settings, the validation window, and the metric it tunes."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationError, field_validator, model_validator

from recsys.errors import InputError
from training.config import (
    DataConfig,
    EvaluationConfig,
    MlflowConfig,
    ModelConfig,
    TrainConfig,
    load_toml,
)

PROTOCOLS = ("picks", "audiences", "next_basket")
_RANKING = r"(?:repeat_|new_)?(?:recall|ndcg|map|hit_rate|precision)@(\d+)|coverage@(\d+)"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


# ----------------------------------------------------------------------------- the config
class ParamSpec(_Strict):
    """One searched param. ``type`` is inferred: ``choices`` -> categorical, else int when both
    bounds are integers, else float."""

    type: Literal["int", "float", "categorical"] | None = None
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    choices: list[Any] | None = None
    when: dict[str, Any] = {}
    optional: bool = False

    @model_validator(mode="after")
    def _infer(self) -> ParamSpec:
        if self.type is None:
            if self.choices is not None:
                self.type = "categorical"
            elif isinstance(self.low, int) and isinstance(self.high, int):
                self.type = "int"
            else:
                self.type = "float"
        if self.type == "categorical":
            if not self.choices:
                raise ValueError("a categorical param needs a non-empty `choices` list")
        else:
            if self.low is None or self.high is None:
                raise ValueError(f"an {self.type} param needs `low` and `high`")
            if self.low > self.high:
                raise ValueError(f"low {self.low} is above high {self.high}")
            if self.log and self.low <= 0:
                raise ValueError("a log-scaled param needs low > 0")
            if self.log and self.step is not None:
                raise ValueError("`log` and `step` cannot be combined (optuna)")
        return self


def _is_spec(value: Any) -> bool:
    return isinstance(value, dict) and bool(value) and set(value) <= set(ParamSpec.model_fields)


@dataclass
class ModelSpace:
    """The fixed and searched params of one model, in config order."""

    name: str
    fixed: dict[str, Any]
    specs: dict[str, ParamSpec]
    defaults: dict[str, Any]

    @classmethod
    def parse(cls, name: str, table: dict[str, Any]) -> ModelSpace:
        from recsys.models import get_model

        try:
            params_cls = get_model(name).Params
        except KeyError as exc:
            raise InputError(f"[models.{name}]: {exc.args[0]}") from None
        fields_ = params_cls.model_fields
        defaults = {k: f.default for k, f in fields_.items()}
        fixed: dict[str, Any] = {}
        specs: dict[str, ParamSpec] = {}
        for key, value in table.items():
            if key not in fields_:
                raise InputError(f"[models.{name}] {key}: not a param of {name!r}; its params: {', '.join(fields_)}")
            if _is_spec(value):
                try:
                    spec = ParamSpec.model_validate(value)
                except ValidationError as exc:
                    raise InputError(f"[models.{name}] {key}: {exc.errors()[0]['msg']}") from None
                for dep in spec.when:
                    if dep not in fields_:
                        raise InputError(f"[models.{name}] {key}: `when` names {dep!r}, not a param of {name!r}")
                    if dep in specs or dep == key:
                        continue
                    if dep not in fixed and dep in table:
                        raise InputError(f"[models.{name}] {key}: `when` names {dep!r}, which comes after it")
                specs[key] = spec
            else:
                fixed[key] = value
        try:  # the fixed params (with defaults for the rest) must make a valid Params
            params_cls(**fixed)
        except ValidationError as exc:
            first = exc.errors()[0]
            raise InputError(f"[models.{name}] {'.'.join(map(str, first['loc']))}: {first['msg']}") from None
        return cls(name, fixed, specs, defaults)

    def sample(self, trial: Any) -> dict[str, Any]:
        """This model's params for one trial: the fixed ones plus a value for each searched one
        whose ``when`` holds. Optuna param names are prefixed with the model (``als.factors``)."""
        values = dict(self.fixed)
        for key, spec in self.specs.items():
            if not all(_matches(values.get(dep, self.defaults.get(dep)), want) for dep, want in spec.when.items()):
                continue
            pname = f"{self.name}.{key}"
            if spec.optional and not trial.suggest_categorical(f"{pname}.enabled", [True, False]):
                values[key] = None
                continue
            values[key] = _suggest(trial, pname, spec)
        return values


def _matches(value: Any, want: Any) -> bool:
    return value in want if isinstance(want, list) else value == want


def _suggest(trial: Any, name: str, spec: ParamSpec) -> Any:
    if spec.type == "categorical":
        assert spec.choices is not None
        plain = all(c is None or isinstance(c, (bool, int, float, str)) for c in spec.choices)
        if plain:
            return trial.suggest_categorical(name, spec.choices)
        encoded = [json.dumps(c, sort_keys=True) for c in spec.choices]  # lists, tables
        return json.loads(trial.suggest_categorical(name, encoded))
    assert spec.low is not None and spec.high is not None
    if spec.type == "int":
        return trial.suggest_int(name, int(spec.low), int(spec.high), step=int(spec.step or 1), log=spec.log)
    return trial.suggest_float(name, float(spec.low), float(spec.high), step=spec.step, log=spec.log)


class SweepSettings(_Strict):
    name: str
    metric: str = "recall@10"
    direction: Literal["maximize", "minimize"] = "maximize"
    n_trials: int = 60
    timeout_minutes: float | None = None
    seed: int = 0
    startup_trials: int = 10  # random trials before TPE models the space
    subsample: float = 0.2  # share of validation members (products, for audiences) scored first
    prune_every_iterations: int = 5  # ALS / BPR: an intermediate value every N iterations; 0: off
    extra_protocols: list[Literal["picks", "audiences", "next_basket"]] = []
    experiment: str | None = None  # MLflow experiment of the sweep; default "<mlflow.experiment>-sweeps"
    best_config: Path | None = None  # default experiments/configs/best_<name>.toml
    evaluate_on_test: bool = True  # fit the best config on the test window and log its metrics


class PrunerSettings(_Strict):
    """Stop a trial whose best value so far is below the given percentile of the finished
    trials' values at the same step (optuna's convention: ``percentile = 25`` keeps the top 25 %)."""

    kind: Literal["median", "percentile", "none"] = "median"
    startup_trials: int = 8  # finished trials (of the same model, with per_model) before anything is pruned
    warmup_steps: int = 0
    min_trials: int = 3  # finished trials that must have reported the step
    percentile: float = 50.0  # for kind = "percentile"
    # compare a trial with trials of the same model only: an ALS trial is "hopeless" when it is
    # worse than the other ALS trials, not because a repeat-purchase baseline leads the study
    # (that would prune every ALS trial and leave no tuned ALS to report)
    per_model: bool = True


class ValidationWindow(_Strict):
    cutoff: date
    end: date

    @property
    def label(self) -> str:
        return f"{self.cutoff:%Y-%m}"


class SweepConfig(_Strict):
    sweep: SweepSettings
    pruner: PrunerSettings = PrunerSettings()
    # the rolling-origin validation windows (one table or an array of tables): a trial is fitted
    # and scored on each, and its value is the mean over them (:mod:`training.windows`)
    validation: list[ValidationWindow]
    data: DataConfig  # the test window: where the best config is reported, and what `recsys train` uses
    evaluation: EvaluationConfig = EvaluationConfig()
    mlflow: MlflowConfig = MlflowConfig()
    models: dict[str, dict[str, Any]]

    @field_validator("validation", mode="before")
    @classmethod
    def _one_or_many(cls, value: Any) -> Any:
        from training.windows import as_windows

        return as_windows(value)

    @model_validator(mode="after")
    def _windows(self) -> SweepConfig:
        if not self.validation:
            raise ValueError("no [validation] window: a sweep tunes on at least one")
        for v in self.validation:
            if v.end <= v.cutoff:
                raise ValueError(f"validation.end {v.end} must be after validation.cutoff {v.cutoff}")
            if v.end > self.data.cutoff:
                raise ValueError(
                    f"the validation window ends {v.end}, after the test window starts ({self.data.cutoff}): "
                    "tuning would read test purchases; end the validation window at data.cutoff or before"
                )
        labels = [v.label for v in self.validation]
        if len(set(labels)) != len(labels):
            raise ValueError(f"validation windows must start in different months; got {', '.join(labels)}")
        if not self.models:
            raise ValueError("no [models.<name>] table: nothing to search")
        return self

    @classmethod
    def from_toml(cls, path: Path | str) -> SweepConfig:
        cfg = load_toml(cls, path, "sweep config", "experiments/configs/sweep_*.toml")
        cfg.spaces()  # parse the search space now: a typo fails before any trial runs
        check_metric(cfg.sweep.metric, cfg.evaluation)
        return cfg

    def spaces(self) -> dict[str, ModelSpace]:
        return {name: ModelSpace.parse(name, table) for name, table in self.models.items()}

    def protocols(self) -> list[str]:
        """The primary metric's protocol first, then the extra ones."""
        first = metric_protocol(self.sweep.metric)
        return [first, *(p for p in dict.fromkeys(self.sweep.extra_protocols) if p != first)]

    def window(self, i: int = 0) -> ValidationWindow:
        return self.validation[i]

    def describe_windows(self) -> str:
        """``2000-12-01 .. 2001-01-01 and 2001-01-01 .. 2001-02-01`` (for messages)."""
        return " and ".join(f"{v.cutoff} .. {v.end}" for v in self.validation)

    def for_window(self, i: int) -> SweepConfig:
        """This config with its ``i``-th validation window only (what one window's trials read)."""
        return self.model_copy(update={"validation": [self.validation[i]]})

    def validation_config(self, name: str = "", params: dict[str, Any] | None = None) -> TrainConfig:
        v = self.validation[0]
        data = self.data.model_copy(update={"cutoff": v.cutoff, "test_end": v.end})
        return TrainConfig(data=data, model=ModelConfig(name=name or next(iter(self.models)), params=params or {}),
                           evaluation=self.evaluation, mlflow=self.mlflow)

    def train_config(self, name: str, params: dict[str, Any]) -> TrainConfig:
        """The config ``recsys train`` gets for a trial: the test window, this model."""
        return TrainConfig(data=self.data, model=ModelConfig(name=name, params=params),
                           evaluation=self.evaluation, mlflow=self.mlflow)

    @property
    def experiment(self) -> str:
        return self.sweep.experiment or f"{self.mlflow.experiment}-sweeps"

    @property
    def best_config_path(self) -> Path:
        return self.sweep.best_config or Path("experiments/configs") / f"best_{self.sweep.name}.toml"


def metric_protocol(metric: str) -> str:
    if metric.startswith("nbr_"):
        return "next_basket"
    if metric.startswith("audience_"):
        return "audiences"
    return "picks"


def check_metric(metric: str, ev: EvaluationConfig) -> None:
    """Fail early on a metric the evaluation will not produce (a typo, or a k not in ``ks``)."""
    protocol = metric_protocol(metric)
    if protocol == "audiences":
        m = re.fullmatch(r"audience_(?:known|new)_(?:recall|lift_random|lift_most_active)@(\d+)", metric)
        ok = m is not None and int(m.group(1)) in ev.audience_sizes
        hint = f"audience_known_recall@N, audience_new_lift_most_active@N, ... with N in {ev.audience_sizes}"
    else:
        m = re.fullmatch(_RANKING, metric.removeprefix("nbr_"))
        ok = m is not None and int(m.group(1) or m.group(2)) in ev.ks
        hint = f"recall@k, ndcg@k, map@k, hit_rate@k, repeat_recall@k, nbr_recall@k, ... with k in {ev.ks}"
    if not ok:
        raise InputError(f"sweep.metric {metric!r} is not one the evaluation produces; e.g. {hint}")
