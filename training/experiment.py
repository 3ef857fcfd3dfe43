"""Hyperparameter sweeps: ``recsys experiment run experiments/configs/sweep_<name>.toml``.

An optuna study searches over models and their params (the interaction weighting included); each
trial is an MLflow run nested under the sweep's parent run. Trials are tuned on a *validation
window* — train before ``[validation] cutoff``, score on ``[cutoff, end)`` — that must end where
the test window starts, so the sweep never reads the test window. The best config is written as a
TOML that ``recsys train --config`` accepts unchanged (its ``[data]`` is the sweep's test window),
and is then fitted and reported once on that test window.

Trials are cheap by construction:

* the validation split (and, when the metric needs it, the next-basket data cut at the validation
  end) is loaded once and shared by every trial;
* only the protocol the metric belongs to is evaluated (picks, audiences or next-basket), plus
  any listed in ``[sweep] extra_protocols``;
* hopeless trials stop early: the metric is first computed on a fixed subsample of validation
  members (of products, for audience metrics) and handed to the pruner; ALS and BPR also report
  it every ``prune_every_iterations`` iterations while they fit;
* seeds are fixed (sampler, subsample, and the models' ``seed`` param).

The search space, per model, in the sweep TOML::

    [models.als]
    seed = 0                                                       # fixed
    factors = { type = "int", low = 16, high = 128, log = true }   # searched
    weighting = { choices = ["count", "bm25", "recency"] }
    bm25_k1 = { type = "float", low = 1, high = 200, log = true, when = { weighting = "bm25" } }

    [models.top_frequency]
    recency_half_life_days = { type = "float", low = 3, high = 180, log = true, optional = true }

``when`` samples a param only when earlier params (or their defaults) have the given value (a
list means "one of"); ``optional`` also tries leaving it ``None``. With more than one model the
model itself is the first choice of every trial.
"""

from __future__ import annotations

import json
import math
import re
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import date, datetime
from pathlib import Path
from typing import Any, Literal

import numpy as np
import optuna
import scipy.sparse as sp
from pydantic import BaseModel, ConfigDict, ValidationError, model_validator
from rich.console import Console
from rich.table import Table

from recsys.errors import InputError, RecsysError
from training.config import (
    DataConfig,
    EvaluationConfig,
    MlflowConfig,
    ModelConfig,
    TrainConfig,
    load_toml,
)

PROTOCOLS = ("picks", "audiences", "next_basket")
POST_FIT_STEP = 1000  # the optuna step of the subsample value computed after the fit
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


class SweepConfig(_Strict):
    sweep: SweepSettings
    pruner: PrunerSettings = PrunerSettings()
    validation: ValidationWindow
    data: DataConfig  # the test window: where the best config is reported, and what `recsys train` uses
    evaluation: EvaluationConfig = EvaluationConfig()
    mlflow: MlflowConfig = MlflowConfig()
    models: dict[str, dict[str, Any]]

    @model_validator(mode="after")
    def _windows(self) -> SweepConfig:
        v = self.validation
        if v.end <= v.cutoff:
            raise ValueError(f"validation.end {v.end} must be after validation.cutoff {v.cutoff}")
        if v.end > self.data.cutoff:
            raise ValueError(
                f"the validation window ends {v.end}, after the test window starts ({self.data.cutoff}): "
                "tuning would read test purchases; end the validation window at data.cutoff or before"
            )
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

    def validation_config(self, name: str = "", params: dict[str, Any] | None = None) -> TrainConfig:
        data = self.data.model_copy(update={"cutoff": self.validation.cutoff, "test_end": self.validation.end})
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


# ----------------------------------------------------------------------------- trials
@dataclass
class TrialOutcome:
    model: str
    params: dict[str, Any]
    value: float | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    intermediate: list[tuple[int, float]] = field(default_factory=list)
    curve: list[dict[str, float]] = field(default_factory=list)  # per-iteration loss / seconds


class _Factors:
    """The factors an implicit model holds *while it fits*, seen as a recommender, so the
    intermediate value is computed by the same :func:`training.evaluate.evaluate_picks`."""

    @staticmethod
    def view(inner: Any, history: sp.csr_matrix) -> Any:
        from recsys.models.base import ModelParams, Recommender

        class FactorsView(Recommender):  # no ``name``: never registered
            def _fit(self, data: Any) -> None:  # pragma: no cover - never fitted
                raise NotImplementedError

            def _score_items(self, members: np.ndarray) -> np.ndarray:
                return np.asarray(inner.user_factors[members]) @ np.asarray(inner.item_factors).T

            def _score_members(self, products: np.ndarray) -> np.ndarray:
                return np.asarray(inner.item_factors[products]) @ np.asarray(inner.user_factors).T

        v = FactorsView(ModelParams())
        v.n_members, v.n_products = history.shape
        v.history, v.is_fitted = history, True
        v.category = np.zeros(history.shape[1], np.int32)
        return v


