"""The comparison report: ``recsys experiment report [--config experiments/configs/report.toml]``.

Every row — each baseline and the default model — is fitted and evaluated in one command on the
same temporal split by :func:`training.pipeline.fit_and_evaluate` (picks and audiences on the
split, plus the next-basket protocol of :mod:`training.next_basket` for the rows that ask for it),
so every figure of the report comes from the same run. The report writes

* ``experiments/REPORT.md``: one table per protocol and direction (picks on the temporal split,
  the next-basket protocol, audiences for known and for never-sold products — with the random
  and most-active-members audiences as rows, taken from the lifts ``evaluate_audiences``
  computes), the wall time of each row, the published reference figures beside ours with the
  protocol of each, and which targets hold (computed from the numbers);
* PNG plots beside it (metric vs k; audience recall vs audience size; repeat vs new-to-member);
* when ``[validation]`` is set, the rows marked ``validation = true`` fitted and evaluated again on
  that earlier window (the one sweeps tune on), beside their test-window figures: a choice made
  while looking at the test window shows up there as a gain that does not carry over;

and logs all of it to MLflow: a parent run with the report, plots and ``report.json``, and one
nested run per row with its params, metrics and timings.
"""

from __future__ import annotations

import json
import math
import re
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, field_validator, model_validator
from rich.console import Console

from recsys.errors import InputError
from training.config import DataConfig, EvaluationConfig, ModelConfig, TrainConfig, load_toml
from training.windows import (
    VALIDATION_MEAN,
    Window,
    as_windows,
    check_windows,
    ensure_features,
    validation_mean,
)

Table = Literal["picks", "next_basket", "user_split", "audiences"]
RANDOM, MOST_ACTIVE = "random", "most-active members"

PROTOCOLS = {
    "picks": "temporal split: train before {cutoff}, test [{cutoff}, {end}) of members known at the cutoff; "
             "replenish mode; Recall@k = hits / min(k, |truth|), NDCG binary gains with ideal over min(k, |truth|)",
    "next_basket": "next-basket protocol: basket = member + day, members with 3-50 baskets, last basket is the "
                   "target, products in < 3 history baskets removed, each member's history aged as of the day after "
                   "their last history basket (nothing of the target's date or items reaches a model); "
                   "Recall@k = hits / |target|, NDCG ideal over the whole target, PHR = hit rate",
    "user_split": "the same baskets, the published user split: members shuffled into {train:.0%} / {val:.0%} / "
                  "{test:.0%} train / validation / test in each of {folds} folds (fixed seeds); models learn from "
                  "every member's history and the train members' full sequences; metrics over the test members, "
                  "mean ± sd over the folds; NDCG with the ideal over the whole target (the paper's) and capped "
                  "at min(k, |target|)",
    "audiences": "temporal split as for picks; every product bought in the test window by >= {known} known "
                 "members (never sold before the cutoff: >= {new}) ranks all training members; recall@N = share "
                 "of its test buyers in the top N; lifts over a random audience (N / members) and over the N "
                 "most active members",
}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ReportRow(_Strict):
    label: str
    model: str | None = None
    params: dict[str, Any] = {}
    config: Path | None = None  # take the model (name + params) from a `recsys train` config
    tables: list[Table] = ["picks", "next_basket"]
    role: Literal["baseline", "default", "tuned"] = "baseline"
    optional: bool = False  # a missing `config` skips the row (with a note) instead of failing
    validation: bool = False  # also fit and evaluate it on the report's validation window
    note: str = ""

    @model_validator(mode="after")
    def _one_source(self) -> ReportRow:
        if (self.model is None) == (self.config is None):
            raise ValueError(f"row {self.label!r}: give exactly one of `model` or `config`")
        return self


class Published(_Strict):
    table: Literal["picks", "next_basket", "user_split", "audiences_known", "audiences_new"]
    method: str
    protocol: str  # how the published figure was measured
    ours: str | None = None  # the label of our matching row (or "random" / "most-active members")
    metrics: dict[str, float]


class Target(_Strict):
    text: str
    kind: Literal["at_least", "beats_baselines", "sweep"] = "at_least"
    row: str | None = None
    metric: str | None = None
    value: float | None = None
    table: Table = "picks"  # beats_baselines: the baselines of this table
    sweep: str | None = None  # kind = "sweep": the sweep's name
    min_trials: int = 50
    max_minutes: float = 30.0
    # where the metric must hold: the test window, the validation windows' mean, or both
    on: Literal["test", "validation_mean", "both"] = "test"


class ReportSettings(_Strict):
    title: str = "Comparison report"
    output: Path = Path("experiments/REPORT.md")
    plots_dir: str = "report_plots"  # beside the report
    experiment: str = "report"  # MLflow experiment of the report runs
    sweep_experiment: str | None = None  # where sweeps are looked up; default "<experiment>-sweeps"
    sweeps: list[str] = []  # sweep names whose newest finished run the report summarises
    notes: list[str] = []
    # every figure of the report as records (protocol, window, model, metrics), beside the report
    quality_json: str = "results/quality.json"


class UserSplitSettings(_Strict):
    folds: int = 5
    seed: int = 0
    shares: tuple[float, float, float] = (0.72, 0.08, 0.20)


class ReportConfig(_Strict):
    report: ReportSettings = ReportSettings()
    data: DataConfig
    # the rolling-origin validation windows every choice is made on (sweeps optimise their mean),
    # for rows with validation = true; one table or an array of tables
    validation: list[Window] = []
    evaluation: EvaluationConfig = EvaluationConfig(ks=[1, 5, 10, 20], audience_sizes=[100, 500, 1000, 2000, 5000])
    user_split: UserSplitSettings = UserSplitSettings()
    rows: list[ReportRow]
    published: list[Published] = []
    targets: list[Target] = []

    @field_validator("validation", mode="before")
    @classmethod
    def _one_or_many(cls, value: Any) -> Any:
        return as_windows(value)

    @model_validator(mode="after")
    def _labels(self) -> ReportConfig:
        labels = [r.label for r in self.rows]
        dupes = sorted({x for x in labels if labels.count(x) > 1})
        if dupes:
            raise ValueError(f"row labels must be unique; repeated: {', '.join(dupes)}")
        if not self.validation and any(r.validation for r in self.rows):
            raise ValueError("rows with validation = true need a [validation] window (cutoff, end)")
        check_windows(self.validation, self.data.cutoff)
        if any(t.on != "test" for t in self.targets) and not self.validation:
            raise ValueError("targets on the validation mean need [[validation]] windows")
        known = set(labels) | {RANDOM, MOST_ACTIVE}
        for t in self.targets:
            if t.kind == "sweep":
                if not t.sweep:
                    raise ValueError(f"target {t.text!r}: a sweep target needs `sweep` (its name)")
            elif t.row not in known or not t.metric:
                raise ValueError(f"target {t.text!r}: `row` must be one of the rows ({', '.join(labels)}) and `metric` set")
        for p in self.published:
            if p.ours is not None and p.ours not in known:
                raise ValueError(f"published {p.method!r}: ours = {p.ours!r} is not a row")
        return self

    @classmethod
    def from_toml(cls, path: Path | str) -> ReportConfig:
        return load_toml(cls, path, "report config", "experiments/configs/report.toml")


