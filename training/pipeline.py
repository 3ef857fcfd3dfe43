"""``recsys train``: fit a model on a temporal split, evaluate it in both directions (and on the
next-basket protocol), log everything to MLflow, register it and gate the champion alias."""

from __future__ import annotations

import contextlib
import json
import multiprocessing
import os
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa
from rich.console import Console
from rich.table import Table

from recsys.ann import build_indexes, model_vectors
from recsys.bundle import Bundle, save_bundle
from recsys.columns import Col
from recsys.models import get_model
from recsys.models.base import Capability, ModelParams, Recommender
from recsys.precompute import DEFAULT_N, PreRanked, pre_rank
from training.config import TrainConfig
from training.data import DataPaths, load_split, snapshot_tags
from training.evaluate import evaluate_audiences, evaluate_picks
from training.progress import Reporter

# beside every tag of the snapshot (recsys.tags), the bundle's member and product tables carry these
BUNDLE_MEMBER_COLUMNS = ("recency_days", "frequency", "monetary", "last_purchase", "top_categories")
BUNDLE_PRODUCT_COLUMNS = ("category", "price", "brand", "name")
SUMMARY_KEYS = (
    "recall@10", "ndcg@10", "recall@20", "repeat_recall@10", "new_recall@10", "coverage@10",
    "audience_known_recall@1000", "audience_known_lift_most_active@1000",
    "audience_new_recall@1000", "audience_new_lift_most_active@1000",
    "nbr_recall@10", "nbr_ndcg@10", "nbr_hit_rate@10",
)


@dataclass
class TrainResult:
    model: Recommender
    metrics: dict[str, float]
    timings: dict[str, float]
    members: Any = None  # the model's member / product id maps, for the bundle
    products: Any = None
    run_id: str | None = None
    version: str | None = None
    alias: str | None = None
    bundle_dir: Path | None = None
    report: dict[str, Any] = field(default_factory=dict)
    pre_ranked: PreRanked | None = None  # every member's pick lists, for the bundle


class ChildRun:
    """A function run in a fresh interpreter (spawn: forking after OpenMP has started can hang the
    child). Daemonic, so a run that stops early (an unreachable tracking server, Ctrl-C) never
    waits for it; :meth:`result` returns its value or raises its exception."""

    def __init__(self, fn: Any, *args: Any):
        ctx = multiprocessing.get_context("spawn")
        self._conn, child_end = ctx.Pipe(duplex=False)
        self._proc = ctx.Process(target=_child_main, args=(fn, args, child_end), daemon=True)
        self._proc.start()
        child_end.close()

    def result(self) -> Any:
        try:
            ok, value = self._conn.recv()
        except EOFError:
            self._proc.join()
            raise RuntimeError(f"the background process died (exit code {self._proc.exitcode})") from None
        self._proc.join()
        if not ok:
            raise value
        return value


def _child_main(fn: Any, args: tuple[Any, ...], conn: Any) -> None:
    try:
        conn.send((True, fn(*args)))
    except BaseException as exc:  # handed to the parent, which raises it
        conn.send((False, exc))


def start_next_basket(cfg: TrainConfig) -> ChildRun | None:
    """The next-basket protocol started in a second process, when the config asks for it there
    (it loads and fits on its own data, so it runs while this process does the rest)."""
    if not (cfg.evaluation.next_basket and cfg.evaluation.next_basket_process):
        return None
    return ChildRun(next_basket_run, cfg.model_dump(mode="json"))


def fit_and_evaluate(
    cfg: TrainConfig, console: Console | None = None, on_iteration: Any = None, rank_all: bool = False,
    nbr_job: ChildRun | None = None, lists_dir: Path | None = None,
) -> TrainResult:
    """The modelling part of a run, without MLflow: load, fit, evaluate.

    ``rank_all``: also rank every member's pick lists (:func:`recsys.precompute.pre_rank`, which
    the serving bundle carries) and read the evaluated members' picks from them, rather than
    ranking those members twice. ``nbr_job``: the next-basket protocol already started by
    :func:`start_next_basket` (else it is started here).

    ``lists_dir``: where the ranked lists are written as they are ranked (read back memory-mapped;
    the folder must outlive the result); default: in memory.

    ``timings``: ``evaluate_s`` is the wall time from the fitted model to every metric of the
    split (pre-ranking included when asked); the parts, which overlap, have their own keys."""
    console = console or Console(stderr=True)
    with Reporter(console) as progress:
        return _fit_and_evaluate(cfg, progress, on_iteration, rank_all, nbr_job, lists_dir)