class TrialRunner:
    """Holds the validation data every trial shares; fits and scores one trial at a time."""

    def __init__(self, cfg: SweepConfig, workdir: Path, console: Console | None = None):
        from training.data import DataPaths, load_split
        from training.next_basket import load_next_basket

        self.cfg = cfg
        self.console = console or Console(stderr=True)
        self.protocols = cfg.protocols()
        vcfg = cfg.validation_config()
        self.paths = DataPaths(vcfg.data.canonical, vcfg.data.features)
        self.window = (cfg.validation.cutoff, cfg.validation.end)
        rng = np.random.default_rng(cfg.sweep.seed)
        t0 = time.perf_counter()
        self.data = self.split = self.nbr = None
        if {"picks", "audiences"} & set(self.protocols):
            with self.console.status(f"loading the validation split ({self.window[0]} .. {self.window[1]})"):
                self.data, self.split = load_split(self.paths, *self.window)
            self.truth, self.seen = self.split.truth(), self.split.seen()
            n = self.data.n_members
            activity = np.bincount(self.data.interactions.member, minlength=n)
            self.reference = np.lexsort((np.arange(n), -activity))  # most active first, as in training
            members = np.where(np.diff(sp.csr_matrix(self.truth).indptr) > 0)[0]
            self.sub_members = _sample(rng, members, cfg.sweep.subsample)
            products = np.where(np.diff(sp.csc_matrix(self.truth).indptr) > 0)[0]
            keep = _sample(rng, products, cfg.sweep.subsample)
            self.sub_truth_products = None if keep is None else _keep_columns(self.truth, keep)
        if "next_basket" in self.protocols:
            # the protocol's last baskets, taken from purchases before the validation end only
            cut = self.window_transactions(workdir)
            with self.console.status("loading the next-basket data (validation window)"):
                self.nbr = load_next_basket(cut, self.paths.canonical / "products.parquet")
            rows = np.where(np.diff(self.nbr.truth.indptr) > 0)[0]
            keep = _sample(rng, rows, cfg.sweep.subsample)
            self.sub_nbr = None if keep is None else replace(self.nbr, truth=_keep_rows(self.nbr.truth, keep))
        self.load_s = time.perf_counter() - t0

    def window_transactions(self, workdir: Path) -> Path:
        """The canonical transactions before the validation end, as their own Parquet file."""
        import duckdb

        from recsys.columns import Col

        workdir.mkdir(parents=True, exist_ok=True)
        out = workdir / "transactions_before_validation_end.parquet"
        con = duckdb.connect()
        end = datetime.combine(self.window[1], datetime.min.time())
        con.read_parquet(str(self.paths.transactions)).filter(
            f"{Col.TS} < TIMESTAMP '{end.isoformat(sep=' ')}'").write_parquet(str(out))
        return out

    # ------------------------------------------------------------------ one trial
    def run(self, trial: Any, name: str, params: dict[str, Any], out: TrialOutcome) -> float:
        """Fit and score one trial, reporting intermediate values to ``trial`` (raises
        ``optuna.TrialPruned`` when the pruner says stop); fills ``out`` as it goes."""
        from recsys.models import get_model

        cls = get_model(name)
        p = cls.Params(**params)
        metric = self.cfg.sweep.metric
        fitted: dict[str, Any] = {}
        for i, protocol in enumerate(self.protocols):
            primary = i == 0
            kind = "nbr" if protocol == "next_basket" else "temporal"
            if kind not in fitted:
                t0 = time.perf_counter()
                fitted[kind] = self._fit(cls, p, kind, trial if primary and protocol == "picks" else None, out)
                out.timings[f"{kind}_fit_s"] = time.perf_counter() - t0
            model = fitted[kind]
            if primary and self._subsample(protocol) is not None:
                t0 = time.perf_counter()
                value = self._evaluate(protocol, model, subsample=True)[metric]
                out.timings["subsample_evaluate_s"] = time.perf_counter() - t0
                self._report(trial, out, value, POST_FIT_STEP)
            t0 = time.perf_counter()
            out.metrics.update(self._evaluate(protocol, model))
            out.timings[f"{protocol}_evaluate_s"] = time.perf_counter() - t0
            if primary:
                out.value = float(out.metrics[metric])
        out.timings["fit_s"] = sum(v for k, v in out.timings.items() if k.endswith("_fit_s"))
        out.timings["evaluate_s"] = sum(v for k, v in out.timings.items() if k.endswith("evaluate_s"))
        assert out.value is not None
        return out.value

    def _fit(self, cls: Any, params: Any, kind: str, trial: Any, out: TrialOutcome) -> Any:
        from training.pipeline import protocol_params

        if kind == "nbr":
            assert self.nbr is not None
            # as training does: a model with label windows learns from each member's last basket
            return cls(protocol_params(params, last_basket=True, audiences=False)).fit(self.nbr.train)
        model = cls(protocol_params(params, last_basket=False, audiences="audiences" in self.protocols))
        every = self.cfg.sweep.prune_every_iterations
        if trial is not None and every > 0 and self.sub_members is not None:
            self._watch_iterations(model, trial, out, every, int(getattr(params, "iterations", 0)))
        return model.fit(self.data)

    def _watch_iterations(self, model: Any, trial: Any, out: TrialOutcome, every: int, total: int) -> None:
        """ALS / BPR: score the factors on the member subsample every ``every`` iterations and
        let the pruner stop the fit. Needs the wrapper's ``on_iteration`` hook and ``_make``."""
        make = getattr(model, "_make", None)
        if make is None or not hasattr(model, "on_iteration"):
            return
        holder: dict[str, Any] = {}

        def capture() -> Any:
            holder["inner"] = inner = make()
            return inner

        def on_iteration(iteration: int, seconds: float, loss: float) -> None:
            out.curve.append({"iteration": iteration, "seconds": seconds, "loss": loss})
            step = iteration + 1
            if step % every or step >= total or step >= POST_FIT_STEP or "inner" not in holder:
                return
            view = _Factors.view(holder["inner"], self.seen)
            value = self._picks(view, members=self.sub_members)[self.cfg.sweep.metric]
            self._report(trial, out, value, step)

        model._make = capture
        model.on_iteration = on_iteration

    def _report(self, trial: Any, out: TrialOutcome, value: float, step: int) -> None:
        out.intermediate.append((step, float(value)))
        trial.report(float(value), step)
        if trial.should_prune():
            raise optuna.TrialPruned(f"pruned at step {step} ({self.cfg.sweep.metric} {value:.4f})")

    def _subsample(self, protocol: str) -> Any:
        return {"picks": getattr(self, "sub_members", None),
                "audiences": getattr(self, "sub_truth_products", None),
                "next_basket": getattr(self, "sub_nbr", None)}[protocol]

    def _picks(self, model: Any, members: np.ndarray | None = None) -> dict[str, float]:
        from training.evaluate import evaluate_picks

        return evaluate_picks(model, self.truth, self.seen, ks=tuple(self.cfg.evaluation.ks), members=members)

    def _evaluate(self, protocol: str, model: Any, subsample: bool = False) -> dict[str, float]:
        from training.evaluate import evaluate_audiences
        from training.next_basket import evaluate_next_basket

        ev = self.cfg.evaluation
        if protocol == "picks":
            return self._picks(model, self.sub_members if subsample else None)
        if protocol == "audiences":
            truth = self.sub_truth_products if subsample else self.truth
            return evaluate_audiences(model, truth, self.seen, sizes=tuple(ev.audience_sizes),
                                      min_buyers_known=ev.min_buyers_known, min_buyers_new=ev.min_buyers_new,
                                      reference=self.reference)
        data = self.sub_nbr if subsample else self.nbr
        return {f"nbr_{k}": v for k, v in evaluate_next_basket(model, data, tuple(ev.ks)).items()}


