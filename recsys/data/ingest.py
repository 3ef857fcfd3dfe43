"""Ingest a retailer's export: validate every line, fold channel identities, write canonical tables.

Everything runs inside DuckDB so that a 50-million-line export fits in a bounded amount of RAM:
the database is in memory but capped by ``memory_limit`` and spills to ``OUT_DIR/.tmp``; the
deduplication is a ``GROUP BY`` and the final ordering an ``ORDER BY``, both of which DuckDB
spills to disk. No Python loop touches rows.

Pipeline for the transactions table:

1. read the mapped source columns as text (``all_varchar``), numbering rows by their line in
   the file (header = line 1, first data row = line 2);
2. trim ids (counted as the ``trimmed_id`` repair) and fold channel accounts into members
   through the identities table (``identity_folded``);
3. give each line exactly one status, checked in :data:`REJECT_REASONS` order;
4. keep the first of exact duplicates (same values in every mapped column after cleaning);
5. write ``transactions.parquet`` (sorted by ts, member_id), ``products.parquet``,
   ``members.parquet`` and ``validation_report.json``.

With ``strict=True`` nothing is written: the first bad row (lowest line number) raises
:class:`~recsys.errors.StrictValidationError`.
"""

from __future__ import annotations

import json
import os
import shutil
import time
import zipfile
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb
from rich.console import Console
from rich.table import Table

from recsys.columns import Col
from recsys.data.fetch import sha256sum
from recsys.data.mapping import MappingConfig, TableMapping
from recsys.errors import InputError, RecsysError, StrictValidationError
from recsys.schemas import TRANSACTIONS

# Rejection reasons for transaction lines, in the order they are checked: a line gets the first
# that applies, so the counts add up to rows_rejected.
REJECT_REASONS: tuple[str, ...] = (
    "missing_member_id",
    "missing_product_id",
    "unparseable_ts",
    "unparseable_quantity",
    "unparseable_amount",
    "non_positive_quantity",
    "non_positive_amount",
    "unknown_product",
    "duplicate",
)
# Repairs: the line is kept but a value was changed. unparseable_cost: cost set to NULL.
REPAIR_REASONS: tuple[str, ...] = ("trimmed_id", "identity_folded", "unparseable_cost")

# The canonical column each rejection (or strict-mode issue) points at.
_REASON_COLUMN: dict[str, str] = {
    "missing_member_id": Col.MEMBER,
    "missing_product_id": Col.PRODUCT,
    "unparseable_ts": Col.TS,
    "unparseable_quantity": Col.QUANTITY,
    "unparseable_amount": Col.AMOUNT,
    "non_positive_quantity": Col.QUANTITY,
    "non_positive_amount": Col.AMOUNT,
    "unknown_product": Col.PRODUCT,
    "unparseable_cost": Col.COST,
    # products / members / identities tables
    "duplicate_product_id": Col.PRODUCT,
    "bad_price": Col.PRICE,
    "missing_category": Col.CATEGORY,
    "bad_launched_at": Col.LAUNCHED_AT,
    "duplicate_member_id": Col.MEMBER,
    "bad_joined_at": Col.JOINED_AT,
    "missing_channel": Col.CHANNEL,
    "missing_external_id": Col.EXTERNAL_ID,
}

TRANSACTION_OUTPUT: dict[str, str] = {
    Col.MEMBER: "VARCHAR",
    Col.PRODUCT: "VARCHAR",
    Col.TS: "TIMESTAMP",
    Col.QUANTITY: "DOUBLE",
    Col.AMOUNT: "DOUBLE",
    Col.UNIT_PRICE: "DOUBLE",
    Col.COST: "DOUBLE",
    Col.CHANNEL: "VARCHAR",
    Col.STORE: "VARCHAR",
    Col.BASKET: "VARCHAR",
}
PRODUCT_OUTPUT: dict[str, str] = {
    Col.PRODUCT: "VARCHAR",
    Col.CATEGORY: "VARCHAR",
    Col.PRICE: "DOUBLE",
    Col.BRAND: "VARCHAR",
    Col.NAME: "VARCHAR",
    Col.LAUNCHED_AT: "TIMESTAMP",
}
MEMBER_OUTPUT: dict[str, str] = {
    Col.MEMBER: "VARCHAR",
    Col.JOINED_AT: "TIMESTAMP",
    Col.AGE_GROUP: "VARCHAR",
    Col.REGION: "VARCHAR",
}

UNKNOWN_CATEGORY = "unknown"
_TXN_IDS = (Col.MEMBER, Col.PRODUCT, Col.CHANNEL, Col.STORE, Col.BASKET)
_TXN_ATTRS = (Col.CATEGORY, Col.BRAND, Col.NAME, Col.AGE_GROUP, Col.REGION)
# Every cleaned transaction column: together they define an exact duplicate.
_TXN_KEY = (Col.MEMBER, Col.PRODUCT, Col.TS, Col.QUANTITY, Col.AMOUNT, Col.COST,
            Col.CHANNEL, Col.STORE, Col.BASKET, *_TXN_ATTRS)
# Whitespace stripped from text values; exports often carry NBSPs and BOMs inside fields.
_WS = " \t\r\n\u00a0\ufeff"
_MAX_MEMORY = 10 * 1024**3