def _fit_and_evaluate(
    cfg: TrainConfig, progress: Reporter, on_iteration: Any, rank_all: bool, nbr_job: ChildRun | None,
    lists_dir: Path | None,
) -> TrainResult:
    timings: dict[str, float] = {}
    paths = DataPaths(cfg.data.canonical, cfg.data.features)
    ev = cfg.evaluation
    if nbr_job is None:
        nbr_job = start_next_basket(cfg)
    t0 = time.perf_counter()
    with progress.stage("loading the split"):
        data, split = load_split(paths, cfg.data.cutoff, cfg.data.test_end)
    timings["load_s"] = time.perf_counter() - t0
    params = cfg.model_params()
    model = get_model(cfg.model.name)(params)
    if on_iteration is not None and model.has(Capability.ITERATIONS):
        model.watch_iterations(on_iteration)
    start_spark(cfg)
    t0 = time.perf_counter()
    with progress.stage(f"fitting {cfg.model.name} on {data.n_members:,} members x {data.n_products:,} products "
                        f"({len(data.interactions.member):,} purchase occasions)"):
        model.fit(data)
    timings["fit_s"] = time.perf_counter() - t0

    truth, seen = split.truth(), split.seen()
    # the most active members (purchase occasions), most active first, ties by index
    activity = np.bincount(data.interactions.member, minlength=data.n_members)
    reference = np.lexsort((np.arange(data.n_members), -activity))

    def timed(key: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        t = time.perf_counter()
        out = fn(*args, **kwargs)
        timings[key] = time.perf_counter() - t
        return out

    # Ranking every member's lists and evaluating audiences read the fitted model and nothing
    # else, and both spend their time in NumPy / SciPy / LightGBM calls that release the GIL. Each
    # ranks its batches on one thread per core: the two share the cores while both run, and
    # whichever ends last keeps every core busy (at 1M members the evaluation ran ~200 s past the
    # lists on one thread, the other core idle).
    t0 = time.perf_counter()
    def staged(key: str, name: str, total: int | None, unit: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        with progress.stage(name, total=total, unit=unit) as update:  # in the thread that does the work
            return timed(key, fn, *args, progress=update, **kwargs)

    max_products = None if ev.audience_max_pairs is None else max(100, ev.audience_max_pairs // max(data.n_members, 1))
    with ThreadPoolExecutor(2 if rank_all else 1) as pool:
        ranked = pool.submit(staged, "pre_rank_s", f"ranking every member's top {DEFAULT_N} picks", data.n_members,
                             "members", pre_rank, model, out=lists_dir) if rank_all else None
        audiences = pool.submit(
            staged, "evaluate_audiences_s", "evaluating audiences", None, "products", evaluate_audiences, model,
            truth, seen, sizes=tuple(ev.audience_sizes), min_buyers_known=ev.min_buyers_known,
            min_buyers_new=ev.min_buyers_new, reference=reference, max_products=max_products, catalogue=data,
            workers=os.cpu_count() or 1,
        )
        lists = ranked.result() if ranked is not None else None
        with progress.stage("evaluating picks"):
            metrics = timed("evaluate_picks_s", evaluate_picks, model, truth, seen, ks=tuple(ev.ks), pre_ranked=lists)
        metrics.update(audiences.result())
    for group in ("known", "new"):
        eligible, scored = metrics.get(f"audience_{group}_n_products"), metrics.get(f"audience_{group}_n_scored")
        if eligible is not None and scored is not None and scored < eligible:
            progress.log(f"audiences of {group} products evaluated on a random sample of {scored:,.0f} of the "
                          f"{eligible:,.0f} eligible (evaluation.audience_max_pairs = {ev.audience_max_pairs:,} "
                          f"member x product scores)")
    timings["evaluate_s"] = time.perf_counter() - t0  # wall time of the three together
    if ev.next_basket:
        t0 = time.perf_counter()
        with progress.stage("next-basket protocol (its own process, started with the run)"):
            nbr_metrics, timings["next_basket_s"] = (
                nbr_job.result() if nbr_job is not None else next_basket_run(cfg.model_dump(mode="json"))
            )
        metrics.update(nbr_metrics)
        timings["next_basket_wait_s"] = time.perf_counter() - t0
    report = {"config": cfg.model_dump(mode="json"), "metrics": metrics, "timings": timings,
              "train": {"members": data.n_members, "products": data.n_products,
                        "occasions": int(len(data.interactions.member))}}
    return TrainResult(model, metrics, timings, members=data.interactions.members,
                       products=data.interactions.products, report=report, pre_ranked=lists)


def protocol_params(params: ModelParams, *, last_basket: bool, audiences: bool) -> ModelParams:
    """A model's params as a protocol needs them: a model that learns from a label window learns
    from each member's last basket on the next-basket protocol, and a model that can leave its
    audience part out does where no audience is scored."""
    fields = type(params).model_fields
    update: dict[str, Any] = {}
    if last_basket and "label_mode" in fields:
        update["label_mode"] = "last_basket"
    if not audiences and "audiences" in fields:
        update["audiences"] = False
    return params.model_copy(update=update)


def start_spark(cfg: TrainConfig) -> None:
    """The Spark session of a config with a ``[spark]`` table, started before the fit so that a
    Spark model (``spark_als``) trains there; without one a Spark model starts its own from the
    environment (``RECSYS_SPARK_MASTER``, else ``local[*]``)."""
    if cfg.spark is not None:
        from recsys.spark.session import SparkSettings, get_spark

        get_spark(SparkSettings(master=cfg.spark.master, conf=cfg.spark.conf, app_name="recsys train"))


def engine_params(summary: dict[str, Any] | None) -> dict[str, Any]:
    """What a run records about where it trained: ``engine`` (``spark`` for a Spark model, else
    ``local``) and, for Spark, its version, master and every ``spark.*`` setting."""
    if not summary or summary.get("engine") != "spark":
        return {"engine": "local"}
    return {"engine": "spark", "spark": {"version": summary.get("spark_version"), "master": summary.get("master"),
                                         "conf": dict(summary.get("conf", {}))}}


def next_basket_run(cfg_json: dict[str, Any]) -> tuple[dict[str, float], float]:
    """Fit the configured model on the next-basket protocol's data and evaluate it: the
    ``nbr_``-prefixed metrics and the seconds it took. Takes plain JSON so that it can run in
    another process."""
    from training.next_basket import evaluate_next_basket, load_next_basket

    t0 = time.perf_counter()
    cfg = TrainConfig.model_validate(cfg_json)
    paths = DataPaths(cfg.data.canonical, cfg.data.features)
    nbr = load_next_basket(paths.transactions, paths.canonical / "products.parquet")
    params = protocol_params(cfg.model_params(), last_basket=True, audiences=False)
    start_spark(cfg)
    model = get_model(cfg.model.name)(params).fit(nbr.train)
    metrics = evaluate_next_basket(model, nbr, tuple(cfg.evaluation.ks))
    return {f"nbr_{k}": v for k, v in metrics.items()}, time.perf_counter() - t0


def build_bundle(cfg: TrainConfig, result: TrainResult, out: Path, run_id: str | None) -> Path:
    """The serving bundle: the model + the snapshot's tags (registry and columns) and product
    metadata in index order."""
    con = duckdb.connect()
    tags = snapshot_tags(cfg.data.features)
    mem = _aligned(con, cfg.data.features / "members.parquet", Col.MEMBER, result.members,
                   (*tags.names("member"), *BUNDLE_MEMBER_COLUMNS))
    prod = _aligned(con, cfg.data.features / "products.parquet", Col.PRODUCT, result.products,
                    (*BUNDLE_PRODUCT_COLUMNS, *tags.names("product")))
    prod = prod.append_column("active", pa.array(np.ones(prod.num_rows, dtype=bool)))
    meta = {
        "run_id": run_id, "as_of": cfg.data.cutoff.isoformat(), "trained_on": cfg.data.cutoff.isoformat(),
        "dataset": cfg.data.dataset, "config": cfg.model_dump(mode="json"),
        "metrics": {k: result.metrics.get(k) for k in SUMMARY_KEYS if k in result.metrics},
        "features_manifest": json.loads((cfg.data.features / "manifest.json").read_text()),
    }
    # every member's top-100 picks per mode (served from the bundle)
    lists = result.pre_ranked if result.pre_ranked is not None else pre_rank(result.model)
    # a vector model's approximate indexes (above cfg.index's thresholds), built once here
    vectors = model_vectors(result.model)
    indexes = build_indexes(*vectors, cfg.index) if vectors is not None else {}
    return save_bundle(out, Bundle(result.model, result.members, result.products, mem, prod, meta,
                                   pre_ranked=lists, tags=tags.only([*mem.column_names, *prod.column_names]),
                                   indexes=indexes))


def _aligned(con: duckdb.DuckDBPyConnection, table: Path, key: str, ids: Any, wanted: tuple[str, ...]) -> pa.Table:
    cols = {r[0] for r in con.execute(f"DESCRIBE SELECT * FROM read_parquet('{table}')").fetchall()}
    sel = [c for c in wanted if c in cols]
    con.register("ids", pa.table({key: pa.array(ids.external_ids.tolist(), pa.string()),
                                  "_pos": pa.array(np.arange(len(ids)))}))
    q = "".join(f", t.\"{c}\"" for c in sel)
    return con.execute(
        f"SELECT ids.{key}{q} FROM ids LEFT JOIN read_parquet('{table}') t USING ({key}) ORDER BY ids._pos"
    ).to_arrow_table()


def run_training(cfg: TrainConfig, config_path: Path | None = None, tracking_uri: str | None = None,
                 console: Console | None = None) -> TrainResult:
    """Fit, evaluate, log to MLflow, register and gate the champion alias."""
    t_all = time.perf_counter()
    # first, so that the second process runs while this one sets up MLflow
    nbr_job = start_next_basket(cfg)
    from training.tracking import Tracker, gate_champion, log_bundle_model

    console = console or Console(stderr=True)
    with contextlib.ExitStack() as stack, \
            Tracker(cfg.mlflow.experiment, run_name=cfg.model.name, tracking_uri=tracking_uri) as tracker:
        tracker.log_params({"config": cfg.model_dump(mode="json"), "model_params": cfg.model_params().model_dump(mode="json")})
        if config_path is not None:
            tracker.log_file(config_path)
        tracker.log_file(cfg.data.features / "manifest.json", artifact_path="features")

        def on_iteration(it: int, seconds: float, loss: float) -> None:
            tracker.log_iteration("train_loss", it, loss)
            tracker.log_iteration("train_seconds", it, seconds)

        # every member's lists go to disk as they are ranked (members x 100 x 2 modes entries:
        # 1.6 GB in memory at a million members), read back memory-mapped, then into the bundle
        lists_tmp = tempfile.TemporaryDirectory(prefix="recsys-lists-")
        stack.callback(lists_tmp.cleanup)
        result = fit_and_evaluate(cfg, console, on_iteration, rank_all=True, nbr_job=nbr_job,
                                  lists_dir=Path(lists_tmp.name))
        result.run_id = tracker.run_id
        tracker.log_metrics(result.metrics)
        tracker.log_metrics(result.timings)
        summary = result.model.training_summary
        engine = engine_params(summary)
        tracker.log_params(engine)
        tracker.set_tags({"engine": engine["engine"]})
        if summary:
            tracker.log_dict(summary, "training_summary.json")
        tracker.log_dict(result.report, "evaluation/report.json")
        for name, fig in _plots(result.metrics, cfg).items():
            tracker.log_figure(fig, f"evaluation/{name}.png")
        with tempfile.TemporaryDirectory() as tmp:
            bundle_dir = build_bundle(cfg, result, Path(tmp) / "bundle", tracker.run_id)
            if cfg.mlflow.register:
                with Reporter(console) as progress, progress.stage("registering the model"):
                    mv = log_bundle_model(tracker, bundle_dir, cfg.mlflow.registered_model)
                result.version = str(mv.version)
                primary = result.metrics.get(cfg.evaluation.primary_metric, float("nan"))
                result.alias = gate_champion(
                    cfg.mlflow.registered_model, mv.version, cfg.evaluation.primary_metric, primary,
                    tracking_uri=tracking_uri,
                )
    result.timings["total_s"] = time.perf_counter() - t_all
    return result


def _plots(metrics: dict[str, float], cfg: TrainConfig) -> dict[str, Any]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figs: dict[str, Any] = {}
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for group, label in (("", "all"), ("repeat_", "repeat"), ("new_", "new to member")):
        ks = [k for k in cfg.evaluation.ks if f"{group}recall@{k}" in metrics]
        ax.plot(ks, [metrics[f"{group}recall@{k}"] for k in ks], marker="o", label=label)
    ax.set_xlabel("k")
    ax.set_ylabel("recall@k")
    ax.set_title("person -> product")
    ax.legend()
    figs["picks_recall_vs_k"] = fig
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for group in ("known", "new"):
        sizes = [n for n in cfg.evaluation.audience_sizes if f"audience_{group}_recall@{n}" in metrics]
        ax.plot(sizes, [metrics[f"audience_{group}_recall@{n}"] for n in sizes], marker="o", label=f"{group} products")
    ax.set_xscale("log")
    ax.set_xlabel("audience size N")
    ax.set_ylabel("recall@N")
    ax.set_title("product -> person")
    ax.legend()
    figs["audience_recall_vs_size"] = fig
    return figs


def summary_table(result: TrainResult, title: str = "training run") -> Table:
    table = Table(title=title)
    table.add_column("metric")
    table.add_column("value", justify="right")
    for k in SUMMARY_KEYS:
        if k in result.metrics:
            table.add_row(k, f"{result.metrics[k]:.4f}")
    for k, v in result.timings.items():
        table.add_row(k, f"{v:.1f}")
    if result.version:
        table.add_row("registered version", f"{result.version} ({result.alias})")
    return table