def _sample(rng: np.random.Generator, ids: np.ndarray, share: float) -> np.ndarray | None:
    if not 0 < share < 1 or len(ids) < 2:
        return None
    n = max(1, int(math.ceil(share * len(ids))))
    return np.sort(rng.choice(ids, size=n, replace=False))


def _keep_columns(m: sp.csr_matrix, cols: np.ndarray) -> sp.csr_matrix:
    mask = np.zeros(m.shape[1], dtype=np.float32)
    mask[cols] = 1.0
    out = sp.csr_matrix(m @ sp.diags(mask))
    out.eliminate_zeros()
    return out


def _keep_rows(m: sp.csr_matrix, rows: np.ndarray) -> sp.csr_matrix:
    mask = np.zeros(m.shape[0], dtype=np.float32)
    mask[rows] = 1.0
    out = sp.csr_matrix(sp.diags(mask) @ m)
    out.eliminate_zeros()
    return out


# ----------------------------------------------------------------------------- the sweep
@dataclass
class SweepResult:
    name: str
    metric: str
    best_value: float
    best_model: str
    best_params: dict[str, Any]
    best_trial: int
    best_config: Path
    counts: dict[str, int]
    wall_s: float
    run_id: str
    test_metrics: dict[str, float] = field(default_factory=dict)
    per_model: dict[str, dict[str, Any]] = field(default_factory=dict)
    trials: list[dict[str, Any]] = field(default_factory=list)
    validation_window: tuple[date, date] | None = None


