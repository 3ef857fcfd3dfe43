"""Member and product features as of a date, computed in DuckDB from the canonical Parquet tables.

The feature definitions are the SQL files in ``features/sql``; this module only wires them up:
it checks the inputs, substitutes the as-of date and the thresholds of :class:`FeatureConfig`
into the SQL, runs it out of core, and writes a snapshot folder::

    members.parquet                one row per member (tags, RFM, price sensitivity, ...)
    products.parquet               one row per product (price band, sales, newness, ...)
    category_price_bands.parquet   the per-category unit-price thresholds used by both
    manifest.json                  as-of date, row counts, input hashes, code version, config

The manifest is written last: a folder without one is an interrupted build.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import subprocess
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from string import Template
from typing import Any

import duckdb
from rich.console import Console
from rich.table import Table

from features.config import TAG_LABELS, FeatureConfig
from recsys.columns import Col
from recsys.data.fetch import sha256sum
from recsys.errors import InputError

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
        (file name -> sha256), ``code_version``, ``config``, ``stats`` and ``warnings``.

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

        con = duckdb.connect()
        try:
            members = _sql_path(self.members_path)
            products = _sql_path(self.products_path)
            for column, top in (
                ("value_segment", None), ("lifecycle", None), ("price_sensitivity", None),
                ("age_group", 6), ("region", 6), ("preferred_channel", 6),
            ):
                console.print(_distribution(con, members, "members", column, top))
            for column in ("price_band", "is_new", "never_sold"):
                console.print(_distribution(con, products, "products", column, None))
        finally:
            con.close()


def build_features(
    canonical_dir: Path,
    out_dir: Path,
    as_of: date,
    cfg: FeatureConfig,
    *,
    memory_limit: str = "10GB",
    threads: int | None = None,
    temp_dir: Path | None = None,
) -> FeatureSnapshot:
    """Compute member and product features from purchases strictly before ``as_of``.

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

    Returns
    -------
    FeatureSnapshot
        Conditions worth a look (no purchase before ``as_of``; buyers or sold products missing
        from their tables) are listed in ``manifest["warnings"]`` and printed by
        :meth:`FeatureSnapshot.print_summary`.

    Raises
    ------
    InputError
        A canonical file is missing, unreadable, or lacks a contract column.

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

    params = _sql_params(as_of, cfg)
    with ThreadPoolExecutor(max_workers=1) as pool, tempfile.TemporaryDirectory(
        prefix="recsys-features-", dir=temp_dir
    ) as spill:
        # Hashing GB-sized inputs overlaps with the SQL work instead of adding to it.
        hashes = pool.submit(lambda: {name: sha256sum(path) for name, path in inputs.items()})
        con = _connect(memory_limit, threads or os.cpu_count() or 1, Path(spill))
        try:
            row_counts, stats, warnings = _run(con, inputs, out_dir, params, as_of)
        finally:
            con.close()
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
    con: duckdb.DuckDBPyConnection,
    inputs: dict[str, Path],
    out_dir: Path,
    params: dict[str, str],
    as_of: date,
) -> tuple[dict[str, int], dict[str, int], list[str]]:
    for view, file in (
        ("transactions", "transactions.parquet"),
        ("products", "products.parquet"),
        ("members", "members.parquet"),
    ):
        con.execute(f"CREATE TEMP VIEW {view} AS SELECT * FROM read_parquet({_sql_path(inputs[file])})")
    con.execute(f"CREATE TEMP VIEW lines AS {_render('lines.sql', params)}")
    # Materialised: small (one row per category), and read by both members and products.
    con.execute(
        f"CREATE TEMP TABLE category_price_bands AS {_render('category_price_bands.sql', params)}"
    )

    row_counts: dict[str, int] = {}
    for table, sql, order in (
        ("members", _render("member_features.sql", params), Col.MEMBER),
        ("products", _render("product_features.sql", params), Col.PRODUCT),
        ("category_price_bands", "SELECT * FROM category_price_bands", Col.CATEGORY),
    ):
        target = out_dir / OUTPUT_FILES[table]
        # Sorted output makes snapshots of unchanged data byte-comparable and diffs readable.
        (n,) = con.execute(
            f"COPY (SELECT * FROM ({sql}) AS f ORDER BY {order}) TO {_sql_path(target)} "
            "(FORMAT parquet, COMPRESSION zstd)"
        ).fetchone() or (0,)
        row_counts[table] = int(n)

    (lines_used, buyers) = con.execute(
        f"SELECT COALESCE(SUM(n_lines), 0), COUNT(*) FILTER (WHERE n_lines > 0) "
        f"FROM read_parquet({_sql_path(out_dir / MEMBERS_FILE)})"
    ).fetchone() or (0, 0)
    stats = {"lines_before_as_of": int(lines_used), "members_with_purchase": int(buyers)}

    warnings: list[str] = []
    if lines_used == 0:
        first = con.execute("SELECT MIN(ts) FROM transactions").fetchone()
        first_day = first[0].date().isoformat() if first and first[0] is not None else None
        warnings.append(
            f"no purchase before {as_of.isoformat()}"
            + (f" (the data starts on {first_day})" if first_day else " (no transactions at all)")
            + ": every member is a prospect and every product is never sold"
        )
    for table, key in (("members", Col.MEMBER), ("products", Col.PRODUCT)):
        (orphans,) = con.execute(
            f"SELECT COUNT(*) FROM read_parquet({_sql_path(out_dir / OUTPUT_FILES[table])}) AS f "
            f"ANTI JOIN {table} AS t ON t.{key} = f.{key}"
        ).fetchone() or (0,)
        if orphans:
            warnings.append(
                f"{orphans:,} {table} bought before {as_of.isoformat()} are missing from "
                f"{table}.parquet; they got rows with empty attributes"
            )
    return row_counts, stats, warnings


def _sql_params(as_of: date, cfg: FeatureConfig) -> dict[str, str]:
    """SQL literals for the ``${name}`` placeholders of the feature definitions.

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


def _distribution(
    con: duckdb.DuckDBPyConnection, parquet: str, entity: str, column: str, top: int | None
) -> Table:
    rows = con.execute(
        f"SELECT CAST({column} AS VARCHAR) AS v, COUNT(*) AS n FROM read_parquet({parquet}) "
        "GROUP BY v ORDER BY n DESC, v"
    ).fetchall()
    total = sum(n for _, n in rows) or 1
    if top is not None and len(rows) > top:
        rest = sum(n for _, n in rows[top:])
        rows = rows[:top] + [(f"(other {len(rows) - top})", rest)]
    labels = TAG_LABELS.get(column, {})
    table = Table(title=f"{entity} by {column}", title_justify="left")
    table.add_column(column)
    if labels:
        table.add_column("标签")
    table.add_column(entity, justify="right")
    table.add_column("share", justify="right")
    for value, n in rows:
        shown = "(missing)" if value is None else str(value)
        cells = [shown] + ([labels.get(str(value).lower(), "")] if labels else [])
        table.add_row(*cells, f"{n:,}", f"{n / total:.1%}")
    return table