@dataclass
class ValidationReport:
    """What an ingest read, kept, rejected and repaired; written as ``validation_report.json``.

    The top-level counts are about transaction lines; ``tables`` holds one section per table
    (transactions, products, members and, when given, identities).
    """

    dataset: str
    out_dir: str
    sources: list[dict[str, Any]]
    rows_in: int
    rows_kept: int
    rows_rejected: int
    rejected_by_reason: dict[str, int]
    repaired_by_reason: dict[str, int]
    tables: dict[str, dict[str, Any]] = field(default_factory=dict)
    outputs: dict[str, int] = field(default_factory=dict)
    created_at: str = ""
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        """The report as plain JSON-able data."""
        return asdict(self)

    def to_json(self, indent: int = 2) -> str:
        """The report as a JSON document."""
        return json.dumps(self.to_dict(), indent=indent)

    def print(self, console: Console) -> None:
        """A short table: each rejection / repair reason with its rows and share of the input."""
        console.print(f"[bold]{self.dataset}[/]: {self.rows_kept:,} of {self.rows_in:,} lines kept, "
                      f"{self.rows_rejected:,} rejected ({self.seconds:.1f} s) -> {self.out_dir}",
                      highlight=False)
        table = Table()
        table.add_column("reason")
        table.add_column("rows", justify="right")
        table.add_column("share", justify="right")

        def share(n: int) -> str:
            return f"{n / self.rows_in:.2%}" if self.rows_in else "-"

        table.add_row("kept", f"{self.rows_kept:,}", share(self.rows_kept), style="bold")
        for reason, n in self.rejected_by_reason.items():
            if n:
                table.add_row(f"rejected: {reason}", f"{n:,}", share(n))
        for reason, n in self.repaired_by_reason.items():
            if n:
                table.add_row(f"repaired: {reason}", f"{n:,}", share(n), style="dim")
        console.print(table)
        for name in ("products", "members", "identities"):
            section = self.tables.get(name, {})
            if "rows_in" not in section:
                continue  # derived from the lines, nothing was validated
            issues = {**section.get("rejected_by_reason", {}), **section.get("repaired_by_reason", {})}
            found = ", ".join(f"{reason} {n:,}" for reason, n in issues.items() if n) or "no issues"
            console.print(f"{name} table: {section['rows_kept']:,} of {section['rows_in']:,} rows "
                          f"kept ({found})", highlight=False)
        outputs = ", ".join(f"{name} {rows:,}" for name, rows in self.outputs.items())
        console.print(f"rows written: {outputs}", highlight=False)


@dataclass
class _Source:
    """One opened source table: the SQL that scans it and its resolved column names."""

    table: str
    mapping: TableMapping
    scan: str  # a DuckDB table expression
    row_expr: str  # the row's line number in the file (header = 1), over ``scan``
    columns: dict[str, str]  # canonical -> the file's own column name
    temporal: set[str]  # canonical columns whose source type is already a date / timestamp
    info: dict[str, Any]  # for the report: path, sha256, bytes

    @property
    def path(self) -> str:
        return str(self.mapping.path)

    def raw(self, canonical: str) -> str:
        """The source column for ``canonical`` as text, or a text NULL when it is not mapped."""
        if canonical in self.columns:
            return f"CAST({_ident(self.columns[canonical])} AS VARCHAR)"
        return "CAST(NULL AS VARCHAR)"


def ingest(
    mapping: MappingConfig,
    out_dir: Path,
    strict: bool = False,
    *,
    memory_limit: str | None = None,
    threads: int | None = None,
) -> ValidationReport:
    """Validate the mapped source tables and write the canonical tables plus a report.

    Parameters
    ----------
    mapping
        From :func:`recsys.data.mapping.resolve_source` (table paths already absolute).
    out_dir
        Created if needed; receives ``transactions.parquet``, ``products.parquet``,
        ``members.parquet`` and ``validation_report.json``.
    strict
        Stop at the first bad row instead of skipping and counting bad rows.
    memory_limit
        DuckDB memory cap (e.g. ``"4GB"``); default :func:`default_memory_limit`.
    threads
        DuckDB threads; default ``os.cpu_count()``.

    Returns
    -------
    ValidationReport
        Counts by reason; ``rows_in == rows_kept + rows_rejected``.

    Raises
    ------
    InputError
        Missing / empty / unreadable file, a mapped column absent from the file, a bad
        ``ts_format``, or an external id that maps to two members.
    StrictValidationError
        ``strict=True`` and a row is bad (file, 1-based line number, column, value, reason).

    Examples
    --------
    >>> from recsys.data.mapping import resolve_source
    >>> report = ingest(resolve_source("tafeng", Path("data")), Path("data/tafeng/canonical"))  # doctest: +SKIP
    >>> report.rows_in == report.rows_kept + report.rows_rejected  # doctest: +SKIP
    True
    """
    started = time.perf_counter()
    out_dir = Path(out_dir)
    tmp_dir = out_dir / ".tmp"
    if tmp_dir.exists():
        shutil.rmtree(tmp_dir)  # left over from an interrupted run
    try:
        tmp_dir.mkdir(parents=True)
    except OSError as exc:
        raise InputError(f"cannot create the output folder {out_dir}: {exc.strerror}") from None
    con = _connect(tmp_dir, memory_limit, threads)
    try:
        report = _run(con, mapping, out_dir, tmp_dir, strict)
    except duckdb.OutOfMemoryException as exc:
        # Not the input's fault: the spill folder filled up or the cap is too tight.
        raise RecsysError(f"ingest ran out of memory ({_one_line(exc)}); free disk space under "
                          f"{out_dir} for spilling or pass a larger memory_limit") from None
    except duckdb.IOException as exc:
        raise RecsysError(f"ingest could not write its output or spill files ({_one_line(exc)}); "
                          f"check free disk space and permissions under {out_dir}") from None
    finally:
        con.close()
        shutil.rmtree(tmp_dir, ignore_errors=True)
    report.seconds = round(time.perf_counter() - started, 2)
    (out_dir / "validation_report.json").write_text(report.to_json() + "\n", encoding="utf-8")
    return report