@dataclass
class RowResult:
    row: ReportRow
    model: str
    params: dict[str, Any]
    metrics: dict[str, float]
    timings: dict[str, float]
    train: dict[str, Any] = field(default_factory=dict)

    @property
    def label(self) -> str:
        return self.row.label


@dataclass
class ReportResult:
    path: Path
    markdown: str
    run_id: str
    rows: dict[str, RowResult]
    targets: list[dict[str, Any]]
    plots: list[Path]
    skipped: list[str]
    wall_s: float
    # window label -> row label -> the row fitted and evaluated on that validation window
    validation: dict[str, dict[str, RowResult]] = field(default_factory=dict)
    quality_path: Path | None = None


# ----------------------------------------------------------------------------- running the rows
def validation_config(cfg: ReportConfig, tc: TrainConfig, window: Window) -> TrainConfig:
    """A row's config moved to a validation window (picks and audiences, no next-basket run)."""
    data = cfg.data.model_copy(update={"cutoff": window.cutoff, "test_end": window.end})
    return tc.model_copy(update={"data": data, "evaluation": tc.evaluation.model_copy(update={"next_basket": False})})


def validation_means(cfg: ReportConfig, validation: dict[str, dict[str, RowResult]]) -> dict[str, dict[str, float]]:
    """Row label -> the mean of each metric over the validation windows (rows fitted on all of them)."""
    labels = list(dict.fromkeys(label for per in validation.values() for label in per))
    out = {}
    for label in labels:
        per = {w: rows[label].metrics for w, rows in validation.items() if label in rows}
        if len(per) == len(cfg.validation):
            out[label] = validation_mean(per)
    return out


def run_user_split(cfg: ReportConfig, rows: list[ReportRow], configs: dict[str, TrainConfig | None],
                   console: Console) -> dict[str, tuple[dict[str, float], float]]:
    """The published user split for ``rows``: the next-basket data loaded once, the same folds for
    every row; per row the ``us_`` metrics (mean, ``_sd`` over folds) and the seconds it took."""
    from recsys.models import get_model
    from training.data import DataPaths
    from training.next_basket import evaluate_user_split, load_next_basket, user_split_folds
    from training.pipeline import protocol_params

    paths = DataPaths(cfg.data.canonical, cfg.data.features)
    data = load_next_basket(paths.transactions, paths.canonical / "products.parquet")
    us = cfg.user_split
    folds = user_split_folds(data.n_members, us.folds, us.seed, us.shares)
    out: dict[str, tuple[dict[str, float], float]] = {}
    for row in rows:
        tc = configs[row.label]
        if tc is None:
            continue
        params = protocol_params(tc.model_params(), last_basket=True, audiences=False)
        cls = get_model(tc.model.name)
        t0 = time.perf_counter()
        console.print(f"[user split] {row.label}: {us.folds} folds", highlight=False)
        res = evaluate_user_split(lambda cls=cls, params=params: cls(params), data, folds, tuple(cfg.evaluation.ks))
        metrics = {f"us_{k}": v for k, v in res["mean"].items()}
        metrics.update({f"us_{k}_sd": v for k, v in res["sd"].items()})
        metrics["us_n_members"] = float(data.n_members)
        out[row.label] = (metrics, time.perf_counter() - t0)
    return out


def row_config(cfg: ReportConfig, row: ReportRow) -> TrainConfig | None:
    """The `recsys train` config of one row: the report's split and evaluation, the row's model
    (``None`` for an optional row whose config file is missing)."""
    if row.config is not None:
        if not row.config.exists():
            if row.optional:
                return None
            raise InputError(f"row {row.label!r}: config {row.config} not found")
        base = TrainConfig.from_toml(row.config)
        name, params = base.model.name, {**base.model.params, **row.params}
    else:
        assert row.model is not None
        name, params = row.model, dict(row.params)
    ev = cfg.evaluation.model_copy(update={"next_basket": "next_basket" in row.tables})
    tc = TrainConfig(data=cfg.data, model=ModelConfig(name=name, params=params), evaluation=ev)
    tc.model_params()  # a typo in a row's params fails before anything is fitted
    return tc