def _sampler(cfg: SweepConfig) -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.samplers.TPESampler(seed=cfg.sweep.seed, n_startup_trials=cfg.sweep.startup_trials,
                                          multivariate=True, group=True)


def _pruner(cfg: SweepConfig) -> Any:
    p = cfg.pruner
    if p.kind == "none":
        return optuna.pruners.NopPruner()
    return _PercentilePruner(50.0 if p.kind == "median" else p.percentile, p.startup_trials, p.warmup_steps,
                             p.min_trials, p.per_model)


class _PercentilePruner(optuna.pruners.BasePruner):
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


def run_sweep(
    cfg: SweepConfig,
    config_path: Path | None = None,
    tracking_uri: str | None = None,
    console: Console | None = None,
    best_out: Path | None = None,
) -> SweepResult:
    """Run the study, log every trial as a nested MLflow run, write the best config, and fit it
    once on the test window."""
    from training.tracking import Tracker

    console = console or Console(stderr=True)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    spaces = cfg.spaces()
    names = list(spaces)
    metric = cfg.sweep.metric
    maximize = cfg.sweep.direction == "maximize"
    best_path = best_out or cfg.best_config_path
    t_start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp, \
            Tracker(cfg.experiment, run_name=f"sweep-{cfg.sweep.name}", tracking_uri=tracking_uri) as parent:
        parent.set_tags({"recsys.sweep": "true", "sweep.name": cfg.sweep.name, "sweep.metric": metric})
        parent.log_params({"sweep": cfg.sweep, "pruner": cfg.pruner, "validation": cfg.validation,
                           "data": cfg.data, "evaluation": cfg.evaluation})
        parent.log_dict(_jsonable(cfg.models), "search_space.json")
        if config_path is not None:
            parent.log_file(config_path)
        runner = TrialRunner(cfg, Path(tmp), console)
        parent.log_metrics({"load_s": runner.load_s})
        console.print(f"sweep [bold]{cfg.sweep.name}[/]: {metric} ({cfg.sweep.direction}) on the validation window "
                      f"{cfg.validation.cutoff} .. {cfg.validation.end}; models {', '.join(names)}; "
                      f"{cfg.sweep.n_trials} trials" + (f", at most {cfg.sweep.timeout_minutes:g} min"
                                                         if cfg.sweep.timeout_minutes else ""), highlight=False)
        study = optuna.create_study(direction=cfg.sweep.direction, sampler=_sampler(cfg), pruner=_pruner(cfg),
                                    study_name=cfg.sweep.name)
        objective = _objective(cfg, spaces, runner, parent, tracking_uri, console)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            n = cfg.sweep.n_trials  # configs that run; repeats the sampler proposes do not count
            study.optimize(objective, n_trials=n * 10, catch=(Exception,), callbacks=[_stop_after(n, max(50, n))],
                           timeout=cfg.sweep.timeout_minutes * 60 if cfg.sweep.timeout_minutes else None)
        search_s = time.perf_counter() - t_start
        states = [t.state.name for t in _evaluated(study)]
        counts = {"trials": len(states), "complete": states.count("COMPLETE"), "pruned": states.count("PRUNED"),
                  "failed": states.count("FAIL"), "repeats": len(study.trials) - len(states)}
        if study.user_attrs.get("exhausted"):
            console.print(f"the sampler kept proposing configs already run: stopped after {len(states)} trials",
                          highlight=False)
        if counts["complete"] == 0:
            failed = [t for t in study.trials if t.state.name == "FAIL"]
            why = failed[0].user_attrs.get("error", "see the log above") if failed else "no trial finished"
            raise RecsysError(f"sweep {cfg.sweep.name}: no trial completed ({counts}); first error: {why}")
        best = study.best_trial
        best_name, best_params = best.user_attrs["model"], best.user_attrs["params"]
        best_cfg = cfg.train_config(best_name, best_params)
        write_train_config(best_cfg, best_path, header=[
            f"Best of sweep {cfg.sweep.name!r} ({config_path or 'config'}): trial #{best.number} ({counts['trials']} trials run), "
            f"{datetime.now().isoformat(timespec='seconds')}",
            f"{metric} = {best.value:.4f} on the validation window {cfg.validation.cutoff} .. {cfg.validation.end} "
            f"(MLflow run {parent.run_id}, experiment {cfg.experiment!r})",
            f"Reported on the test window {cfg.data.cutoff} .. {cfg.data.test_end}: `recsys train --config {best_path}`",
        ])
        parent.log_file(best_path, artifact_path="best_config")
        per_model = _per_model_best(study, maximize)
        for model_name, entry in per_model.items():  # the best of each model too, e.g. a tuned ALS
            if entry["params"] is not None:
                write_train_config(cfg.train_config(model_name, entry["params"]), Path(tmp) / f"best_{model_name}.toml",
                                   header=[f"Best {model_name} of sweep {cfg.sweep.name!r}: trial {entry['trial']}, "
                                           f"{metric} = {entry['value']:.4f} on the validation window"])
                parent.log_file(Path(tmp) / f"best_{model_name}.toml", artifact_path="best_config_per_model")
        trials = _trial_rows(study)
        parent.log_dict(_jsonable(trials), "trials.json")
        parent.log_dict(_jsonable(per_model), "best_per_model.json")
        for name, fig in _sweep_plots(trials, metric, maximize).items():
            parent.log_figure(fig, f"plots/{name}.png")
            _close(fig)
        parent.log_metrics({"best_value": best.value, "search_s": search_s, "n_trials": counts["trials"],
                            "n_complete": counts["complete"], "n_pruned": counts["pruned"], "n_failed": counts["failed"],
                            "n_repeats_skipped": counts["repeats"]})
        parent.set_tags({"best.model": best_name, "best.trial": best.number, "best.config": str(best_path)})
        test_metrics: dict[str, float] = {}
        if cfg.sweep.evaluate_on_test:
            test_metrics = _report_on_test(cfg, best_cfg, parent, tracking_uri, console)
        wall_s = time.perf_counter() - t_start
        parent.log_metrics({"wall_s": wall_s})
        return SweepResult(cfg.sweep.name, metric, float(best.value), best_name, best_params, best.number, best_path,
                           counts, wall_s, parent.run_id, test_metrics, per_model, trials,
                           (cfg.validation.cutoff, cfg.validation.end))