def _run(con: duckdb.DuckDBPyConnection, mapping: MappingConfig, out_dir: Path, tmp_dir: Path,
         strict: bool) -> ValidationReport:
    sources = {table: _open_source(con, table, tm, tmp_dir) for table, tm in mapping.tables().items()}
    txn = sources["transactions"]
    tables: dict[str, dict[str, Any]] = {}

    ident = sources.get("identities")
    if ident is not None:
        tables["identities"] = _stage_identities(con, ident, Col.CHANNEL in txn.columns, strict)
    prod = sources.get("products")
    if prod is not None:
        tables["products"] = _stage_products(con, prod, strict)
    memb = sources.get("members")
    if memb is not None:
        tables["members"] = _stage_members(con, memb, strict)

    counts = _stage_transactions(con, txn, ident is not None, prod is not None, strict)
    rows_in, rows_kept = counts["rows_in"], counts["rows_kept"]
    rejected = {r: counts["rejected"].get(r, 0) for r in REJECT_REASONS}
    rows_rejected = sum(rejected.values())
    if rows_in != rows_kept + rows_rejected:  # every line must get exactly one fate
        raise AssertionError(f"ingest accounting is off: {rows_in} in != "
                             f"{rows_kept} kept + {rows_rejected} rejected")
    repaired = counts["repaired"]
    tables["transactions"] = {"rows_in": rows_in, "rows_kept": rows_kept,
                              "rows_rejected": rows_rejected, "rejected_by_reason": rejected,
                              "repaired_by_reason": repaired}

    outputs = _write_outputs(con, out_dir, tmp_dir, prod is not None, memb is not None, tables)
    for s in sources.values():
        s.info["sha256"] = sha256sum(s.mapping.path)
    return ValidationReport(
        dataset=mapping.name,
        out_dir=str(out_dir),
        sources=[s.info for s in sources.values()],
        rows_in=rows_in,
        rows_kept=rows_kept,
        rows_rejected=rows_rejected,
        rejected_by_reason=rejected,
        repaired_by_reason=repaired,
        tables=tables,
        outputs=outputs,
        created_at=datetime.now(UTC).isoformat(timespec="seconds"),
    )


# --------------------------------------------------------------------------------------------
# connection and sources