def run_report(
    cfg: ReportConfig,
    config_path: Path | None = None,
    out: Path | None = None,
    tracking_uri: str | None = None,
    console: Console | None = None,
    only: list[str] | None = None,
) -> ReportResult:
    from training.pipeline import fit_and_evaluate
    from training.tracking import Tracker, git_state

    console = console or Console(stderr=True)
    out = out or cfg.report.output
    t_all = time.perf_counter()
    git = git_state()  # the code the rows ran, before the report overwrites its own tracked outputs
    wanted = [r for r in cfg.rows if only is None or r.label in only]
    if only is not None and len(wanted) != len(set(only)):
        missing = sorted(set(only) - {r.label for r in cfg.rows})
        raise InputError(f"--rows: no row named {', '.join(map(repr, missing))}; rows: {', '.join(r.label for r in cfg.rows)}")
    configs = {r.label: row_config(cfg, r) for r in wanted}  # every row checked before the first fit
    ensure_features(cfg.data.data_dir, cfg.data.dataset, cfg.data.cutoff)
    skipped = [label for label, c in configs.items() if c is None]
    results: dict[str, RowResult] = {}
    with Tracker(cfg.report.experiment, run_name="report", tracking_uri=tracking_uri) as parent:
        parent.set_tags({"recsys.report": "true"})
        parent.log_params({"data": cfg.data, "evaluation": cfg.evaluation,
                           "rows": {_slug(r.label): configs[r.label].model.name if configs[r.label] else "skipped"
                                    for r in wanted}})
        if config_path is not None:
            parent.log_file(config_path)
        for i, row in enumerate(wanted, 1):
            tc = configs[row.label]
            if tc is None:
                console.print(f"[{i}/{len(wanted)}] {row.label}: skipped ({row.config} not found)", highlight=False)
                continue
            console.print(f"[{i}/{len(wanted)}] {row.label} ({tc.model.name}): {', '.join(row.tables)}", highlight=False)
            with Tracker(cfg.report.experiment, run_name=row.label, tracking_uri=tracking_uri, nested=True) as run:
                run.set_tags({"report.row": row.label, "report.role": row.role, "report.parent_run": parent.run_id})
                run.log_params({"model": {"name": tc.model.name, "params": tc.model_params()},
                                "tables": row.tables})
                res = fit_and_evaluate(tc, console)
                run.log_metrics({**res.metrics, **res.timings})
            results[row.label] = RowResult(row, tc.model.name, tc.model.params, res.metrics, res.timings,
                                           res.report.get("train", {}))
            t = res.timings
            console.print(f"      fit {t.get('fit_s', 0):.1f}s, evaluate {t.get('evaluate_s', 0):.1f}s"
                          + (f", next-basket {t['next_basket_s']:.1f}s" if "next_basket_s" in t else ""),
                          highlight=False)
        us_rows = [r for r in wanted if "user_split" in r.tables and configs[r.label] is not None]
        if us_rows:
            for label, (metrics, seconds) in run_user_split(cfg, us_rows, configs, console).items():
                results[label].metrics.update(metrics)
                results[label].timings["user_split_s"] = seconds
        validation: dict[str, dict[str, RowResult]] = {}
        val_rows = [r for r in wanted if r.validation and configs[r.label] is not None]
        for window in cfg.validation:
            ensure_features(cfg.data.data_dir, cfg.data.dataset, window.cutoff)
            validation[window.label] = {}
            for i, row in enumerate(val_rows, 1):
                tc = validation_config(cfg, configs[row.label], window)
                console.print(f"[validation {window.label} {i}/{len(val_rows)}] {row.label} on "
                              f"[{tc.data.cutoff}, {tc.data.test_end})", highlight=False)
                with Tracker(cfg.report.experiment, run_name=f"{row.label} (validation {window.label})",
                             tracking_uri=tracking_uri, nested=True) as run:
                    run.set_tags({"report.row": row.label, "report.window": "validation",
                                  "report.window_label": window.label, "report.parent_run": parent.run_id})
                    res = fit_and_evaluate(tc, console)
                    run.log_metrics({**res.metrics, **res.timings})
                validation[window.label][row.label] = RowResult(row, tc.model.name, tc.model.params, res.metrics,
                                                                res.timings, res.report.get("train", {}))
        targets = evaluate_targets(cfg, results, tracking_uri, validation)
        sweeps = sweep_sections(cfg, tracking_uri)
        plots_dir = out.parent / cfg.report.plots_dir
        plots = write_plots(cfg, results, plots_dir)
        wall_s = time.perf_counter() - t_all
        markdown = render(cfg, results, targets, plots, out, parent.run_id, wall_s, skipped, config_path, sweeps,
                          validation, git)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(markdown)
        parent.log_file(out)
        quality_path = out.parent / cfg.report.quality_json
        write_quality(quality_path, cfg, results, validation, git)
        parent.log_file(quality_path)
        for p in plots:
            parent.log_file(p, artifact_path="plots")
        parent.log_dict(_jsonable({"rows": {k: {"model": r.model, "params": r.params, "tables": r.row.tables,
                                                "metrics": r.metrics, "timings": r.timings}
                                            for k, r in results.items()},
                                   "validation": {w: {k: {"metrics": r.metrics, "timings": r.timings}
                                                      for k, r in rows.items()} for w, rows in validation.items()},
                                   "targets": targets, "skipped": skipped}), "report.json")
        summary: dict[str, float] = {"wall_s": wall_s}
        for label, r in results.items():
            for k in ("recall@10", "ndcg@10", "nbr_recall@10", "nbr_ndcg@10",
                      "audience_known_recall@1000", "audience_new_recall@1000"):
                if k in r.metrics:
                    summary[f"{_slug(label)}.{k}"] = r.metrics[k]
        for i, t in enumerate(targets):
            if t["holds"] is not None:
                summary[f"target_{i}_holds"] = float(t["holds"])
        parent.log_metrics(summary)
    return ReportResult(out, markdown, parent.run_id, results, targets, plots, skipped, wall_s, validation,
                        quality_path)


# ----------------------------------------------------------------------------- derived rows and targets
def reference_recall(results: dict[str, RowResult], group: str, n: int, which: str) -> float | None:
    """Recall@n of the random (``which = "random"``) or most-active audience, recovered from any
    evaluated row's recall and lift (``evaluate_audiences`` computes both references)."""
    key = "lift_random" if which == RANDOM else "lift_most_active"
    for r in results.values():
        rec, lift = r.metrics.get(f"audience_{group}_recall@{n}"), r.metrics.get(f"audience_{group}_{key}@{n}")
        if rec is not None and lift is not None and math.isfinite(lift) and lift > 0 and rec > 0:
            return rec / lift
    return None


def metric_of(results: dict[str, RowResult], label: str, metric: str) -> float | None:
    """A row's metric; the random / most-active audience rows are derived from the lifts."""
    m = re.fullmatch(r"audience_(known|new|attr)_(recall|lift_random|lift_most_active)@(\d+)", metric)
    if label in (RANDOM, MOST_ACTIVE) and m:
        group, kind, n = m.group(1), m.group(2), int(m.group(3))
        rec = reference_recall(results, group, n, label)
        if rec is None or kind == "recall":
            return rec
        base = reference_recall(results, group, n, RANDOM if kind == "lift_random" else MOST_ACTIVE)
        return rec / base if base else None
    r = results.get(label)
    return None if r is None else r.metrics.get(metric)


def evaluate_targets(cfg: ReportConfig, results: dict[str, RowResult], tracking_uri: str | None,
                     validation: dict[str, dict[str, RowResult]] | None = None) -> list[dict[str, Any]]:
    """Each target checked from the numbers: on the test window, on the validation windows' mean
    (each window's figure, then their mean), or on both (it holds when it holds on both)."""
    out = []
    validation = validation or {}
    for t in cfg.targets:
        holds: bool | None
        if t.kind == "sweep":
            holds, detail = _sweep_target(cfg, t, tracking_uri)
            out.append({"text": t.text, "holds": holds, "detail": detail})
            continue
        where = {"test": ["test"], "validation_mean": [VALIDATION_MEAN], "both": [VALIDATION_MEAN, "test"]}[t.on]
        parts: list[tuple[bool | None, str]] = []
        for w in where:
            if w == "test":
                h, d = _target_on(t, results)
                parts.append((h, f"test {cfg.data.cutoff:%Y-%m}: {d}" if t.on == "both" else d))
                continue
            per = [_target_on(t, rows, value_only=True) for rows in validation.values()]
            vals = [v for v, _ in per]
            if not validation or any(v is None for v in vals):
                parts.append((None, "validation mean: not measured"))
                continue
            mean = float(sum(vals) / len(vals))  # type: ignore[arg-type]
            windows = ", ".join(f"{w} {v:.4f}" for w, v in zip(validation, vals, strict=True))
            if t.kind == "beats_baselines":
                best = [d for _, d in per]
                holds_v = all(b is not None and v > b for v, b in zip(vals, best, strict=True))  # type: ignore[operator]
                parts.append((holds_v, f"validation: {t.row} {t.metric} {windows} vs best baselines "
                                       + ", ".join(f"{b:.4f}" for b in best if b is not None)))
            else:
                assert t.value is not None
                parts.append((mean >= t.value, f"validation mean {mean:.4f} ({windows})"))
        states = [h for h, _ in parts]
        holds = None if any(h is None for h in states) else all(states)
        if t.on == "both" and any(h is None for h in states) and any(h is False for h in states):
            holds = False
        out.append({"text": t.text, "holds": holds, "detail": "; ".join(d for _, d in parts)})
    return out