def _objective(cfg: SweepConfig, spaces: dict[str, ModelSpace], runner: TrialRunner, parent: Any,
               tracking_uri: str | None, console: Console) -> Callable[[Any], float]:
    from training.tracking import Tracker

    names = list(spaces)
    metric = cfg.sweep.metric
    maximize = cfg.sweep.direction == "maximize"

    repeats = [0]  # repeated proposals since the last printed trial

    def objective(trial: Any) -> float:
        name = trial.suggest_categorical("model", names) if len(names) > 1 else names[0]
        params = spaces[name].sample(trial)
        trial.set_user_attr("model", name)
        trial.set_user_attr("params", params)
        same = _same_trial(trial, name, params)
        if same is not None:
            # the sampler proposed a config already scored (TPE does, around a categorical best):
            # tell it the same outcome without fitting; it is not a trial and gets no MLflow run
            trial.set_user_attr("duplicate_of", same.number)
            repeats[0] += 1
            if same.state.name == "PRUNED":
                raise optuna.TrialPruned()
            return float(same.value)
        out = TrialOutcome(name, params)
        state, t0 = "COMPLETE", time.perf_counter()
        tags: dict[str, Any] = {"optuna.trial": trial.number, "sweep.name": cfg.sweep.name, "model": name,
                                "sweep.parent_run": parent.run_id}
        with Tracker(cfg.experiment, run_name=f"{cfg.sweep.name}-{trial.number:03d}-{name}",
                     tracking_uri=tracking_uri, nested=True) as run:
            try:
                runner.run(trial, name, params, out)
            except optuna.TrialPruned:
                state = "PRUNED"
            except Exception as exc:
                state = "FAIL"
                tags["error"] = f"{type(exc).__name__}: {exc}"
                trial.set_user_attr("error", tags["error"])
                _print_trial(console, trial.number, name, state, out, metric, time.perf_counter() - t0, _best(trial),
                             repeats[0])
                repeats[0] = 0
                raise
            finally:
                out.timings["trial_s"] = time.perf_counter() - t0
                curves = {f"intermediate_{metric}": out.intermediate,
                          "train_loss": [(int(c["iteration"]), c["loss"]) for c in out.curve],
                          "train_seconds": [(int(c["iteration"]), c["seconds"]) for c in out.curve]}
                _log_trial(run, {"model": {"name": name, "params": params}, "trial": trial.number},
                           {**out.metrics, **out.timings}, curves, {**tags, "optuna.state": state})
        trial.set_user_attr("timings", {k: round(v, 3) for k, v in out.timings.items()})
        trial.set_user_attr("intermediate", out.intermediate)
        _print_trial(console, trial.number, name, state, out, metric, out.timings["trial_s"],
                     _best(trial, out.value if state == "COMPLETE" else None, maximize), repeats[0])
        repeats[0] = 0
        if state == "PRUNED":
            raise optuna.TrialPruned()
        trial.set_user_attr("metrics", {k: float(v) for k, v in out.metrics.items()})
        assert out.value is not None
        return out.value

    return objective


