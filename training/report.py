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
from datetime import date, datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, model_validator
from rich.console import Console

from recsys.errors import InputError
from training.config import DataConfig, EvaluationConfig, ModelConfig, TrainConfig, load_toml

Table = Literal["picks", "next_basket", "audiences"]
RANDOM, MOST_ACTIVE = "random", "most-active members"

PROTOCOLS = {
    "picks": "temporal split: train before {cutoff}, test [{cutoff}, {end}) of members known at the cutoff; "
             "replenish mode; Recall@k = hits / min(k, |truth|), NDCG binary gains with ideal over min(k, |truth|)",
    "next_basket": "next-basket protocol: basket = member + day, members with 3-50 baskets, last basket is the "
                   "target, products in < 3 history baskets removed; Recall@k = hits / |target|, NDCG ideal over "
                   "the whole target, PHR = hit rate",
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
    table: Literal["picks", "next_basket", "audiences_known", "audiences_new"]
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


class ReportSettings(_Strict):
    title: str = "Comparison report"
    output: Path = Path("experiments/REPORT.md")
    plots_dir: str = "report_plots"  # beside the report
    experiment: str = "report"  # MLflow experiment of the report runs
    sweep_experiment: str | None = None  # where sweeps are looked up; default "<experiment>-sweeps"
    sweeps: list[str] = []  # sweep names whose newest finished run the report summarises
    notes: list[str] = []


class Window(_Strict):
    cutoff: date  # train before it
    end: date  # test on [cutoff, end)


class ReportConfig(_Strict):
    report: ReportSettings = ReportSettings()
    data: DataConfig
    validation: Window | None = None  # the window sweeps tune on, for rows with validation = true
    evaluation: EvaluationConfig = EvaluationConfig(ks=[1, 5, 10, 20], audience_sizes=[100, 500, 1000, 2000, 5000])
    rows: list[ReportRow]
    published: list[Published] = []
    targets: list[Target] = []

    @model_validator(mode="after")
    def _labels(self) -> ReportConfig:
        labels = [r.label for r in self.rows]
        dupes = sorted({x for x in labels if labels.count(x) > 1})
        if dupes:
            raise ValueError(f"row labels must be unique; repeated: {', '.join(dupes)}")
        if self.validation is None and any(r.validation for r in self.rows):
            raise ValueError("rows with validation = true need a [validation] window (cutoff, end)")
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
    validation: dict[str, RowResult] = field(default_factory=dict)


# ----------------------------------------------------------------------------- running the rows
def validation_config(cfg: ReportConfig, tc: TrainConfig) -> TrainConfig:
    """A row's config moved to the validation window (picks and audiences, no next-basket run)."""
    assert cfg.validation is not None
    data = cfg.data.model_copy(update={"cutoff": cfg.validation.cutoff, "test_end": cfg.validation.end})
    return tc.model_copy(update={"data": data, "evaluation": tc.evaluation.model_copy(update={"next_basket": False})})


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
        validation: dict[str, RowResult] = {}
        val_rows = [r for r in wanted if r.validation and configs[r.label] is not None]
        for i, row in enumerate(val_rows, 1):
            tc = validation_config(cfg, configs[row.label])
            console.print(f"[validation {i}/{len(val_rows)}] {row.label} on [{tc.data.cutoff}, {tc.data.test_end})",
                          highlight=False)
            with Tracker(cfg.report.experiment, run_name=f"{row.label} (validation)", tracking_uri=tracking_uri,
                         nested=True) as run:
                run.set_tags({"report.row": row.label, "report.window": "validation",
                              "report.parent_run": parent.run_id})
                res = fit_and_evaluate(tc, console)
                run.log_metrics({**res.metrics, **res.timings})
            validation[row.label] = RowResult(row, tc.model.name, tc.model.params, res.metrics, res.timings,
                                              res.report.get("train", {}))
        targets = evaluate_targets(cfg, results, tracking_uri)
        sweeps = sweep_sections(cfg, tracking_uri)
        plots_dir = out.parent / cfg.report.plots_dir
        plots = write_plots(cfg, results, plots_dir)
        wall_s = time.perf_counter() - t_all
        markdown = render(cfg, results, targets, plots, out, parent.run_id, wall_s, skipped, config_path, sweeps,
                          validation, git)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(markdown)
        parent.log_file(out)
        for p in plots:
            parent.log_file(p, artifact_path="plots")
        parent.log_dict(_jsonable({"rows": {k: {"model": r.model, "params": r.params, "tables": r.row.tables,
                                                "metrics": r.metrics, "timings": r.timings}
                                            for k, r in results.items()},
                                   "validation": {k: {"metrics": r.metrics, "timings": r.timings}
                                                  for k, r in validation.items()},
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
    return ReportResult(out, markdown, parent.run_id, results, targets, plots, skipped, wall_s, validation)


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
    m = re.fullmatch(r"audience_(known|new)_(recall|lift_random|lift_most_active)@(\d+)", metric)
    if label in (RANDOM, MOST_ACTIVE) and m:
        group, kind, n = m.group(1), m.group(2), int(m.group(3))
        rec = reference_recall(results, group, n, label)
        if rec is None or kind == "recall":
            return rec
        base = reference_recall(results, group, n, RANDOM if kind == "lift_random" else MOST_ACTIVE)
        return rec / base if base else None
    r = results.get(label)
    return None if r is None else r.metrics.get(metric)


def evaluate_targets(cfg: ReportConfig, results: dict[str, RowResult], tracking_uri: str | None) -> list[dict[str, Any]]:
    out = []
    for t in cfg.targets:
        holds: bool | None
        if t.kind == "sweep":
            holds, detail = _sweep_target(cfg, t, tracking_uri)
        elif t.kind == "beats_baselines":
            assert t.row and t.metric
            mine = metric_of(results, t.row, t.metric)
            others = {r.label: r.metrics.get(t.metric) for r in results.values()
                      if r.row.role == "baseline" and t.table in r.row.tables and r.label != t.row}
            others = {k: v for k, v in others.items() if v is not None}
            if mine is None or not others:
                holds, detail = None, f"not measured ({t.row} or the baselines missing)"
            else:
                best_label = max(others, key=lambda k: others[k])
                holds = mine > others[best_label]
                detail = f"{t.row} {t.metric} = {mine:.4f}; best baseline {best_label} = {others[best_label]:.4f}"
        else:
            assert t.row and t.metric and t.value is not None
            v = metric_of(results, t.row, t.metric)
            if v is None:
                holds, detail = None, f"not measured ({t.row} {t.metric} missing)"
            else:
                holds = v >= t.value
                detail = f"{t.row} {t.metric} = {v:.4f} (target >= {t.value:g})"
        out.append({"text": t.text, "holds": holds, "detail": detail})
    return out


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
            f"{metric} tuned on [{p.get('validation.cutoff')}, {p.get('validation.end')}). Best: "
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
           sweeps: list[str] | None = None, validation: dict[str, RowResult] | None = None,
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

    # ---- audiences
    aud = [r for r in results.values() if "audiences" in r.row.tables]
    if aud:
        for group, title in (("known", "products sold before the cutoff"), ("new", "products never sold before the cutoff")):
            n_p = next((r.metrics.get(f"audience_{group}_n_products") for r in aud), None)
            lines += [f"## Product → person: audiences for {title} ({_count(n_p, 'product')})", ""]
            if group == "known":
                lines += [f"Protocol: {_protocol(cfg, 'audiences')}.", ""]
            header = ["audience", *(f"recall@{n}" for n in shown_sizes), f"lift vs random@{n_head}",
                      f"lift vs most-active@{n_head}", "wall s"]
            rows = []
            for label in (RANDOM, MOST_ACTIVE):
                rows.append([label, *(_f(metric_of(results, label, f"audience_{group}_recall@{n}")) for n in shown_sizes),
                             _f(metric_of(results, label, f"audience_{group}_lift_random@{n_head}"), 2),
                             _f(metric_of(results, label, f"audience_{group}_lift_most_active@{n_head}"), 2), "—"])
            for r in aud:
                m = r.metrics
                rows.append([_name(r), *(_f(m.get(f"audience_{group}_recall@{n}")) for n in shown_sizes),
                             _f(m.get(f"audience_{group}_lift_random@{n_head}"), 2),
                             _f(m.get(f"audience_{group}_lift_most_active@{n_head}"), 2),
                             _f(r.timings.get("fit_s", 0) + r.timings.get("evaluate_s", 0), 1)])
            lines += [_md_table(header, rows), ""]
        lines += ["Random: recall@N = N / members, the expectation of a random audience. Most-active members: the same "
                  "N members (most purchase occasions first) for every product. Both are recovered from the lifts "
                  "`evaluate_audiences` computes for every row.", ""]

    # ---- published
    if cfg.published:
        lines += ["## Published reference figures beside ours", "",
                  "Figures from `../shared/data/README.md`. *Protocol* says how each was measured; ours are from "
                  "the tables above (same run).", ""]
        for table, title in (("picks", "Temporal split, person → product"),
                             ("next_basket", "Next-basket protocol"),
                             ("audiences_known", "Audiences, known products"),
                             ("audiences_new", "Audiences, never-sold products")):
            pubs = [p for p in cfg.published if p.table == table]
            if not pubs:
                continue
            metrics = list(dict.fromkeys(k for p in pubs for k in p.metrics))
            our_protocol = {"picks": "ours: same temporal split and definitions",
                            "next_basket": "ours: the same protocol on all qualifying members",
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


def validation_section(cfg: ReportConfig, results: dict[str, RowResult], validation: dict[str, RowResult],
                       k: int, n: int) -> list[str]:
    """The rows fitted on the validation window beside their test-window figures."""
    if not validation or cfg.validation is None:
        return []
    v = cfg.validation
    lines = [f"## The same rows on the validation window (train before {v.cutoff}, test [{v.cutoff}, {v.end}))", "",
             "Sweeps tune on this window and never see the test window. Whatever in the default model was chosen "
             "by hand while looking at the test window has to hold here too: a gain that appears only in the test "
             "columns is a choice fitted to the test window.", ""]
    header = ["model", f"Recall@{k} validation", f"Recall@{k} test", f"NDCG@{k} validation", f"NDCG@{k} test",
              f"known products: lift vs most-active@{n}, validation", "test",
              f"never-sold: lift vs most-active@{n}, validation", "test"]
    rows = []
    for label, val in validation.items():
        test = results.get(label)
        tm = test.metrics if test is not None else {}
        rows.append([_name(val), _f(val.metrics.get(f"recall@{k}")), _f(tm.get(f"recall@{k}")),
                     _f(val.metrics.get(f"ndcg@{k}")), _f(tm.get(f"ndcg@{k}")),
                     *(_f(m.get(f"audience_{g}_lift_most_active@{n}"), 2) for g in ("known", "new")
                       for m in (val.metrics, tm))])
    lines += [_md_table(header, rows), ""]
    any_val = next(iter(validation.values()))
    lines += [f"Validation window: {int(any_val.metrics.get('n_queries', 0)):,} members with a purchase in it; "
              f"{_count(any_val.metrics.get('audience_known_n_products'), 'sold product')} and "
              f"{_count(any_val.metrics.get('audience_new_n_products'), 'never-sold product')} with enough buyers "
              "to be scored.", ""]
    return lines


def _count(n: float | None, noun: str) -> str:
    n = int(n or 0)
    return f"{n:,} {noun}{'' if n == 1 else 's'}"


def _short(metric: str) -> str:
    return (metric.replace("audience_known_", "").replace("audience_new_", "").replace("nbr_", "")
            .replace("recall", "R").replace("ndcg", "NDCG"))


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