def default_memory_limit() -> str:
    """DuckDB's cap: 10 GiB, or less on a small or busy machine (never below 1 GiB).

    DuckDB's resident size runs a little above its cap, so the cap leaves room under 16 GB and
    under what other processes on the machine already use (``MemAvailable``).
    """
    caps = [_MAX_MEMORY]
    try:
        caps.append(int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") * 0.6))
    except (ValueError, OSError, AttributeError):
        pass
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            info = dict(line.split(":", 1) for line in f)
        caps.append(int(info["MemAvailable"].split()[0]) * 1024 * 3 // 4)
    except (OSError, KeyError, ValueError):
        pass
    return f"{max(min(caps), 1024**3) // 1024**2}MB"


def _connect(tmp_dir: Path, memory_limit: str | None, threads: int | None) -> duckdb.DuckDBPyConnection:
    con = duckdb.connect()
    memory_limit = memory_limit or default_memory_limit()
    con.execute(f"SET memory_limit = {_lit(memory_limit)}")
    con.execute(f"SET temp_directory = {_lit(str(tmp_dir / 'spill'))}")
    con.execute(f"SET threads = {int(threads or os.cpu_count() or 1)}")
    # Order-preserving scans are what make row_number() OVER () the file's line order.
    con.execute("SET preserve_insertion_order = true")
    con.execute("SET enable_progress_bar = false")
    con.execute("SET TimeZone = 'UTC'")  # strptime with %z must not depend on the host zone
    return con


def _open_source(con: duckdb.DuckDBPyConnection, table: str, tm: TableMapping,
                 tmp_dir: Path) -> _Source:
    path = tm.path
    if not path.exists():
        raise InputError(f"{table} file not found: {path} (check [{table}] path in the mapping; "
                         "relative paths resolve against --data-dir)")
    if not path.is_file():
        raise InputError(f"{table} path is not a file: {path}")
    # sha256 is added after validation so that a wrong column name fails fast on a big file.
    info: dict[str, Any] = {"table": table, "path": str(path), "bytes": path.stat().st_size}
    if info["bytes"] == 0:
        raise InputError(f"{path}: the file is empty (no header, no rows)")

    read_path = path
    if tm.file_format == "csv" and path.suffix.lower() == ".zip":
        read_path = _extract_single_member(path, table, tmp_dir)
        info["member"] = read_path.name.split("__", 1)[1]

    if tm.file_format == "parquet":
        scan = f"read_parquet({_lit(str(read_path))}, file_row_number = true)"
        # Parquet has no header line; number rows as if it had one, like a CSV.
        row_expr = "file_row_number + 2"
    else:
        opts = ["all_varchar = true", "header = true"]
        if tm.delimiter:
            opts.append(f"delim = {_lit(tm.delimiter)}")
        if tm.encoding:
            opts.append(f"encoding = {_lit(tm.encoding)}")
        scan = f"read_csv({_lit(str(read_path))}, {', '.join(opts)})"
        row_expr = "row_number() OVER () + 1"

    try:
        described = con.execute(f"DESCRIBE SELECT * FROM {scan}").fetchall()
    except duckdb.Error as exc:
        raise InputError(f"{path}: cannot read it as {tm.file_format.upper()}: {_one_line(exc)}") from None
    types = {row[0]: str(row[1]) for row in described}

    columns: dict[str, str] = {}
    by_lower: dict[str, list[str]] = {}
    for name in types:
        by_lower.setdefault(name.strip().lower(), []).append(name)
    for canonical, wanted in tm.columns.items():
        if wanted in types:
            columns[canonical] = wanted
            continue
        candidates = by_lower.get(wanted.strip().lower(), [])
        if len(candidates) != 1:
            listed = ", ".join(repr(n) for n in types)
            raise InputError(f"{path}: column {wanted!r} (mapped to {table}.{canonical}) is not in "
                             f"the file; its columns are: {listed}")
        columns[canonical] = candidates[0]
    temporal = {c for c, src in columns.items()
                if types[src].startswith(("DATE", "TIMESTAMP"))}

    if tm.ts_format:
        try:
            con.execute(f"SELECT try_strptime('', {_lit(tm.ts_format)})").fetchall()
        except duckdb.Error as exc:
            raise InputError(f"[{table}] ts_format {tm.ts_format!r} is not a valid strptime "
                             f"format: {_one_line(exc)}") from None
    return _Source(table, tm, scan, row_expr, columns, temporal, info)


def _extract_single_member(path: Path, table: str, tmp_dir: Path) -> Path:
    """Stream the one file inside a zip to ``tmp_dir``, since DuckDB cannot read zips itself."""
    try:
        with zipfile.ZipFile(path) as zf:
            members = [i for i in zf.infolist()
                       if not i.is_dir() and not i.filename.startswith("__MACOSX/")]
            if len(members) != 1:
                names = ", ".join(i.filename for i in members[:5]) or "nothing"
                raise InputError(f"{path}: a zip must hold exactly one CSV, this one holds "
                                 f"{len(members)} files ({names})")
            out = tmp_dir / f"{table}__{Path(members[0].filename).name}"
            with zf.open(members[0]) as src, open(out, "wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
    except zipfile.BadZipFile:
        raise InputError(f"{path}: not a valid zip file") from None
    return out


def _load(con: duckdb.DuckDBPyConnection, src: _Source, name: str, canonical: tuple[str, ...]) -> int:
    """Materialise the mapped columns as text plus ``_row``; return the number of data rows.

    The numbering is done on its own, straight over the scan: DuckDB keeps a scan's order under
    ``preserve_insertion_order``, so ``_row`` is the line in the file and strict mode can point
    at it.
    """
    cols = ", ".join(f"{src.raw(c)} AS {_ident('r_' + c)}" for c in canonical)
    try:
        con.execute(f"CREATE TABLE {name} AS SELECT {src.row_expr} AS _row, {cols} FROM {src.scan}")
    except duckdb.Error as exc:
        raise InputError(f"{src.path}: cannot read it: {_one_line(exc)}") from None
    n = con.execute(f"SELECT count(*) FROM {name}").fetchone()[0]
    if n == 0:
        raise InputError(f"{src.path}: no data rows (only a header?); nothing to ingest")
    return n


# --------------------------------------------------------------------------------------------
# per-table staging


def _stage_identities(con: duckdb.DuckDBPyConnection, src: _Source, by_channel: bool,
                      strict: bool) -> dict[str, Any]:
    canon = (Col.CHANNEL, Col.EXTERNAL_ID, Col.MEMBER)
    rows_in = _load(con, src, "id_src", canon)
    con.execute(f"""
        CREATE TABLE id_lines AS
        SELECT _row, k_channel AS channel, k_external_id AS external_id, k_member_id AS member_id,
               CASE WHEN k_channel IS NULL THEN 'missing_channel'
                    WHEN k_external_id IS NULL THEN 'missing_external_id'
                    WHEN k_member_id IS NULL THEN 'missing_member_id' END AS _status,
               r_channel, r_external_id, r_member_id
        FROM (SELECT *, {_cleaned(src, canon)} FROM id_src)""")
    con.execute("DROP TABLE id_src")
    if strict:
        _raise_first(con, src, "id_lines", "_status")
    key = "channel, external_id" if by_channel else "external_id"
    conflict = con.execute(f"""
        SELECT {key}, min(member_id), max(member_id) FROM id_lines WHERE _status IS NULL
        GROUP BY {key} HAVING count(DISTINCT member_id) > 1 ORDER BY min(_row) LIMIT 1""").fetchone()
    if conflict:
        *k, first, second = conflict
        acct = f"external id {k[-1]!r}" + (f" on channel {k[0]!r}" if by_channel else "")
        raise InputError(f"{src.path}: {acct} maps to two member ids ({first!r} and {second!r}); "
                         "an account can belong to one member only, fix the identities file")
    # Without a channel on the lines, an account id is looked up whatever its channel.
    con.execute(f"CREATE TABLE ident AS SELECT DISTINCT {key}, member_id FROM id_lines "
                "WHERE _status IS NULL")
    rejected = _status_counts(con, "id_lines", ("missing_channel", "missing_external_id",
                                                "missing_member_id"))
    accounts, members = con.execute("SELECT count(*), count(DISTINCT member_id) FROM ident").fetchone()
    return {"rows_in": rows_in, "rows_kept": rows_in - sum(rejected.values()),
            "rows_rejected": sum(rejected.values()), "rejected_by_reason": rejected,
            "accounts": accounts, "members": members, "join_on": key.replace(" ", "")}


def _stage_products(con: duckdb.DuckDBPyConnection, src: _Source, strict: bool) -> dict[str, Any]:
    canon = (Col.PRODUCT, Col.CATEGORY, Col.PRICE, Col.BRAND, Col.NAME, Col.LAUNCHED_AT)
    rows_in = _load(con, src, "p_src", canon)
    con.execute(f"""
        CREATE TABLE p_lines AS
        WITH k AS (SELECT *, {_cleaned(src, canon)} FROM p_src),
        c AS (
            SELECT _row, r_product_id, r_category, r_price, r_launched_at, k_launched_at,
                   k_product_id AS product_id, k_category AS category,
                   TRY_CAST(k_price AS DOUBLE) AS price0,
                   CASE WHEN isfinite(price0) AND price0 > 0 THEN price0 END AS price,
                   k_brand AS brand, k_name AS name,
                   {_ts_expr(src, Col.LAUNCHED_AT, 'k_launched_at')} AS launched_at,
                   coalesce(k_product_id <> r_product_id, false) AS _trimmed
            FROM k)
        SELECT *,
               CASE WHEN product_id IS NULL THEN 'missing_product_id'
                    WHEN row_number() OVER (PARTITION BY product_id ORDER BY _row) > 1
                        THEN 'duplicate_product_id' END AS _status,
               price IS NULL AS _bad_price,
               category IS NULL AS _missing_category,
               launched_at IS NULL AND k_launched_at IS NOT NULL AS _bad_launched_at
        FROM c""")
    con.execute("DROP TABLE p_src")
    if strict:
        _raise_first(con, src, "p_lines", "_status", {
            "bad_price": ("_bad_price", "r_price"),
            "missing_category": ("_missing_category", "r_category"),
            "bad_launched_at": ("_bad_launched_at", "r_launched_at")})
    con.execute("CREATE TABLE p_kept AS SELECT * FROM p_lines WHERE _status IS NULL")
    rejected = _status_counts(con, "p_lines", ("missing_product_id", "duplicate_product_id"))
    repaired = dict(zip(("trimmed_id", "bad_price", "missing_category", "bad_launched_at"),
                        con.execute("""
        SELECT count(*) FILTER (_trimmed), count(*) FILTER (_bad_price),
               count(*) FILTER (_missing_category), count(*) FILTER (_bad_launched_at)
        FROM p_kept""").fetchone(), strict=True))
    return {"rows_in": rows_in, "rows_kept": rows_in - sum(rejected.values()),
            "rows_rejected": sum(rejected.values()), "rejected_by_reason": rejected,
            "repaired_by_reason": repaired}


def _stage_members(con: duckdb.DuckDBPyConnection, src: _Source, strict: bool) -> dict[str, Any]:
    canon = (Col.MEMBER, Col.JOINED_AT, Col.AGE_GROUP, Col.REGION)
    rows_in = _load(con, src, "m_src", canon)
    con.execute(f"""
        CREATE TABLE m_lines AS
        WITH k AS (SELECT *, {_cleaned(src, canon)} FROM m_src),
        c AS (
            SELECT _row, r_member_id, r_joined_at, k_joined_at, k_member_id AS member_id,
                   {_ts_expr(src, Col.JOINED_AT, 'k_joined_at')} AS joined_at,
                   k_age_group AS age_group, k_region AS region,
                   coalesce(k_member_id <> r_member_id, false) AS _trimmed
            FROM k)
        SELECT *,
               CASE WHEN member_id IS NULL THEN 'missing_member_id'
                    WHEN row_number() OVER (PARTITION BY member_id ORDER BY _row) > 1
                        THEN 'duplicate_member_id' END AS _status,
               joined_at IS NULL AND k_joined_at IS NOT NULL AS _bad_joined_at
        FROM c""")
    con.execute("DROP TABLE m_src")
    if strict:
        _raise_first(con, src, "m_lines", "_status",
                     {"bad_joined_at": ("_bad_joined_at", "r_joined_at")})
    con.execute("CREATE TABLE m_kept AS SELECT * FROM m_lines WHERE _status IS NULL")
    rejected = _status_counts(con, "m_lines", ("missing_member_id", "duplicate_member_id"))
    repaired = dict(zip(("trimmed_id", "bad_joined_at"), con.execute(
        "SELECT count(*) FILTER (_trimmed), count(*) FILTER (_bad_joined_at) FROM m_kept"
    ).fetchone(), strict=True))
    return {"rows_in": rows_in, "rows_kept": rows_in - sum(rejected.values()),
            "rows_rejected": sum(rejected.values()), "rejected_by_reason": rejected,
            "repaired_by_reason": repaired}


def _stage_transactions(con: duckdb.DuckDBPyConnection, src: _Source, has_ident: bool,
                        has_products: bool, strict: bool) -> dict[str, Any]:
    canon = tuple(TRANSACTIONS.columns)
    rows_in = _load(con, src, "t_src", canon)

    ids = ", ".join(f"k_{c} AS {c}" for c in _TXN_IDS if c != Col.MEMBER)
    attrs = ", ".join(f"k_{c} AS {c}" for c in _TXN_ATTRS)
    trimmed = " OR ".join(f"coalesce(k_{c} <> r_{c}, false)" for c in _TXN_IDS if c in src.columns)
    if has_ident:
        on = "i.external_id = c.member0" + (" AND i.channel = c.channel"
                                            if Col.CHANNEL in src.columns else "")
        fold_join = f"LEFT JOIN ident i ON {on}"
        member = "coalesce(i.member_id, c.member0)"
        folded = "coalesce(i.member_id <> c.member0, false)"
    else:
        fold_join, member, folded = "", "c.member0", "false"
    known_join = ("LEFT JOIN (SELECT product_id AS known_product FROM p_kept) p "
                  "ON p.known_product = c.product_id") if has_products else ""
    unknown = "WHEN known_product IS NULL THEN 'unknown_product'" if has_products else ""
    bad_value = "\n".join(
        f"WHEN '{reason}' THEN r_{_REASON_COLUMN[reason]}"
        for reason in (*REJECT_REASONS[:-1], "unparseable_cost"))
    con.execute(f"""
        CREATE TABLE t_lines AS
        WITH k AS (SELECT *, {_cleaned(src, canon)} FROM t_src),
        c AS (
            SELECT _row, r_member_id, r_product_id, r_ts, r_quantity, r_amount, r_cost,
                   k_member_id AS member0, {ids},
                   {_ts_expr(src, Col.TS, 'k_ts')} AS ts,
                   TRY_CAST(k_quantity AS DOUBLE) AS quantity,
                   TRY_CAST(k_amount AS DOUBLE) AS amount,
                   TRY_CAST(k_cost AS DOUBLE) AS cost0,
                   k_cost IS NOT NULL AS _has_cost,
                   {attrs},
                   {trimmed or 'false'} AS _trimmed
            FROM k),
        f AS (
            SELECT c.*, {member} AS member_id, {folded} AS _folded
                   {", known_product" if has_products else ""}
            FROM c {fold_join} {known_join}),
        s AS (
            SELECT *,
                   CASE WHEN member_id IS NULL THEN 'missing_member_id'
                        WHEN product_id IS NULL THEN 'missing_product_id'
                        WHEN ts IS NULL THEN 'unparseable_ts'
                        WHEN quantity IS NULL OR NOT isfinite(quantity) THEN 'unparseable_quantity'
                        WHEN amount IS NULL OR NOT isfinite(amount) THEN 'unparseable_amount'
                        WHEN quantity <= 0 THEN 'non_positive_quantity'
                        WHEN amount <= 0 THEN 'non_positive_amount'
                        {unknown}
                   END AS _status,
                   _has_cost AND (cost0 IS NULL OR NOT isfinite(cost0)) AS _bad_cost
            FROM f)
        SELECT _row, _status, _bad_cost, _trimmed, _folded,
               CASE coalesce(_status, CASE WHEN _bad_cost THEN 'unparseable_cost' END)
                   {bad_value}
               END AS _bad_value,
               member_id, product_id, ts, quantity, amount,
               CASE WHEN _bad_cost THEN NULL ELSE cost0 END AS cost,
               channel, store_id, basket_id, {", ".join(_TXN_ATTRS)}
        FROM s""")
    con.execute("DROP TABLE t_src")

    # Exact duplicates collapse in a spillable GROUP BY; the group's smallest line number is the
    # first occurrence, and its flags are the ones that describe the kept line. Unmapped columns
    # are NULL on every line, so they are left out of the key and added back as NULL.
    key_cols = [c for c in _TXN_KEY if c in src.columns]
    unmapped = "".join(f", CAST(NULL AS {'DOUBLE' if c == Col.COST else 'VARCHAR'}) AS {c}"
                       for c in _TXN_KEY if c not in src.columns)
    key = ", ".join(key_cols)
    con.execute(f"""
        CREATE TABLE t_kept AS
        SELECT min(_row) AS _row, arg_min(_trimmed, _row) AS _trimmed,
               arg_min(_folded, _row) AS _folded, arg_min(_bad_cost, _row) AS _bad_cost,
               {key}{unmapped}
        FROM t_lines WHERE _status IS NULL
        GROUP BY {key}""")
    if strict:
        _raise_first_transaction(con, src, key_cols)

    counts = dict(con.execute("SELECT _status, count(*) FROM t_lines GROUP BY _status").fetchall())
    candidates = counts.pop(None, 0)
    rows_kept = con.execute("SELECT count(*) FROM t_kept").fetchone()[0]
    counts["duplicate"] = candidates - rows_kept
    repaired = dict(zip(REPAIR_REASONS, con.execute("""
        SELECT count(*) FILTER (_trimmed), count(*) FILTER (_folded), count(*) FILTER (_bad_cost)
        FROM t_kept""").fetchone(), strict=True))
    con.execute("DROP TABLE t_lines")
    return {"rows_in": rows_in, "rows_kept": rows_kept, "rejected": counts, "repaired": repaired}


# --------------------------------------------------------------------------------------------
# strict mode


def _raise_first(con: duckdb.DuckDBPyConnection, src: _Source, table: str, status: str,
                 soft: dict[str, tuple[str, str]] | None = None) -> None:
    """Raise for the lowest-numbered row whose ``status`` is set or that has a ``soft`` issue.

    ``soft`` maps an issue name to (flag column, raw column): values that a lenient run repairs
    but that strict mode refuses.
    """
    soft = soft or {}
    issue = f"coalesce({status}, " + "".join(
        f"CASE WHEN {flag} THEN '{name}' ELSE " for name, (flag, _) in soft.items()
    ) + "NULL" + " END" * len(soft) + ")"
    row = con.execute(f"SELECT _row, {issue} FROM {table} WHERE {issue} IS NOT NULL "
                      "ORDER BY _row LIMIT 1").fetchone()
    if row is None:
        return
    line, reason = row
    raw_col = soft[reason][1] if reason in soft else f"r_{_REASON_COLUMN[reason]}"
    value = con.execute(f"SELECT {raw_col} FROM {table} WHERE _row = ?", [line]).fetchone()[0]
    column = _REASON_COLUMN[reason]
    raise StrictValidationError(src.path, int(line), src.columns.get(column, column),
                                "" if value is None else value, reason)


def _raise_first_transaction(con: duckdb.DuckDBPyConnection, src: _Source,
                             key_cols: list[str]) -> None:
    bad = con.execute("""
        SELECT _row, coalesce(_status, 'unparseable_cost'), _bad_value FROM t_lines
        WHERE _status IS NOT NULL OR _bad_cost ORDER BY _row LIMIT 1""").fetchone()
    dup = con.execute("""
        SELECT min(l._row) FROM t_lines l ANTI JOIN t_kept k ON l._row = k._row
        WHERE l._status IS NULL""").fetchone()[0]
    if dup is not None and (bad is None or dup < bad[0]):
        same = " AND ".join(f"k.{c} IS NOT DISTINCT FROM l.{c}" for c in key_cols)
        first = con.execute(f"SELECT k._row FROM t_kept k JOIN t_lines l ON {same} "
                            "WHERE l._row = ?", [dup]).fetchone()[0]
        raise StrictValidationError(src.path, int(dup), "(all mapped columns)",
                                    f"same as row {first}", "duplicate")
    if bad is not None:
        line, reason, value = bad
        column = _REASON_COLUMN[reason]
        # An empty CSV field reads as NULL; report it as the empty text the user sees.
        raise StrictValidationError(src.path, int(line), src.columns.get(column, column),
                                    "" if value is None else value, reason)


# --------------------------------------------------------------------------------------------
# outputs


def _write_outputs(con: duckdb.DuckDBPyConnection, out_dir: Path, tmp_dir: Path,
                   has_products: bool, has_members: bool,
                   tables: dict[str, dict[str, Any]]) -> dict[str, int]:
    staged = tmp_dir / "out"
    staged.mkdir()
    # A NULL-only column gets an explicit type so the Parquet schema is the same for every source.
    txn_cols = ", ".join(
        f"CAST({'amount / quantity' if c == Col.UNIT_PRICE else c} AS {t}) AS {c}"
        for c, t in TRANSACTION_OUTPUT.items())
    _copy(con, f"SELECT {txn_cols} FROM t_kept ORDER BY ts, member_id, _row",
          staged / "transactions.parquet")

    line_price = "SELECT product_id, median(amount / quantity) AS line_price FROM t_kept GROUP BY 1"
    if has_products:
        # Products never sold stay; a bad or missing list price falls back to the median paid.
        products = f"""
            SELECT p.product_id, coalesce(p.category, '{UNKNOWN_CATEGORY}') AS category,
                   coalesce(p.price, l.line_price) AS price, p.brand, p.name, p.launched_at
            FROM p_kept p LEFT JOIN ({line_price}) l USING (product_id)"""
    else:
        products = f"""
            SELECT l.product_id, coalesce(c.v, '{UNKNOWN_CATEGORY}') AS category,
                   l.line_price AS price, b.v AS brand, n.v AS name, NULL AS launched_at
            FROM ({line_price}) l
            LEFT JOIN ({_mode(Col.PRODUCT, Col.CATEGORY)}) c USING (product_id)
            LEFT JOIN ({_mode(Col.PRODUCT, Col.BRAND)}) b USING (product_id)
            LEFT JOIN ({_mode(Col.PRODUCT, Col.NAME)}) n USING (product_id)"""
    prod_cols = ", ".join(f"CAST({c} AS {t}) AS {c}" for c, t in PRODUCT_OUTPUT.items())
    _copy(con, f"SELECT {prod_cols} FROM ({products}) ORDER BY product_id",
          staged / "products.parquet")

    seen = "SELECT DISTINCT member_id FROM t_kept"
    if has_members:
        added = con.execute(f"SELECT count(*) FROM ({seen}) s ANTI JOIN m_kept m USING (member_id)"
                            ).fetchone()[0]
        tables["members"]["added_from_lines"] = added
        members = f"""
            SELECT member_id, joined_at, age_group, region FROM m_kept
            UNION ALL
            SELECT s.member_id, NULL, NULL, NULL FROM ({seen}) s ANTI JOIN m_kept m USING (member_id)"""
    else:
        members = f"""
            SELECT s.member_id, NULL AS joined_at, a.v AS age_group, r.v AS region
            FROM ({seen}) s
            LEFT JOIN ({_mode(Col.MEMBER, Col.AGE_GROUP)}) a USING (member_id)
            LEFT JOIN ({_mode(Col.MEMBER, Col.REGION)}) r USING (member_id)"""
    memb_cols = ", ".join(f"CAST({c} AS {t}) AS {c}" for c, t in MEMBER_OUTPUT.items())
    _copy(con, f"SELECT {memb_cols} FROM ({members}) ORDER BY member_id",
          staged / "members.parquet")

    outputs: dict[str, int] = {}
    out_dir.mkdir(parents=True, exist_ok=True)
    for name in ("transactions", "products", "members"):
        file = staged / f"{name}.parquet"
        outputs[f"{name}.parquet"] = con.execute(
            f"SELECT count(*) FROM read_parquet({_lit(str(file))})").fetchone()[0]
        # Moved only once all three are written: a failed run never mixes old and new tables.
        os.replace(file, out_dir / file.name)
    for name, given in (("products", has_products), ("members", has_members)):
        section = tables.setdefault(name, {})
        section["derived_from"] = "table" if given else "transaction lines"
        section["rows_out"] = outputs[f"{name}.parquet"]
    return outputs


def _copy(con: duckdb.DuckDBPyConnection, query: str, path: Path) -> None:
    con.execute(f"COPY ({query}) TO {_lit(str(path))} (FORMAT parquet, COMPRESSION zstd)")


def _mode(key: str, attr: str) -> str:
    """Per ``key``, the most frequent non-NULL ``attr`` on kept lines (ties: smallest value)."""
    return f"""
        SELECT {key}, first({attr} ORDER BY n DESC, {attr}) AS v
        FROM (SELECT {key}, {attr}, count(*) AS n FROM t_kept
              WHERE {attr} IS NOT NULL GROUP BY ALL)
        GROUP BY {key}"""


# --------------------------------------------------------------------------------------------
# SQL helpers


def _ts_expr(src: _Source, canonical: str, cleaned: str) -> str:
    if canonical in src.temporal:  # Parquet DATE / TIMESTAMP: already typed, ignore ts_format
        return f"TRY_CAST({cleaned} AS TIMESTAMP)"
    if src.mapping.ts_format:
        return f"CAST(try_strptime({cleaned}, {_lit(src.mapping.ts_format)}) AS TIMESTAMP)"
    return f"TRY_CAST({cleaned} AS TIMESTAMP)"


def _status_counts(con: duckdb.DuckDBPyConnection, table: str, reasons: tuple[str, ...]) -> dict[str, int]:
    found = dict(con.execute(f"SELECT _status, count(*) FROM {table} WHERE _status IS NOT NULL "
                             "GROUP BY _status").fetchall())
    return {r: int(found.get(r, 0)) for r in reasons}


def _cleaned(src: _Source, canonical: tuple[str, ...]) -> str:
    """``k_<c>``: each mapped ``r_<c>`` trimmed of whitespace, empty as NULL (unmapped: NULL)."""
    return ", ".join(
        f"{_clean('r_' + c) if c in src.columns else 'CAST(NULL AS VARCHAR)'} AS k_{c}"
        for c in canonical)


def _clean(column: str) -> str:
    """Trimmed text, with empty strings as NULL."""
    # trim() with a character set is several times slower than a look at the two ends, and
    # almost no value needs it. Plain comparisons: an IN list here would plan as a join.
    ends = " OR ".join(
        f"{column}[{i}] <= ' '" if ch == " " else f"{column}[{i}] = {_lit(ch)}"
        for i in (1, -1) for ch in (" ", "\u00a0", "\ufeff"))
    return (f"CASE WHEN {ends} THEN NULLIF(trim({column}, {_lit(_WS)}), '') "
            f"WHEN {column} = '' THEN NULL ELSE {column} END")


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _lit(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text if len(text) <= 300 else text[:297] + "..."