def _same_trial(trial: Any, name: str, params: dict[str, Any]) -> Any:
    """The first finished trial (complete or pruned) with exactly these params, if any."""
    for t in trial.study.get_trials(deepcopy=False):
        if (t.state.name in ("COMPLETE", "PRUNED") and "duplicate_of" not in t.user_attrs
                and t.user_attrs.get("model") == name and t.user_attrs.get("params") == params):
            return t
    return None


def _evaluated(study: Any) -> list[Any]:
    """The trials that ran: finished, and not a repeat of an earlier config."""
    return [t for t in study.get_trials(deepcopy=False)
            if t.state.is_finished() and "duplicate_of" not in t.user_attrs]


def _stop_after(n_trials: int, max_repeats: int) -> Callable[[Any, Any], None]:
    """An optuna callback: stop once ``n_trials`` configs ran, or after ``max_repeats`` repeats
    in a row (the sampler has nothing new to propose)."""
    def callback(study: Any, trial: Any) -> None:
        if len(_evaluated(study)) >= n_trials:
            study.stop()
            return
        tail = 0
        for t in reversed(study.get_trials(deepcopy=False)):
            if "duplicate_of" not in t.user_attrs:
                break
            tail += 1
        if tail >= max_repeats:
            study.set_user_attr("exhausted", True)
            study.stop()

    return callback


def _log_trial(run: Any, params: dict[str, Any], metrics: dict[str, float],
               curves: dict[str, list[tuple[int, float]]], tags: dict[str, Any]) -> None:
    """Everything of a trial's run in a few batched writes (each write to a sqlite store is a
    commit; one per curve point would cost more than a cheap trial)."""
    from mlflow.entities import Metric, Param, RunTag

    from training.tracking import flatten_params, metric_key

    now = int(time.time() * 1000)
    items = [Metric(metric_key(k), float(v), now, 0) for k, v in metrics.items() if _finite(v)]
    for name, points in curves.items():
        items += [Metric(metric_key(name), float(v), now, int(step)) for step, v in points if _finite(v)]
    ps = [Param(k, v) for k, v in flatten_params(params).items()]
    ts = [RunTag(str(k), str(v)[:5000]) for k, v in tags.items()]
    while items or ps or ts:  # MLflow's limits per batch: 1000 metrics, 100 params, 100 tags
        run.client.log_batch(run.run_id, metrics=items[:1000], params=ps[:100], tags=ts[:100])
        items, ps, ts = items[1000:], ps[100:], ts[100:]


def _finite(v: Any) -> bool:
    try:
        return math.isfinite(float(v))
    except (TypeError, ValueError):
        return False


def _best(trial: Any, value: float | None = None, maximize: bool = True) -> tuple[float, int] | None:
    done = [t for t in trial.study.get_trials(deepcopy=False) if t.state.name == "COMPLETE"]
    pairs = [(float(t.value), t.number) for t in done]
    if value is not None:
        pairs.append((value, trial.number))
    if not pairs:
        return None
    return max(pairs, key=lambda p: (p[0] if maximize else -p[0], -p[1]))


def _print_trial(console: Console, number: int, name: str, state: str, out: TrialOutcome, metric: str,
                 seconds: float, best: tuple[float, int] | None, repeats: int = 0) -> None:
    if state == "COMPLETE":
        what = f"{metric} {out.value:.4f}"
    elif state == "PRUNED":
        step, value = out.intermediate[-1] if out.intermediate else (0, float("nan"))
        where = "after fit" if step == POST_FIT_STEP else f"at iter {step}"
        what = f"pruned {where} ({value:.4f})"
    else:
        what = "failed"
    best_s = f"best {best[0]:.4f} #{best[1]}" if best else ""
    rep = f"  (+{repeats} repeated proposals skipped)" if repeats else ""
    console.print(f"#{number:<3} {name:<14} {what:<30} {seconds:6.1f}s  {best_s}{rep}", highlight=False, markup=False)


def _per_model_best(study: Any, maximize: bool) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for t in study.trials:
        if t.state.name != "COMPLETE" or "duplicate_of" in t.user_attrs:
            continue
        name = t.user_attrs["model"]
        cur = out.get(name)
        if cur is None or (t.value > cur["value"] if maximize else t.value < cur["value"]):
            out[name] = {"value": float(t.value), "trial": t.number, "params": t.user_attrs["params"]}
    for t in study.trials:
        name = t.user_attrs.get("model")
        if name and "duplicate_of" not in t.user_attrs:
            entry = out.setdefault(name, {"value": None, "trial": None, "params": None})
            entry["n_trials"] = entry.get("n_trials", 0) + 1
            entry["n_pruned"] = entry.get("n_pruned", 0) + (t.state.name == "PRUNED")
    return out


