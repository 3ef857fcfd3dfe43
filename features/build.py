"""Member and product features as of a date, computed in DuckDB from the canonical Parquet tables.

The feature definitions are the SQL files in ``features/sql``; this module only wires them up:
it checks the inputs, substitutes the as-of date and the thresholds of :class:`FeatureConfig`
into the SQL, runs it out of core, and writes a snapshot folder::

    members.parquet                one row per member (RFM aggregates, ... and every member tag)
    products.parquet               one row per product (sales, price, ... and every product tag)
    category_price_bands.parquet   the per-category unit-price thresholds used by both
    manifest.json                  as-of date, row counts, input hashes, code version, config,
                                   and the tag registry: each tag's definition (SQL as run), the
                                   values it took and how many members / products hold each

The tags are those of a :class:`~recsys.tags.TagRegistry` (the built-in ones by default): each
is a SQL expression or query (see :mod:`recsys.tags`) composed onto the member / product base
rows of ``member_features.sql`` / ``product_features.sql`` by :func:`tagged_sql`.

The manifest is written last: a folder without one is an interrupted build.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import subprocess
import tempfile
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from string import Template
from typing import TYPE_CHECKING, Any, Literal

import duckdb
from rich.console import Console
from rich.table import Table

from features.config import FeatureConfig
from recsys.columns import Col
from recsys.data.fetch import sha256sum
from recsys.errors import InputError
from recsys.tags import TagDef, TagRegistry, with_seen_values

if TYPE_CHECKING:
    from features.engine import DuckDBEngine, SparkEngine
    from recsys.spark.session import SparkSettings

    Engine = DuckDBEngine | SparkEngine

# The canonical tables this step reads, with the columns it relies on (the ingest contract).
INPUT_COLUMNS: dict[str, tuple[str, ...]] = {
    "transactions.parquet": (
        Col.MEMBER, Col.PRODUCT, Col.TS, Col.QUANTITY, Col.AMOUNT, Col.UNIT_PRICE, Col.COST,
        Col.CHANNEL, Col.STORE, Col.BASKET,
    ),
    "products.parquet": (Col.PRODUCT, Col.CATEGORY, Col.PRICE, Col.BRAND, Col.NAME, Col.LAUNCHED_AT),
    "members.parquet": (Col.MEMBER, Col.JOINED_AT, Col.AGE_GROUP, Col.REGION),
}

MEMBERS_FILE = "members.parquet"
PRODUCTS_FILE = "products.parquet"
BANDS_FILE = "category_price_bands.parquet"
MANIFEST_FILE = "manifest.json"
OUTPUT_FILES = {"members": MEMBERS_FILE, "products": PRODUCTS_FILE, "category_price_bands": BANDS_FILE}

SQL_DIR = Path(__file__).resolve().parent / "sql"
# how many values of an open tag (regions, stores) the summary prints
SUMMARY_TOP = 6


@dataclass
class FeatureSnapshot:
    """A written feature snapshot: its folder and its manifest.

    Attributes
    ----------
    out_dir
        The snapshot folder (``members.parquet``, ``products.parquet``,
        ``category_price_bands.parquet``, ``manifest.json``).
    manifest
        The parsed ``manifest.json``: ``as_of``, ``created_at``, ``row_counts``, ``inputs``
        (file name -> sha256), ``code_version``, ``config``, ``stats``, ``warnings`` and
        ``tags`` (the registry as built, each entry with ``counts`` per value and ``missing``).

    Examples
    --------
    >>> snap = FeatureSnapshot.load(Path("data/tafeng/features/2001-02-01"))  # doctest: +SKIP
    >>> snap.as_of, snap.manifest["row_counts"]["members"]  # doctest: +SKIP
    (datetime.date(2001, 2, 1), 32266)
    """

    out_dir: Path
    manifest: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def load(cls, out_dir: Path) -> FeatureSnapshot:
        """Open a snapshot written by :func:`build_features`.

        Raises
        ------
        InputError
            The folder has no ``manifest.json`` (never built, or the build was interrupted).
        """
        out_dir = Path(out_dir)
        path = out_dir / MANIFEST_FILE
        if not path.is_file():
            raise InputError(
                f"no feature snapshot at {out_dir} (missing {MANIFEST_FILE}); run `recsys features build` first"
            )
        return cls(out_dir=out_dir, manifest=json.loads(path.read_text(encoding="utf-8")))

    @property
    def as_of(self) -> date:
        return date.fromisoformat(self.manifest["as_of"])

    @property
    def members_path(self) -> Path:
        return self.out_dir / MEMBERS_FILE

    @property
    def products_path(self) -> Path:
        return self.out_dir / PRODUCTS_FILE

    @property
    def category_price_bands_path(self) -> Path:
        return self.out_dir / BANDS_FILE

    @property
    def tags(self) -> TagRegistry:
        """The snapshot's tags: definitions as built and the values seen. A snapshot written
        before tags were recorded gets the built-in tags whose columns it has, values read back."""
        if "tags" in self.manifest:
            return TagRegistry.from_json(self.manifest["tags"], f"{self.out_dir / MANIFEST_FILE}: tags")
        return _registry_of_old_snapshot(self)

    def tag_counts(self, name: str) -> tuple[dict[str, int], int]:
        """Members (or products) per value of tag ``name``, and how many hold none."""
        for entry in self.manifest.get("tags", []):
            if entry.get("name") == name:
                return dict(entry.get("counts", {})), int(entry.get("missing", 0))
        raise KeyError(name)

    def print_summary(self, console: Console) -> None:
        """Print row counts and how members and products spread over each tag.

        Parameters
        ----------
        console
            A rich console (the CLI's stdout console, or one recording to a string in tests).
        """
        console.print(f"[bold]features as of {self.manifest['as_of']}[/] -> {self.out_dir}", highlight=False)
        for warning in self.manifest.get("warnings", []):
            console.print(f"[bold yellow]warning:[/] {warning}", highlight=False, soft_wrap=True)
        counts = Table(title="rows", title_justify="left")
        counts.add_column("table")
        counts.add_column("rows", justify="right")
        for name, n in self.manifest["row_counts"].items():
            counts.add_row(name, f"{n:,}")
        stats = self.manifest.get("stats", {})
        if stats:
            counts.add_row("(lines before as-of)", f"{stats.get('lines_before_as_of', 0):,}")
            counts.add_row("(members with a purchase)", f"{stats.get('members_with_purchase', 0):,}")
        console.print(counts)
        for entry in self.manifest.get("tags", []):
            tag = TagDef.model_validate({k: v for k, v in entry.items() if k in TagDef.model_fields})
            console.print(_distribution(tag, entry.get("counts", {}), int(entry.get("missing", 0))))


def build_features(
    canonical_dir: Path,
    out_dir: Path,
    as_of: date,
    cfg: FeatureConfig,
    *,
    memory_limit: str = "10GB",
    threads: int | None = None,
    temp_dir: Path | None = None,
    tags: TagRegistry | None = None,
    engine: Literal["duckdb", "spark"] = "duckdb",
    spark: SparkSettings | None = None,
    checks: Sequence[tuple[str, str]] = (),
) -> FeatureSnapshot:
    """Compute member and product features and tags from purchases strictly before ``as_of``.

    Only transactions with ``ts < as_of`` (midnight) are read; a purchase on or after that day
    changes no feature. Every member of ``members.parquet`` and product of ``products.parquet``
    gets a row even without a purchase before ``as_of`` (lifecycle ``prospect`` / ``never_sold``).

    Parameters
    ----------
    canonical_dir
        Folder with ``transactions.parquet``, ``products.parquet`` and ``members.parquet`` as
        written by ``recsys data ingest``.
    out_dir
        Snapshot folder; created if needed, its previous snapshot files are replaced.
    as_of
        The first day that is *not* used.
    cfg
        Tag thresholds.
    memory_limit
        DuckDB memory limit; larger intermediate results spill to ``temp_dir``.
    threads
        DuckDB threads (default: all CPUs).
    temp_dir
        Parent folder of the spill directory (default: the system temporary folder).
    tags
        The tags to compute (default: :meth:`TagRegistry.builtin`); e.g. the built-in ones
        extended with a retailer's rule tags.
    engine
        ``duckdb`` (this machine) or ``spark``: the same SQL on Spark (through
        :func:`recsys.dialect.to_spark`), the same snapshot; ``memory_limit`` / ``threads`` are
        DuckDB's, Spark takes its settings from ``spark`` (:mod:`recsys.spark.session`).
    checks
        ``(warning, SQL count)`` pairs run over the build's views: the warning goes into the
        manifest when the count is 0 (e.g. a category a rule names that the data does not hold,
        :meth:`features.rules.RuleSet.checks`).

    Returns
    -------
    FeatureSnapshot
        Conditions worth a look (no purchase before ``as_of``; buyers or sold products missing
        from their tables; a rule tag that matches no member; a failed ``check``) are listed in ``manifest["warnings"]`` and printed by
        :meth:`FeatureSnapshot.print_summary`.

    Raises
    ------
    InputError
        A canonical file is missing, unreadable, or lacks a contract column; or a tag's SQL does
        not run (the message names the tag), gives a single-valued tag several values for one
        member, or produces a value a closed tag does not declare.

    Examples
    --------
    >>> snap = build_features(Path("data/tafeng/canonical"), Path("/tmp/feat"),
    ...                       date(2001, 2, 1), FeatureConfig())  # doctest: +SKIP
    >>> snap.manifest["row_counts"]  # doctest: +SKIP
    {'members': 32266, 'products': 23812, 'category_price_bands': 1975}
    """
    canonical_dir, out_dir = Path(canonical_dir), Path(out_dir)
    if isinstance(as_of, datetime):
        if as_of.time() != datetime.min.time():
            raise InputError(f"as_of must be a date, got the datetime {as_of.isoformat()}")
        as_of = as_of.date()
    inputs = _check_inputs(canonical_dir)

    out_dir.mkdir(parents=True, exist_ok=True)
    # A rebuild that fails half-way must not leave the old manifest vouching for new files.
    (out_dir / MANIFEST_FILE).unlink(missing_ok=True)

    registry = tags if tags is not None else TagRegistry.builtin()
    params = sql_params(as_of, cfg)
    with ThreadPoolExecutor(max_workers=1) as pool, tempfile.TemporaryDirectory(
        prefix="recsys-features-", dir=temp_dir
    ) as spill:
        # Hashing GB-sized inputs overlaps with the SQL work instead of adding to it.
        hashes = pool.submit(lambda: {name: sha256sum(path) for name, path in inputs.items()})
        if engine == "spark":
            from features.engine import SparkEngine
            from recsys.spark.session import spark_session

            with spark_session(spark) as session:
                eng = SparkEngine(session)
                try:
                    row_counts, stats, warnings, built_tags = _run(eng, inputs, out_dir, params, as_of, registry,
                                                                    checks)
                finally:
                    eng.close()
        elif engine == "duckdb":
            from features.engine import DuckDBEngine

            con = _connect(memory_limit, threads or os.cpu_count() or 1, Path(spill))
            try:
                row_counts, stats, warnings, built_tags = _run(
                    DuckDBEngine(con), inputs, out_dir, params, as_of, registry, checks)
            finally:
                con.close()
        else:
            raise InputError(f"engine must be duckdb or spark, not {engine!r}")
        input_hashes = hashes.result()

    manifest: dict[str, Any] = {
        "as_of": as_of.isoformat(),
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "row_counts": row_counts,
        "inputs": input_hashes,
        "code_version": code_version(),
        "config": cfg.model_dump(mode="json"),
        "stats": stats,
        "warnings": warnings,
        "tags": built_tags,
        "engine": engine,
    }
    tmp = out_dir / (MANIFEST_FILE + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp, out_dir / MANIFEST_FILE)
    return FeatureSnapshot(out_dir=out_dir, manifest=manifest)


def code_version() -> dict[str, str | bool | None]:
    """The installed package version and, when run from a git checkout, its commit.

    Returns
    -------
    dict
        ``{"package": "0.1.0", "git_commit": "<sha>" or None, "git_dirty": bool or None}``.
    """
    try:
        package = importlib.metadata.version("recsys")
    except importlib.metadata.PackageNotFoundError:
        import recsys

        package = recsys.__version__
    repo = Path(__file__).resolve().parent
    commit = _git(repo, "rev-parse", "HEAD")
    status = _git(repo, "status", "--porcelain") if commit else None
    return {"package": package, "git_commit": commit, "git_dirty": None if status is None else bool(status)}


def sql_text(name: str) -> str:
    """The text of one feature-definition file in ``features/sql`` (e.g. ``"lines.sql"``)."""
    return (SQL_DIR / name).read_text(encoding="utf-8")


# --------------------------------------------------------------------------------------------
# internals


def _check_inputs(canonical_dir: Path) -> dict[str, Path]:
    if not canonical_dir.is_dir():
        raise InputError(
            f"canonical tables folder {canonical_dir} not found; run `recsys data ingest` first"
        )
    paths = {name: canonical_dir / name for name in INPUT_COLUMNS}
    missing = [name for name, path in paths.items() if not path.is_file()]
    if missing:
        raise InputError(
            f"{canonical_dir} lacks {', '.join(missing)}; run `recsys data ingest` first"
        )
    con = duckdb.connect()
    try:
        types: dict[str, dict[str, str]] = {}
        for name, path in paths.items():
            try:
                described = con.execute(
                    f"DESCRIBE SELECT * FROM read_parquet({_sql_path(path)})"
                ).fetchall()
            except duckdb.Error as exc:
                first = str(exc).splitlines()[0]
                raise InputError(
                    f"cannot read {path} ({first}); run `recsys data ingest` again"
                ) from None
            types[name] = {row[0]: row[1] for row in described}
            absent = [c for c in INPUT_COLUMNS[name] if c not in types[name]]
            if absent:
                raise InputError(
                    f"{path} lacks column(s) {', '.join(absent)}; run `recsys data ingest` again"
                )
    finally:
        con.close()
    ts_type = types["transactions.parquet"][Col.TS]
    # A text ts would compare to the as-of literal as a string and silently drop or keep lines.
    if not (ts_type.startswith("TIMESTAMP") or ts_type == "DATE"):
        raise InputError(
            f"{paths['transactions.parquet']}: column ts is {ts_type}, expected TIMESTAMP; "
            "run `recsys data ingest` again"
        )
    return paths


def _connect(memory_limit: str, threads: int, spill_dir: Path) -> duckdb.DuckDBPyConnection:
    con = duckdb.connect(
        config={
            "memory_limit": memory_limit,
            "threads": threads,
            "temp_directory": str(spill_dir),
            # Output order comes from explicit ORDER BYs; not preserving scan order lets large
            # aggregations and the COPYs stream with less memory.
            "preserve_insertion_order": False,
        }
    )
    for statement in sql_text("duckdb_functions.sql").split(";\n"):
        if _strip_comments(statement):
            con.execute(statement)
    return con


def _run(
    eng: Engine,
    inputs: dict[str, Path],
    out_dir: Path,
    params: dict[str, str],
    as_of: date,
    registry: TagRegistry,
    checks: Sequence[tuple[str, str]] = (),
) -> tuple[dict[str, int], dict[str, int], list[str], list[dict[str, Any]]]:
    for view, file in (
        ("transactions", "transactions.parquet"),
        ("products", "products.parquet"),
        ("members", "members.parquet"),
    ):
        eng.view(view, f"SELECT * FROM {eng.parquet(inputs[file])}")
    eng.view("lines", _render("lines.sql", params), reused=True)
    # Materialised: small (one row per category), and read by both members and products.
    eng.table("category_price_bands", _render("category_price_bands.sql", params))
    eng.view("member_base", _render("member_features.sql", params))
    eng.view("product_base", _render("product_features.sql", params))

    row_counts: dict[str, int] = {}
    rendered: dict[str, list[TagDef]] = {}
    for table, entity, base, key in (
        ("members", "member", "member_base", Col.MEMBER),
        ("products", "product", "product_base", Col.PRODUCT),
    ):
        entity_tags = [render_tag(t, params) for t in registry.of(entity)]  # type: ignore[arg-type]
        columns = eng.columns(f"SELECT * FROM {base}")
        _check_tags(eng, entity_tags, base, key, columns)
        rendered[table] = entity_tags
        sql = tagged_sql(base, key, columns, entity_tags, quote=eng.quote)
        row_counts[table] = eng.copy(sql, key, out_dir / OUTPUT_FILES[table])
        _check_one_row_each(eng, entity_tags, key, out_dir / OUTPUT_FILES[table])
    row_counts["category_price_bands"] = eng.copy(
        "SELECT * FROM category_price_bands", Col.CATEGORY, out_dir / BANDS_FILE
    )
    built_tags = [
        _built_tag(out_dir / OUTPUT_FILES[table], tag)
        for table in ("members", "products") for tag in rendered[table]
    ]

    (lines_used, buyers) = (eng.fetchall(
        f"SELECT COALESCE(SUM(n_lines), 0), COUNT(*) FILTER (WHERE n_lines > 0) "
        f"FROM {eng.parquet(out_dir / MEMBERS_FILE)}"
    ) or [(0, 0)])[0]
    stats = {"lines_before_as_of": int(lines_used), "members_with_purchase": int(buyers)}

    warnings: list[str] = []
    if lines_used == 0:
        first = (eng.fetchall("SELECT MIN(ts) FROM transactions") or [None])[0]
        first_day = first[0].date().isoformat() if first and first[0] is not None else None
        warnings.append(
            f"no purchase before {as_of.isoformat()}"
            + (f" (the data starts on {first_day})" if first_day else " (no transactions at all)")
            + ": every member is a prospect and every product is never sold"
        )
    for table, key in (("members", Col.MEMBER), ("products", Col.PRODUCT)):
        (orphans,) = (eng.fetchall(
            f"SELECT COUNT(*) FROM {eng.parquet(out_dir / OUTPUT_FILES[table])} AS f "
            f"ANTI JOIN {table} AS t ON t.{key} = f.{key}"
        ) or [(0,)])[0]
        if orphans:
            warnings.append(
                f"{orphans:,} {table} bought before {as_of.isoformat()} are missing from "
                f"{table}.parquet; they got rows with empty attributes"
            )
    for entry in built_tags:  # a retailer's rule that selects nobody is worth saying, never an error
        if entry.get("kind") == "rule" and entry["entity"] == "member" and not entry["counts"].get("true", 0):
            warnings.append(f"rule tag {entry['name']!r} ({entry['source']}) matches no member as of "
                            f"{as_of.isoformat()}")
    for warning, sql in checks:
        (count,) = (eng.fetchall(Template(sql).substitute(params)) or [(0,)])[0]
        if not count:
            warnings.append(warning)
    return row_counts, stats, warnings, built_tags


# --------------------------------------------------------------------------------------------
# tags


def render_tag(tag: TagDef, params: dict[str, str]) -> TagDef:
    """``tag`` with its SQL's ``${name}`` placeholders replaced by the build's values."""
    field_name = "expr" if tag.expr is not None else "query"
    text = tag.expr if tag.expr is not None else tag.query
    assert text is not None
    try:
        sql = Template(text).substitute(params)
    except KeyError as exc:
        raise InputError(
            f"tag {tag.name!r} ({tag.source}): its SQL uses ${{{exc.args[0]}}}, which is not a feature "
            f"parameter; parameters: {', '.join(sorted(params))}"
        ) from None
    except ValueError as exc:  # a lone $ (write $$ for a literal one)
        raise InputError(f"tag {tag.name!r} ({tag.source}): {exc} in its SQL; write $$ for a literal $") from None
    return tag.model_copy(update={field_name: sql})


def quote_ident(name: str) -> str:
    """A tag name as a quoted SQL identifier (names are validated: no quote can occur). DuckDB
    quotes with double quotes; a Spark runner composing :func:`tagged_sql` passes backticks."""
    return f'"{name}"'


def tagged_sql(
    base: str, key: str, columns: list[str], tags: list[TagDef], quote: Any = quote_ident
) -> str:
    """One ``SELECT``: the public columns of the ``base`` view (names not starting with ``_``)
    followed by one column per tag, in registry order.

    * an ``expr`` tag is evaluated on the base row;
    * a single-valued ``query`` tag is joined on the key (``default`` where it gives no row or a
      NULL value; repeated identical rows are one);
    * a multi-valued ``query`` tag is joined as the sorted list of its distinct values (empty
      where it gives none).

    Flags (values ``true`` / ``false``) come out BOOLEAN, multi-valued tags as lists of text,
    every other tag as text. Written in the SQL DuckDB and Spark SQL share, plus the shims of
    ``duckdb_functions.sql`` (``ordered_list``, ``empty_text_list``).
    """
    selects = [f"b.{c}" for c in columns if not c.startswith("_")]
    joins = []
    for i, tag in enumerate(tags):
        cast = "BOOLEAN" if tag.is_flag else "STRING"
        if tag.expr is not None:
            value = f"CAST(({tag.expr}) AS {cast})"
        elif tag.multi:
            joins.append(
                f"LEFT JOIN (SELECT _k, ordered_list(_v, _v) AS _v FROM (SELECT DISTINCT {key} AS _k, "
                f"CAST(value AS STRING) AS _v FROM ({tag.query}) AS q WHERE value IS NOT NULL) AS d "
                f"GROUP BY _k) AS t{i} ON t{i}._k = b.{key}"
            )
            value = f"COALESCE(t{i}._v, empty_text_list())"
        else:
            joins.append(f"LEFT JOIN (SELECT DISTINCT {key} AS _k, value AS _v FROM ({tag.query}) AS q "
                         f"WHERE value IS NOT NULL) AS t{i} ON t{i}._k = b.{key}")
            value = f"CAST(t{i}._v AS {cast})"
            if tag.default is not None:
                default = tag.default.upper() if tag.is_flag else "'" + tag.default.replace("'", "''") + "'"
                value = f"COALESCE({value}, {default})"
        selects.append(f"{value} AS {quote(tag.name)}")
    return f"SELECT {', '.join(selects)} FROM {base} AS b" + "".join(f" {j}" for j in joins)


def _check_tags(
    eng: Engine, tags: list[TagDef], base: str, key: str, columns: list[str]
) -> None:
    """Each tag's SQL binds (errors name the tag) and its name is no base column."""
    public = {c for c in columns if not c.startswith("_")}
    for tag in tags:
        where = f"tag {tag.name!r} ({tag.source})"
        if tag.name in public:
            raise InputError(f"{where}: its name is a column of the {base} features; rename the tag")
        probe = (f"SELECT ({tag.expr}) AS value FROM {base}" if tag.expr is not None
                 else f"SELECT {key}, value FROM ({tag.query}) AS q")
        try:
            eng.columns(probe)
        except eng.errors as exc:
            first = str(exc).splitlines()[0]
            shape = "an expression over the base row" if tag.expr is not None else f"a SELECT of {key} and value"
            raise InputError(f"{where}: its SQL ({shape}) does not run: {first}") from None


def _check_one_row_each(
    eng: Engine, tags: list[TagDef], key: str, written: Path
) -> None:
    """After the output is written: one row per key, else name the single-valued query tag that
    gave a key several values (checked per tag only then, so a good build pays one cheap count)."""
    (extra,) = (eng.fetchall(
        f"SELECT COUNT(*) - COUNT(DISTINCT {key}) FROM {eng.parquet(written)}"
    ) or [(0,)])[0]
    if not extra:
        return
    for tag in tags:
        if tag.query is None or tag.multi:
            continue
        dup = eng.fetchall(
            f"SELECT {key} FROM ({tag.query}) AS q WHERE value IS NOT NULL GROUP BY {key} "
            f"HAVING COUNT(DISTINCT value) > 1 ORDER BY {key} LIMIT 3"
        )
        if dup:
            ids = ", ".join(repr(r[0]) for r in dup)
            raise InputError(
                f"tag {tag.name!r} ({tag.source}): its query gives several values for one "
                f"{key.removesuffix('_id')} (e.g. {ids}); declare it multi = true or give one row each"
            )
    raise InputError(f"{written.name}: {extra:,} repeated {key}(s) in the output; check the input tables")


def _built_tag(table: Path, tag: TagDef) -> dict[str, Any]:
    """The manifest entry of ``tag``: its definition with the values seen, ``counts`` per value
    and ``missing`` (rows without a value). Read from the written file, whichever engine wrote it."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    column = pq.read_table(table, columns=[tag.name]).column(tag.name).combine_chunks()
    if tag.multi:
        values = pc.value_counts(column.flatten())
        missing = int(pc.sum(pc.equal(pc.list_value_length(column), 0)).as_py() or 0)
    else:
        if column.type == "bool":
            column = pc.if_else(column, "true", "false")
        values = pc.value_counts(column.cast("string"))
        missing = int(column.null_count)
    rows = [(v["values"], int(v["counts"])) for v in values.to_pylist()]
    counts = {str(v): n for v, n in rows if v is not None and str(v) != ""}
    missing += sum(n for v, n in rows if v is not None and str(v) == "")
    built = with_seen_values(tag, counts)
    entry = built.model_dump(mode="json")
    entry["counts"] = {v: counts.get(v, 0) for v in built.value_names}
    entry["missing"] = int(missing)
    return entry


def _registry_of_old_snapshot(snap: FeatureSnapshot) -> TagRegistry:
    """The built-in tags a snapshot without a ``tags`` manifest entry has columns for."""
    con = duckdb.connect()
    try:
        out = []
        for entity, path in (("member", snap.members_path), ("product", snap.products_path)):
            cols = {r[0] for r in con.execute(f"DESCRIBE SELECT * FROM read_parquet({_sql_path(path)})").fetchall()}
            for tag in TagRegistry.builtin().of(entity):  # type: ignore[arg-type]
                if tag.name in cols:
                    entry = _built_tag(path, tag)
                    out.append(TagDef.model_validate({k: v for k, v in entry.items() if k in TagDef.model_fields}))
        return TagRegistry(tuple(out))
    finally:
        con.close()


def sql_params(as_of: date, cfg: FeatureConfig) -> dict[str, str]:
    """SQL literals for the ``${name}`` placeholders of the feature definitions and tags.

    Values are rendered from typed, validated config fields and a ``date``, never from user
    text, so substitution cannot inject SQL.
    """
    cutoff = as_of - timedelta(days=cfg.new_product_days)
    low, high = cfg.band_quantiles
    return {
        "as_of": f"DATE '{as_of.isoformat()}'",
        "as_of_ts": f"TIMESTAMP '{as_of.isoformat()} 00:00:00'",
        "new_product_cutoff": f"TIMESTAMP '{cutoff.isoformat()} 00:00:00'",
        "band_q_low": repr(float(low)),
        "band_q_high": repr(float(high)),
        "rfm_high_score": str(int(cfg.rfm_high_score)),
        "new_days": str(int(cfg.new_days)),
        "sleeping_days": str(int(cfg.sleeping_days)),
        "lost_days": str(int(cfg.lost_days)),
        "high_end_share": repr(float(cfg.high_end_share)),
        "price_sensitive_share": repr(float(cfg.price_sensitive_share)),
        "min_lines_for_price": str(int(cfg.min_lines_for_price)),
        "top_categories": str(int(cfg.top_categories)),
    }


def _render(name: str, params: dict[str, str]) -> str:
    # substitute (not safe_substitute): a placeholder without a value is a bug, fail loudly.
    return Template(sql_text(name)).substitute(params)


def _strip_comments(sql: str) -> str:
    return "\n".join(
        line for line in sql.splitlines() if line.strip() and not line.strip().startswith("--")
    )


def _sql_path(path: Path) -> str:
    return "'" + str(path).replace("'", "''") + "'"


def _git(repo: Path, *args: str) -> str | None:
    try:
        out = subprocess.run(
            ["git", "-C", str(repo), *args], capture_output=True, text=True, timeout=10, check=True
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip()


def _distribution(tag: TagDef, counts: dict[str, int], missing: int) -> Table:
    rows = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])) if tag.open else list(counts.items())
    if tag.open and len(rows) > SUMMARY_TOP:
        rest = sum(n for _, n in rows[SUMMARY_TOP:])
        rows = rows[:SUMMARY_TOP] + [(f"(other {len(rows) - SUMMARY_TOP})", rest)]
    entity = f"{tag.entity}s"
    total = (sum(counts.values()) + missing) if not tag.multi else None
    title = f"{entity} by {tag.name} {tag.zh}" + (" (several per member)" if tag.multi else "")
    table = Table(title=title, title_justify="left")
    table.add_column(tag.name)
    table.add_column("标签")
    table.add_column(entity, justify="right")
    if total:
        table.add_column("share", justify="right")
    if missing:
        rows.append(("(none)" if tag.multi else "(missing)", missing))
    for value, n in rows:
        zh = tag.label(value)[0] if not value.startswith("(") else ""
        cells = [value, zh if zh != value else "", f"{n:,}"]
        if total:
            cells.append(f"{n / total:.1%}")
        table.add_row(*cells)
    return table