def _target_on(t: Target, results: dict[str, RowResult], value_only: bool = False) -> tuple[Any, Any]:
    """One target on one window's rows: ``(holds, detail)``, or with ``value_only`` ``(the row's
    value, the best baseline's value for beats_baselines else None)``."""
    assert t.row and t.metric
    mine = metric_of(results, t.row, t.metric)
    if t.kind == "beats_baselines":
        others = {r.label: r.metrics.get(t.metric) for r in results.values()
                  if r.row.role == "baseline" and t.table in r.row.tables and r.label != t.row}
        others = {k: v for k, v in others.items() if v is not None}
        if mine is None or not others:
            return (None, None) if value_only else (None, f"not measured ({t.row} or the baselines missing)")
        best_label = max(others, key=lambda k: others[k])
        if value_only:
            return mine, others[best_label]
        return (mine > others[best_label],
                f"{t.row} {t.metric} = {mine:.4f}; best baseline {best_label} = {others[best_label]:.4f}")
    assert t.value is not None
    if value_only:
        return mine, None
    if mine is None:
        return None, f"not measured ({t.row} {t.metric} missing)"
    return mine >= t.value, f"{t.row} {t.metric} = {mine:.4f} (target >= {t.value:g})"


def latest_sweep(cfg: ReportConfig, name: str, tracking_uri: str | None) -> Any:
    """The newest finished run of the sweep ``name`` (``recsys experiment run``), or ``None``."""
    from recsys.pyfunc import mlflow_client, resolve_tracking_uri

    client = mlflow_client(resolve_tracking_uri(tracking_uri))
    exp = client.get_experiment_by_name(_sweep_experiment(cfg))
    if exp is None:
        return None
    runs = client.search_runs(
        [exp.experiment_id],
        filter_string=f"tags.`recsys.sweep` = 'true' and tags.`sweep.name` = '{name}' and attributes.status = 'FINISHED'",
        order_by=["attributes.start_time DESC"], max_results=1)
    return runs[0] if runs else None


def _sweep_experiment(cfg: ReportConfig) -> str:
    return cfg.report.sweep_experiment or f"{cfg.report.experiment}-sweeps"


def _sweep_target(cfg: ReportConfig, t: Target, tracking_uri: str | None) -> tuple[bool | None, str]:
    """The newest finished sweep of that name: its trials and wall time."""
    assert t.sweep
    run = latest_sweep(cfg, t.sweep, tracking_uri)
    if run is None:
        return None, (f"not measured: no finished sweep {t.sweep!r} in MLflow experiment "
                      f"{_sweep_experiment(cfg)!r} (run `recsys experiment run`)")
    m = run.data.metrics
    n, wall = m.get("n_trials"), m.get("wall_s")
    if n is None or wall is None:
        return None, f"not measured: sweep run {run.info.run_id} has no n_trials / wall_s"
    when = datetime.fromtimestamp(run.info.start_time / 1000).isoformat(timespec="minutes")
    detail = (f"sweep {t.sweep!r} (run {run.info.run_id[:8]}, {when}): {int(n)} trials "
              f"({int(m.get('n_pruned', 0))} pruned) in {wall / 60:.1f} min "
              f"(target >= {t.min_trials} trials in < {t.max_minutes:g} min)")
    return bool(n >= t.min_trials and wall < t.max_minutes * 60), detail


def sweep_sections(cfg: ReportConfig, tracking_uri: str | None) -> list[str]:
    """Markdown for the newest run of each sweep in ``[report] sweeps``, read from MLflow."""
    import tempfile

    from recsys.pyfunc import mlflow_client, resolve_tracking_uri
    from training.tracking import metric_key

    if not cfg.report.sweeps:
        return []
    client = mlflow_client(resolve_tracking_uri(tracking_uri))
    lines = ["## Sweeps", "",
             "Hyperparameter searches (`recsys experiment run`), tuned on the validation window only; the best "
             "config is then fitted once on the test window of this report. Read from MLflow "
             f"(experiment `{_sweep_experiment(cfg)}`).", ""]
    for name in cfg.report.sweeps:
        run = latest_sweep(cfg, name, tracking_uri)
        if run is None:
            lines += [f"- Sweep `{name}`: no finished run yet.", ""]
            continue
        m, p, tags = run.data.metrics, run.data.params, run.data.tags
        metric = p.get("sweep.metric", "recall@10")
        with tempfile.TemporaryDirectory() as tmp:
            try:
                per_model = json.loads(Path(client.download_artifacts(run.info.run_id, "best_per_model.json", tmp)).read_text())
            except Exception:  # an older sweep without the artifact
                per_model = {}
        when = datetime.fromtimestamp(run.info.start_time / 1000).isoformat(timespec="minutes")
        test_key = f"test_{metric_key(metric)}"
        lines += [
            f"**Sweep `{name}`** (run `{run.info.run_id[:8]}`, {when}): {int(m.get('n_trials', 0))} trials "
            f"({int(m.get('n_pruned', 0))} pruned early, {int(m.get('n_failed', 0))} failed; "
            f"{int(m.get('n_repeats_skipped', 0))} repeated proposals skipped) in {m.get('wall_s', 0) / 60:.1f} min. "
            f"{metric} tuned on {_tuned_on(p)}. Best: "
            f"`{tags.get('best.model')}` with {metric} {m.get('best_value', float('nan')):.4f} on the validation window"
            + (f" and {m[test_key]:.4f} on the test window" if test_key in m else "")
            + (f" (`{tags['best.config']}`)." if "best.config" in tags else "."),
            "",
        ]
        if per_model:
            rows = []
            for model, e in sorted(per_model.items(), key=lambda kv: -(kv[1].get("value") or -1e9)):
                params = ", ".join(f"{k}={_short_value(v)}" for k, v in (e.get("params") or {}).items()
                                   if k not in ("seed", "num_threads"))
                rows.append([f"`{model}`", str(e.get("n_trials", 0)), str(e.get("n_pruned", 0)),
                             _f(e.get("value"), 4), params or "defaults"])
            lines += [_md_table(["model", "trials", "pruned", f"best {metric} (validation)", "its params"], rows,
                                text_last=True), ""]
    return lines