def _trial_rows(study: Any) -> list[dict[str, Any]]:
    rows = []
    for t in _evaluated(study):
        inter = t.user_attrs.get("intermediate") or []
        rows.append({
            "number": t.number, "state": t.state.name, "model": t.user_attrs.get("model"),
            "value": None if t.value is None else float(t.value),
            "last_intermediate": inter[-1] if inter else None,
            "params": t.user_attrs.get("params"), "timings": t.user_attrs.get("timings"),
            "metrics": t.user_attrs.get("metrics"), "error": t.user_attrs.get("error"),
        })
    return rows


def _sweep_plots(trials: list[dict[str, Any]], metric: str, maximize: bool) -> dict[str, Any]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    models = sorted({t["model"] for t in trials if t["model"]})
    for i, name in enumerate(models):
        done = [t for t in trials if t["model"] == name and t["state"] == "COMPLETE"]
        pruned = [t for t in trials if t["model"] == name and t["state"] == "PRUNED" and t["last_intermediate"]]
        color = f"C{i}"
        ax.scatter([t["number"] for t in done], [t["value"] for t in done], color=color, label=name, s=18)
        ax.scatter([t["number"] for t in pruned], [t["last_intermediate"][1] for t in pruned], color=color,
                   marker="x", s=18)
    best, xs, ys = None, [], []
    for t in trials:
        if t["state"] == "COMPLETE" and (best is None or (t["value"] > best if maximize else t["value"] < best)):
            best = t["value"]
        if best is not None:
            xs.append(t["number"])
            ys.append(best)
    ax.step(xs, ys, where="post", color="black", linewidth=1, label="best so far")
    ax.set_xlabel("trial (x: pruned, at its last intermediate value)")
    ax.set_ylabel(f"{metric} (validation)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return {"optimization_history": fig}


def _close(fig: Any) -> None:
    import matplotlib.pyplot as plt

    plt.close(fig)


def _report_on_test(cfg: SweepConfig, best_cfg: TrainConfig, parent: Any, tracking_uri: str | None,
                    console: Console) -> dict[str, float]:
    """Fit the best config once on the test window (``fit_and_evaluate``, as ``recsys train``
    would, minus the registry) and log it as its own nested run."""
    from training.pipeline import fit_and_evaluate
    from training.tracking import Tracker

    test_cfg = best_cfg.model_copy(deep=True)
    test_cfg.evaluation.next_basket = "next_basket" in cfg.protocols()
    with Tracker(cfg.experiment, run_name=f"{cfg.sweep.name}-best-on-test", tracking_uri=tracking_uri,
                 nested=True) as run:
        run.set_tags({"sweep.name": cfg.sweep.name, "sweep.parent_run": parent.run_id, "window": "test"})
        run.log_params({"config": test_cfg.model_dump(mode="json")})
        result = fit_and_evaluate(test_cfg, console)
        run.log_metrics({**result.metrics, **result.timings})
    parent.log_metrics({f"test_{k}": v for k, v in result.metrics.items()})
    return {**result.metrics, **{f"time_{k}": v for k, v in result.timings.items()}}


def sweep_summary(result: SweepResult, cfg: SweepConfig) -> list[Any]:
    """What the console shows at the end: the best trial per model (and its params), then the
    best config on the validation and on the test window."""
    from rich.text import Text

    metric = result.metric
    per = Table(title=f"sweep {result.name}: best trial per model (validation {metric})")
    for col in ("model", "trials", "pruned", f"best {metric}", "trial"):
        per.add_column(col, justify="left" if col == "model" else "right")
    order = sorted(result.per_model.items(), key=lambda kv: -(kv[1]["value"] or -1e9))
    lines = []
    for name, e in order:
        value = "—" if e["value"] is None else f"{e['value']:.4f}"
        per.add_row(name, str(e.get("n_trials", 0)), str(e.get("n_pruned", 0)), value,
                    "—" if e["trial"] is None else f"#{e['trial']}")
        if e["params"] is not None:
            params = ", ".join(f"{k}={_short(v)}" for k, v in e["params"].items() if k not in ("seed", "num_threads"))
            lines.append(f"  {name} #{e['trial']}: {params or 'defaults'}")
    best = Table(title=f"best: {result.best_model} (trial #{result.best_trial}) -> {result.best_config}")
    best.add_column("metric")
    best.add_column(f"validation {cfg.validation.cutoff}..{cfg.validation.end}", justify="right")
    best.add_column(f"test {cfg.data.cutoff}..{cfg.data.test_end}", justify="right")
    trial = next((t for t in result.trials if t["number"] == result.best_trial), {})
    val_metrics = trial.get("metrics") or {}
    names = {"audience_known_recall@1000": "audience R@1000 known", "audience_new_recall@1000": "audience R@1000 new",
             "repeat_recall@10": "repeat recall@10", "new_recall@10": "new recall@10"}
    keys = [metric, *(k for k in ("recall@10", "ndcg@10", "recall@20", "map@10", "hit_rate@10",
                                  "repeat_recall@10", "new_recall@10", "coverage@10",
                                  "audience_known_recall@1000", "audience_new_recall@1000",
                                  "nbr_recall@10", "nbr_ndcg@10") if k != metric)]
    for k in keys:
        if k in val_metrics or k in result.test_metrics:
            v, t = val_metrics.get(k), result.test_metrics.get(k)
            best.add_row(names.get(k, k), "—" if v is None else f"{v:.4f}", "—" if t is None else f"{t:.4f}")
    c = result.counts
    best.add_row("trials: complete / pruned / failed", f"{c['complete']} / {c['pruned']} / {c['failed']}", "")
    best.add_row("repeated proposals (skipped)", str(c["repeats"]), "")
    best.add_row("sweep wall time", f"{result.wall_s / 60:.1f} min", "")
    return [per, Text("\n".join(lines)), best]


def _jsonable(obj: Any) -> Any:
    """Dates (TOML dates in params) as ISO strings, so MLflow can write the object as JSON."""
    return json.loads(json.dumps(obj, default=str))


def _short(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_short(x) for x in v) + "]"
    return str(v)


# ----------------------------------------------------------------------------- TOML out
def write_train_config(cfg: TrainConfig, path: Path, header: list[str] | None = None) -> Path:
    """Write ``cfg`` as a TOML that ``TrainConfig.from_toml`` reads back to the same config
    (checked here, so a config that would not load is never written silently)."""
    # only what the sweep config set (plus the model): a default that changes later stays a default
    doc = cfg.model_dump(exclude_unset=True, exclude_none=True)
    doc["model"] = {"name": cfg.model.name}
    nones = [k for k, v in cfg.model.params.items() if v is None]
    for k in nones:  # TOML has no null: leaving the key out must mean None
        if not _default_is_none(cfg, k):
            raise RecsysError(f"{cfg.model.name}.{k} = None cannot be written as TOML: its default is not None")
    doc["model"]["params"] = {k: v for k, v in cfg.model.params.items() if v is not None}
    lines = [f"# {h}" for h in header or []]
    if nones:
        lines.append(f"# left at their default None: {', '.join(nones)}")
    text = "\n".join(lines) + ("\n\n" if lines else "") + dumps_toml(doc)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    back = TrainConfig.from_toml(path)
    back.model_params()
    if back.model.name != cfg.model.name:
        raise RecsysError(f"{path}: the written config does not read back as {cfg.model.name}")
    return path


def _default_is_none(cfg: TrainConfig, key: str) -> bool:
    from recsys.models import get_model

    f = get_model(cfg.model.name).Params.model_fields.get(key)
    return f is not None and f.default is None


def dumps_toml(doc: dict[str, Any], _prefix: str = "") -> str:
    """A small TOML writer for configs: scalars, dates, lists and nested tables (``None``
    values are dropped: TOML has no null).

    Examples
    --------
    >>> print(dumps_toml({"a": 1, "t": {"b": [1.5, "x"], "on": True}}))
    a = 1
    <BLANKLINE>
    [t]
    b = [1.5, "x"]
    on = true
    <BLANKLINE>
    """
    scalars = {k: v for k, v in doc.items() if not isinstance(v, dict) and v is not None}
    tables = {k: v for k, v in doc.items() if isinstance(v, dict)}
    out = [f"{_key(k)} = {_value(v)}" for k, v in scalars.items()]
    text = "\n".join(out) + ("\n" if out else "")
    for k, v in tables.items():
        name = f"{_prefix}{_key(k)}"
        inner_scalars = any(not isinstance(x, dict) and x is not None for x in v.values())
        body = dumps_toml(v, f"{name}.")
        if inner_scalars or not v:
            text += f"\n[{name}]\n" + body
        else:
            text += body
    return text


def _key(k: str) -> str:
    return k if re.fullmatch(r"[A-Za-z0-9_-]+", k) else json.dumps(k, ensure_ascii=False)


def _value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        return repr(v)
    if isinstance(v, (date, datetime)):
        return v.isoformat()
    if isinstance(v, str):
        return json.dumps(v, ensure_ascii=False)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_value(x) for x in v if x is not None) + "]"
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{_key(k)} = {_value(x)}" for k, x in v.items() if x is not None) + " }"
    if isinstance(v, Path):
        return json.dumps(str(v))
    raise TypeError(f"cannot write {type(v).__name__} {v!r} as TOML")