# ----------------------------------------------------------------------------- quality.json
AUDIENCE_KINDS = (("sold", "known"), ("never_sold", "new"), ("never_sold_attributes", "attr"))


def _picks_record(m: dict[str, float], ks: list[int], prefix: str = "") -> dict[str, float]:
    keys = [f"{x}@{k}" for k in ks for x in ("recall", "ndcg", "map", "hit_rate")]
    keys += [f"ndcg_capped@{k}" for k in ks] + [f"repeat_recall@{k}" for k in ks] + [f"new_recall@{k}" for k in ks]
    out = {k: m[f"{prefix}{k}"] for k in keys if f"{prefix}{k}" in m}
    if f"{prefix}n_queries" in m:
        out["n_members"] = m[f"{prefix}n_queries"]
    return out


def _audience_record(rows: dict[str, RowResult], label: str, group: str, sizes: list[int]) -> dict[str, float]:
    out: dict[str, float] = {}
    for n in sizes:
        for key, name in (("recall", f"recall@{n}"), ("lift_most_active", f"lift_most_active@{n}"),
                          ("lift_random", f"lift_random@{n}"), ("expected_over_actual", f"expected_over_actual@{n}"),
                          ("expected_buyers", f"expected_buyers@{n}"), ("actual_buyers", f"actual_buyers@{n}")):
            v = metric_of(rows, label, f"audience_{group}_{key}@{n}")
            if v is not None and math.isfinite(v):
                out[name] = v
    head = 1000 if 1000 in sizes else sizes[len(sizes) // 2]
    for key in ("lift_most_active", "lift_random", "expected_over_actual"):
        if f"{key}@{head}" in out:
            out[key] = out[f"{key}@{head}"]
    r = rows.get(label)
    if r is not None and f"audience_{group}_n_products" in r.metrics:
        out["n_products"] = r.metrics[f"audience_{group}_n_products"]
    return out


def quality_records(cfg: ReportConfig, results: dict[str, RowResult],
                    validation: dict[str, dict[str, RowResult]]) -> list[dict[str, Any]]:
    """Every figure of the report as flat records: ``protocol`` (temporal, next_basket, user_split,
    audience), ``window`` (a month ``YYYY-MM``, ``validation_mean``, or the protocol's own name),
    ``model`` (the row's label), the audience ``kind`` (sold, never_sold, never_sold_attributes), and
    the metrics."""
    ks = sorted(cfg.evaluation.ks)
    sizes = sorted(cfg.evaluation.audience_sizes)
    windows = {**validation, f"{cfg.data.cutoff:%Y-%m}": results}
    per_window: list[dict[str, Any]] = []
    for w, rows in windows.items():
        for label, r in rows.items():
            base = {"window": w, "model": label, "model_name": r.model, "role": r.row.role}
            if "picks" in r.row.tables:
                per_window.append({"protocol": "temporal", **base, **_picks_record(r.metrics, ks)})
            if "audiences" in r.row.tables:
                for kind, group in AUDIENCE_KINDS:
                    rec = _audience_record(rows, label, group, sizes)
                    if any(k.startswith("recall@") for k in rec):
                        per_window.append({"protocol": "audience", **base, "kind": kind, **rec})
        if any("audiences" in r.row.tables for r in rows.values()):
            for label in (MOST_ACTIVE, RANDOM):
                for kind, group in AUDIENCE_KINDS:
                    rec = _audience_record(rows, label, group, sizes)
                    if any(k.startswith("recall@") for k in rec):
                        per_window.append({"protocol": "audience", "window": w, "model": label, "model_name": label,
                                           "role": "reference", "kind": kind, **rec})
    out = list(per_window)
    # the validation windows' mean of every record measured on all of them
    val = [w for w in validation]
    if val:
        groups: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
        for rec in per_window:
            if rec["window"] in val:
                groups.setdefault((rec["protocol"], rec["model"], rec.get("kind")), []).append(rec)
        for (protocol, model, kind), recs in groups.items():
            if len(recs) != len(val):
                continue
            nums = [k for k, v in recs[0].items() if isinstance(v, float | int) and not isinstance(v, bool)]
            mean = {k: float(sum(r[k] for r in recs) / len(recs)) for k in nums if all(k in r for r in recs)}
            rec = {"protocol": protocol, "window": VALIDATION_MEAN, "model": model,
                   "model_name": recs[0]["model_name"], "role": recs[0]["role"], "windows": val}
            if kind is not None:
                rec["kind"] = kind
            out.append({**rec, **mean})
    for label, r in results.items():
        base = {"model": label, "model_name": r.model, "role": r.row.role}
        if "next_basket" in r.row.tables and any(k.startswith("nbr_") for k in r.metrics):
            out.append({"protocol": "next_basket", "window": "last_basket", **base, **_picks_record(r.metrics, ks, "nbr_")})
        if "user_split" in r.row.tables and "us_n_queries" in r.metrics:
            rec = _picks_record(r.metrics, ks, "us_")
            rec.update({f"{k}_sd": r.metrics[f"us_{k}_sd"] for k in list(rec) if f"us_{k}_sd" in r.metrics})
            out.append({"protocol": "user_split", "window": f"{cfg.user_split.folds}_folds", **base,
                        "folds": cfg.user_split.folds, **rec})
    return out


def write_quality(path: Path, cfg: ReportConfig, results: dict[str, RowResult],
                  validation: dict[str, dict[str, RowResult]], git: dict[str, str] | None = None) -> Path:
    """``quality.json``: :func:`quality_records` with what produced them."""
    doc = {
        "generated": datetime.now().isoformat(timespec="minutes"),
        "code": (git or {}).get("git.commit"),
        "dataset": cfg.data.dataset,
        "test_window": {"label": f"{cfg.data.cutoff:%Y-%m}", "cutoff": cfg.data.cutoff.isoformat(),
                        "end": cfg.data.test_end.isoformat() if cfg.data.test_end else None},
        "validation_windows": [{"label": w.label, "cutoff": w.cutoff.isoformat(), "end": w.end.isoformat()}
                               for w in cfg.validation],
        "records": quality_records(cfg, results, validation),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(_jsonable(doc), indent=1, ensure_ascii=False) + "\n")
    return path


# ----------------------------------------------------------------------------- plots
def write_plots(cfg: ReportConfig, results: dict[str, RowResult], folder: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder.mkdir(parents=True, exist_ok=True)
    paths: list[Path] = []
    ks = sorted(cfg.evaluation.ks)

    fig, axes = plt.subplots(2, 2, figsize=(11, 7.5))
    for r_i, (table, prefix, title) in enumerate((("picks", "", "temporal split"), ("next_basket", "nbr_", "next-basket protocol"))):
        rows = [r for r in results.values() if table in r.row.tables]
        for c_i, metric in enumerate(("recall", "ndcg")):
            ax = axes[r_i][c_i]
            for j, r in enumerate(rows):
                ys = [r.metrics.get(f"{prefix}{metric}@{k}") for k in ks]
                ax.plot(ks, ys, marker="o", markersize=3, label=r.label, color=f"C{j % 10}",
                        linestyle="-" if r.row.role == "baseline" else "--", linewidth=1.2 if r.row.role == "baseline" else 2)
            ax.set_title(f"{title}: {metric}@k", fontsize=9)
            ax.set_xlabel("k")
            ax.set_xticks(ks)
            ax.grid(alpha=0.3)
            if c_i == 0:
                ax.legend(fontsize=6, loc="best", framealpha=0.6)
    fig.tight_layout()
    paths.append(_save(fig, folder / "metric_vs_k.png"))

    sizes = sorted(cfg.evaluation.audience_sizes)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    aud = [r for r in results.values() if "audiences" in r.row.tables]
    for ax, group, title in ((axes[0], "known", "products sold before the cutoff"),
                             (axes[1], "new", "products never sold before the cutoff")):
        for label, style in ((RANDOM, ":"), (MOST_ACTIVE, "-.")):
            ys = [metric_of(results, label, f"audience_{group}_recall@{n}") for n in sizes]
            ax.plot(sizes, ys, linestyle=style, color="grey" if label == RANDOM else "black", label=label)
        for j, r in enumerate(aud):
            ax.plot(sizes, [r.metrics.get(f"audience_{group}_recall@{n}") for n in sizes], marker="o", markersize=3,
                    label=r.label, color=f"C{j % 10}", linewidth=2 if r.row.role != "baseline" else 1.2)
        n_products = next((r.metrics.get(f"audience_{group}_n_products") for r in aud), None)
        ax.set_title(f"{title} ({int(n_products or 0)})", fontsize=9)
        ax.set_xscale("log")
        ax.set_xlabel("audience size N")
        ax.set_ylabel("recall@N")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    paths.append(_save(fig, folder / "audience_recall_vs_size.png"))

    k = 10 if 10 in ks else ks[-1]
    rows = [r for r in results.values() if "picks" in r.row.tables]
    fig, ax = plt.subplots(figsize=(11, 4))
    xs = range(len(rows))
    width = 0.4
    rep = [r.metrics.get(f"repeat_recall@{k}", 0.0) for r in rows]
    new = [r.metrics.get(f"new_recall@{k}", 0.0) for r in rows]
    ax.bar([x - width / 2 for x in xs], rep, width, label=f"repeat (bought before): recall@{k}")
    ax.bar([x + width / 2 for x in xs], new, width, label=f"new to the member: recall@{k}")
    ax.set_xticks(list(xs))
    ax.set_xticklabels([r.label for r in rows], rotation=20, ha="right", fontsize=8)
    ax.set_title("person -> product, temporal split: repeat vs new-to-member products", fontsize=9)
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    paths.append(_save(fig, folder / "repeat_vs_new.png"))
    return paths


def _save(fig: Any, path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# ----------------------------------------------------------------------------- Markdown
def _f(v: float | None, digits: int = 3) -> str:
    return "—" if v is None or (isinstance(v, float) and not math.isfinite(v)) else f"{v:.{digits}f}"


def _md_table(header: list[str], rows: list[list[str]], text_columns: int = 1, text_last: bool = False) -> str:
    """A Markdown table; the first ``text_columns`` columns (and the last with ``text_last``) are
    left-aligned text, the rest numbers, right-aligned."""
    align = ["---"] * text_columns + ["---:"] * (len(header) - text_columns)
    if text_last:
        align[-1] = "---"
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join(align) + " |"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def _name(r: RowResult) -> str:
    tag = {"default": " **(default)**", "tuned": " *(tuned)*"}.get(r.row.role, "")
    return f"{r.label}{tag}"


def _protocol(cfg: ReportConfig, table: str) -> str:
    ev = cfg.evaluation
    return PROTOCOLS[table].format(cutoff=cfg.data.cutoff, end=cfg.data.test_end, known=ev.min_buyers_known,
                                   new=ev.min_buyers_new)


def render(cfg: ReportConfig, results: dict[str, RowResult], targets: list[dict[str, Any]], plots: list[Path],
           out: Path, run_id: str, wall_s: float, skipped: list[str], config_path: Path | None,
           sweeps: list[str] | None = None, validation: dict[str, dict[str, RowResult]] | None = None,
           git: dict[str, str] | None = None) -> str:
    from training.tracking import git_state

    ks = sorted(cfg.evaluation.ks)
    k1 = 10 if 10 in ks else ks[len(ks) // 2]
    k2 = 20 if 20 in ks else ks[-1]
    sizes = sorted(cfg.evaluation.audience_sizes)
    n_head = 1000 if 1000 in sizes else sizes[len(sizes) // 2]
    shown_sizes = [n for n in sizes if n in (100, 1000, 5000)] or sizes
    any_row = next(iter(results.values()), None)
    train = any_row.train if any_row else {}
    git = git if git is not None else git_state()
    lines = [
        f"# {cfg.report.title}",
        "",
        f"Generated by `recsys experiment report{f' --config {config_path}' if config_path else ''}` on "
        f"{datetime.now().isoformat(timespec='minutes')} in {wall_s / 60:.1f} min "
        f"(code {git.get('git.commit', 'unknown')[:10]}{', uncommitted changes' if git.get('git.dirty') == 'true' else ''}; "
        f"MLflow run `{run_id}`, experiment `{cfg.report.experiment}`). Every row below comes from this one run: "
        f"same data, same split, same evaluation code (`training.pipeline.fit_and_evaluate`).",
        "",
        f"- Dataset `{cfg.data.dataset}`: train on purchases before {cfg.data.cutoff}, test on "
        f"[{cfg.data.cutoff}, {cfg.data.test_end}); {train.get('members', 0):,} training members, "
        f"{train.get('products', 0):,} products, {train.get('occasions', 0):,} purchase occasions "
        f"(member x product x day).",
        "- Wall time per row: fit + evaluation of both directions on the temporal split (`fit_s + evaluate_s`); "
        "the next-basket column is its own load + fit + evaluation.",
    ]
    if skipped:
        lines.append(f"- Skipped (config not found): {', '.join(skipped)}.")
    lines.append("")

    # ---- targets
    lines += ["## Targets", ""]
    if targets:
        for t in targets:
            mark = {True: "✅ holds", False: "❌ does not hold", None: "— not measured"}[t["holds"]]
            lines.append(f"- **{mark}** — {t['text']}: {t['detail']}")
    else:
        lines.append("(no targets configured)")
    lines.append("")

    # ---- picks
    picks = [r for r in results.values() if "picks" in r.row.tables]
    if picks:
        n_q = next((r.metrics.get("n_queries") for r in picks if "n_queries" in r.metrics), None)
        lines += [f"## Person → product: temporal split ({int(n_q or 0):,} members with a test purchase)", "",
                  f"Protocol: {_protocol(cfg, 'picks')}.", ""]
        header = ["model", f"Recall@{k1}", f"Recall@{k2}", f"NDCG@{k1}", f"NDCG@{k2}", f"MAP@{k1}",
                  f"hit rate@{k1}", f"coverage@{k1}", f"repeat R@{k1}", f"new R@{k1}", "wall s"]
        rows = []
        for r in picks:
            m = r.metrics
            rows.append([_name(r), *(_f(m.get(x)) for x in (
                f"recall@{k1}", f"recall@{k2}", f"ndcg@{k1}", f"ndcg@{k2}", f"map@{k1}", f"hit_rate@{k1}",
                f"coverage@{k1}", f"repeat_recall@{k1}", f"new_recall@{k1}")),
                _f(r.timings.get("fit_s", 0) + r.timings.get("evaluate_s", 0), 1)])
        lines += [_md_table(header, rows), "",
                  f"Repeat / new R@{k1}: recall over the products the member had / had not bought before the "
                  "cutoff (each normalised by its own min(k, |truth|)).", ""]

    # ---- next basket
    nbr = [r for r in results.values() if "next_basket" in r.row.tables]
    if nbr:
        n_q = next((r.metrics.get("nbr_n_queries") for r in nbr if "nbr_n_queries" in r.metrics), None)
        lines += [f"## Person → product: next-basket protocol ({int(n_q or 0):,} members)", "",
                  f"Protocol: {_protocol(cfg, 'next_basket')}. Models without member tags here "
                  "(segment popularity falls back to one segment).", ""]
        header = ["model", f"Recall@{k1}", f"NDCG@{k1}", f"Recall@{k2}", f"NDCG@{k2}", f"PHR@{k1}", f"MAP@{k1}",
                  f"repeat R@{k1}", f"new R@{k1}", "wall s"]
        rows = []
        for r in nbr:
            m = r.metrics
            rows.append([_name(r), *(_f(m.get(f"nbr_{x}")) for x in (
                f"recall@{k1}", f"ndcg@{k1}", f"recall@{k2}", f"ndcg@{k2}", f"hit_rate@{k1}", f"map@{k1}",
                f"repeat_recall@{k1}", f"new_recall@{k1}")), _f(r.timings.get("next_basket_s"), 1)])
        lines += [_md_table(header, rows), ""]

    lines += user_split_section(cfg, results, ks)

    # ---- audiences
    aud = [r for r in results.values() if "audiences" in r.row.tables]
    if aud:
        for group, title in (("known", "products sold before the cutoff"),
                             ("new", "products never sold before the cutoff, known to the catalogue"),
                             ("attr", "the same never-sold products described by their attributes alone "
                                      "(category, price band, brand)")):
            n_p = next((r.metrics.get(f"audience_{group}_n_products") for r in aud), None)
            lines += [f"## Product → person: audiences for {title} ({_count(n_p, 'product')})", ""]
            if group == "known":
                lines += [f"Protocol: {_protocol(cfg, 'audiences')}.", ""]
            header = ["audience", *(f"recall@{n}" for n in shown_sizes), f"lift vs random@{n_head}",
                      f"lift vs most-active@{n_head}", f"expected / actual buyers@{n_head}", "wall s"]
            rows = []
            for label in (RANDOM, MOST_ACTIVE):
                rows.append([label, *(_f(metric_of(results, label, f"audience_{group}_recall@{n}")) for n in shown_sizes),
                             _f(metric_of(results, label, f"audience_{group}_lift_random@{n_head}"), 2),
                             _f(metric_of(results, label, f"audience_{group}_lift_most_active@{n_head}"), 2), "—", "—"])
            for r in aud:
                m = r.metrics
                rows.append([_name(r), *(_f(m.get(f"audience_{group}_recall@{n}")) for n in shown_sizes),
                             _f(m.get(f"audience_{group}_lift_random@{n_head}"), 2),
                             _f(m.get(f"audience_{group}_lift_most_active@{n_head}"), 2),
                             _f(m.get(f"audience_{group}_expected_over_actual@{n_head}"), 2),
                             _f(r.timings.get("fit_s", 0) + r.timings.get("evaluate_s", 0), 1)])
            lines += [_md_table(header, rows), ""]
        lines += ["Random: recall@N = N / members, the expectation of a random audience. Most-active members: the same "
                  "N members (most purchase occasions first) for every product. Both are recovered from the lifts "
                  "`evaluate_audiences` computes for every row. Expected / actual buyers: the sum of the audience "
                  "members' calibrated purchase probabilities (for a label-window-long period) over the test buyers "
                  "among them, summed over the products (models with calibrated audience scores).", ""]

    # ---- published
    if cfg.published:
        lines += ["## Published reference figures beside ours", "",
                  "Figures from `../shared/data/README.md`. *Protocol* says how each was measured; ours are from "
                  "the tables above (same run).", ""]
        for table, title in (("picks", "Temporal split, person → product"),
                             ("next_basket", "Next-basket protocol"),
                             ("user_split", "Next-basket protocol, the published user split"),
                             ("audiences_known", "Audiences, known products"),
                             ("audiences_new", "Audiences, never-sold products")):
            pubs = [p for p in cfg.published if p.table == table]
            if not pubs:
                continue
            metrics = list(dict.fromkeys(k for p in pubs for k in p.metrics))
            our_protocol = {"picks": "ours: same temporal split and definitions",
                            "next_basket": "ours: the same protocol on all qualifying members",
                            "user_split": f"ours: mean of {cfg.user_split.folds} folds of our own split of the same "
                                          "baskets",
                            "audiences_known": "ours: same split, products with >= "
                                               f"{cfg.evaluation.min_buyers_known} test buyers",
                            "audiences_new": "ours: same split, never-sold products with >= "
                                             f"{cfg.evaluation.min_buyers_new} test buyers"}[table]
            header = ["method", "published protocol", "our row", *(f"published {_short(k)}" for k in metrics),
                      *(f"ours {_short(k)}" for k in metrics)]
            rows = []
            for p in pubs:
                ours = [metric_of(results, p.ours, k) if p.ours else None for k in metrics]
                ran = p.ours in results or (p.ours in (RANDOM, MOST_ACTIVE) and any(v is not None for v in ours))
                rows.append([p.method, p.protocol, p.ours if ran else "—", *(_f(p.metrics.get(k)) for k in metrics),
                             *(_f(v) for v in ours)])
            lines += [f"**{title}** ({our_protocol})", "", _md_table(header, rows, text_columns=3), ""]

    lines += validation_section(cfg, results, validation or {}, k1, n_head)
    lines += sweeps or []

    # ---- plots
    if plots:
        lines += ["## Plots", ""]
        for p in plots:
            rel = p.relative_to(out.parent) if p.is_relative_to(out.parent) else p
            lines.append(f"![{p.stem}]({rel.as_posix()})")
        lines.append("")

    # ---- the rows' params
    lines += ["## Rows", "", _md_table(
        ["row", "model", "params", "tables", "note"],
        [[r.label, f"`{r.model}`", ", ".join(f"{k}={_short_value(v)}" for k, v in r.params.items()) or "defaults",
          ", ".join(r.row.tables), r.row.note] for r in results.values()], text_columns=5), ""]
    if cfg.report.notes:
        lines += ["## Notes", "", *(f"- {n}" for n in cfg.report.notes), ""]
    return "\n".join(lines)


def validation_section(cfg: ReportConfig, results: dict[str, RowResult],
                       validation: dict[str, dict[str, RowResult]], k: int, n: int) -> list[str]:
    """The rows fitted on each validation window and their mean, beside their test-window figures."""
    if not validation or not cfg.validation:
        return []
    means = validation_means(cfg, validation)
    spans = "; ".join(f"{w.label}: train before {w.cutoff}, test [{w.cutoff}, {w.end})" for w in cfg.validation)
    lines = [f"## The same rows on the validation windows ({spans})", "",
             "Every choice of the default model is made on the mean of these windows (the sweeps optimise it) and "
             "never on the test window, which is scored once, after. A gain that appears only in the test column is "
             "a choice fitted to the test window.", ""]
    labels = [w.label for w in cfg.validation]
    test = f"{cfg.data.cutoff:%Y-%m} (test)"
    for title, key, digits in ((f"Recall@{k}", f"recall@{k}", 3), (f"NDCG@{k}", f"ndcg@{k}", 3),
                               (f"known products: lift vs most-active@{n}", f"audience_known_lift_most_active@{n}", 2),
                               (f"never-sold products: lift vs most-active@{n}", f"audience_new_lift_most_active@{n}", 2),
                               (f"never-sold products by attributes alone: lift vs most-active@{n}",
                                f"audience_attr_lift_most_active@{n}", 2),
                               (f"known products: expected / actual buyers@{n}", f"audience_known_expected_over_actual@{n}", 2),
                               (f"never-sold products: expected / actual buyers@{n}",
                                f"audience_new_expected_over_actual@{n}", 2)):
        rows = []
        for label in means:
            per = [validation[w].get(label) for w in labels]
            if all(r is None or key not in r.metrics for r in per):
                continue
            row = next(r for r in per if r is not None)
            tm = results[label].metrics if label in results else {}
            rows.append([_name(row), *(_f(r.metrics.get(key) if r else None, digits) for r in per),
                         _f(means[label].get(key), digits), _f(tm.get(key), digits)])
        if rows:
            lines += [f"**{title}**", "", _md_table(["model", *labels, "validation mean", test], rows), ""]
    for w in labels:
        any_val = next(iter(validation[w].values()))
        lines.append(f"- {w}: {int(any_val.metrics.get('n_queries', 0)):,} members with a purchase in it; "
                     f"{_count(any_val.metrics.get('audience_known_n_products'), 'sold product')} and "
                     f"{_count(any_val.metrics.get('audience_new_n_products'), 'never-sold product')} with enough "
                     "buyers to be scored.")
    lines.append("")
    return lines


def user_split_section(cfg: ReportConfig, results: dict[str, RowResult], ks: list[int]) -> list[str]:
    """The published user split: mean ± sd over the folds."""
    rows = [r for r in results.values() if "user_split" in r.row.tables and "us_n_queries" in r.metrics]
    if not rows:
        return []
    us = cfg.user_split
    k1 = 10 if 10 in ks else ks[len(ks) // 2]
    k2 = 20 if 20 in ks else ks[-1]
    n_q = rows[0].metrics.get("us_n_queries")
    lines = [f"## Person → product: next-basket protocol, the published user split "
             f"({int(rows[0].metrics.get('us_n_members', 0)):,} members, ~{int(n_q or 0):,} test members per fold)", "",
             f"Protocol: {PROTOCOLS['user_split'].format(train=us.shares[0], val=us.shares[1], test=us.shares[2], folds=us.folds)}.",
             ""]

    def pm(m: dict[str, float], key: str) -> str:
        v, sd = m.get(f"us_{key}"), m.get(f"us_{key}_sd")
        return "—" if v is None else f"{v:.3f} ± {sd:.3f}" if sd is not None else f"{v:.3f}"

    header = ["model", f"Recall@{k1}", f"NDCG@{k1}", f"NDCG@{k1} capped", f"PHR@{k1}", f"Recall@{k2}",
              f"NDCG@{k2}", f"NDCG@{k2} capped", "wall s"]
    body = [[_name(r), *(pm(r.metrics, x) for x in (f"recall@{k1}", f"ndcg@{k1}", f"ndcg_capped@{k1}",
                                                      f"hit_rate@{k1}", f"recall@{k2}", f"ndcg@{k2}",
                                                      f"ndcg_capped@{k2}")),
             _f(r.timings.get("user_split_s"), 1)] for r in rows]
    lines += [_md_table(header, body), "",
              "NDCG: the ideal DCG over the whole target basket (the paper's); *capped*: over min(k, |target|) "
              "(the temporal split's convention).", ""]
    return lines


def _tuned_on(params: dict[str, str]) -> str:
    """The validation window(s) a sweep run logged."""
    windows = params.get("validation.windows")
    if windows and " and " in windows:
        return f"the mean of the windows {windows}"
    return f"[{params.get('validation.cutoff')}, {params.get('validation.end')})"


def _count(n: float | None, noun: str) -> str:
    n = int(n or 0)
    return f"{n:,} {noun}{'' if n == 1 else 's'}"


def _short(metric: str) -> str:
    return (metric.replace("audience_known_", "").replace("audience_new_", "").replace("nbr_", "")
            .replace("us_", "").replace("hit_rate", "PHR").replace("recall", "R").replace("ndcg", "NDCG"))


def _short_value(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, list):
        return "[" + ", ".join(map(str, v)) + "]"
    return str(v)


def _slug(label: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", label.lower()).strip("_")


def _jsonable(obj: Any) -> Any:
    return json.loads(json.dumps(obj, default=str))
