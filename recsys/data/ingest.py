"""Ingest a retailer's export: validate every line, fold channel identities, write canonical tables.

Everything runs inside DuckDB so that a 50-million-line export fits in a bounded amount of RAM:
the database is capped by ``memory_limit`` (:func:`default_memory_limit`) and spills to
``OUT_DIR/.tmp``; the file is scanned once, straight into the validated lines, the
deduplication is a ``GROUP BY`` and the final ordering an ``ORDER BY``, all of which DuckDB
spills to disk. No Python loop touches rows.

Pipeline for the transactions table:

1. read the mapped source columns as text (``all_varchar``), numbering rows by their line in
   the file (header = line 1, first data row = line 2); a CSV line the reader cannot split into
   the header's fields (too few or too many, an unclosed quote, bytes that are not text in the
   file's encoding) is set aside by DuckDB's reader (``store_rejects``) and counted as
   ``malformed_row``;
2. trim ids (counted as the ``trimmed_id`` repair) and fold channel accounts into members
   through the identities table (``identity_folded``);
3. give each line exactly one status: the first rule of :data:`REJECT_RULES` that holds;
4. keep the first of exact duplicates (same values in every mapped column after cleaning);
5. write ``transactions.parquet`` (sorted by ts, member_id), ``products.parquet``,
   ``members.parquet`` and ``validation_report.json``.

``engine="spark"`` runs these same statements on Spark (:mod:`recsys.spark.ingest`: the files
read by Spark's readers, every statement through :func:`recsys.dialect.to_spark`), so the two
engines share one copy of the rules and write the same tables and report.

With ``strict=True`` nothing is written: the first bad row (lowest line number) raises
:class:`~recsys.errors.StrictValidationError`.
"""

from __future__ import annotations

import errno
import json
import lzma
import os
import shutil
import time
import zipfile
import zlib
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from string import Template
from typing import Any

import duckdb
from rich.console import Console
from rich.table import Table

from recsys.columns import BARCODE_MIN_LENGTH, Col
from recsys.data.fetch import sha256sum
from recsys.data.mapping import MappingConfig, TableMapping
from recsys.errors import InputError, RecsysError, StrictValidationError
from recsys.schemas import TRANSACTIONS

# Rejection rules for transaction lines: reason -> SQL condition over one cleaned line, checked
# in this order; a line gets the first that holds, so the counts add up to rows_rejected. The
# columns are the line's cleaned values: ids trimmed (NULL when empty), ts / quantity / amount
# typed (NULL when unparseable), known_product NULL when a products table is given and lacks the
# id. ${ts_min}, ${ts_max} and ${max_quantity} are the mapping's [limits] (Limits).
REJECT_RULES: dict[str, str] = {
    "missing_member_id": "member_id IS NULL",
    "missing_product_id": "product_id IS NULL",
    "unparseable_ts": "ts IS NULL",
    "ts_out_of_range": "ts < ${ts_min} OR ts >= ${ts_max}",
    "unparseable_quantity": "quantity IS NULL OR NOT isfinite(quantity)",
    "unparseable_amount": "amount IS NULL OR NOT isfinite(amount)",
    "non_positive_quantity": "quantity <= 0",
    "implausible_quantity": "quantity > ${max_quantity}",
    "non_positive_amount": "amount <= 0",
    "unknown_product": "known_product IS NULL",  # only with a products table
}
# Every rejection reason, in report order. Two are not per-line conditions: malformed_row (the
# CSV reader could not split the line into the header's fields; any table) comes before every
# rule, and duplicate (the same cleaned values in every mapped column as an earlier kept line)
# after them all.
REJECT_REASONS: tuple[str, ...] = ("malformed_row", *REJECT_RULES, "duplicate")
# How many malformed lines the report shows (line number, text, what the reader said).
MALFORMED_SHOWN = 5
# Repairs: the line is kept but a value was changed. unparseable_cost: cost set to NULL.
REPAIR_REASONS: tuple[str, ...] = ("trimmed_id", "identity_folded", "unparseable_cost")

# The canonical column each rejection (or strict-mode issue) points at.
_REASON_COLUMN: dict[str, str] = {
    "missing_member_id": Col.MEMBER,
    "missing_product_id": Col.PRODUCT,
    "unparseable_ts": Col.TS,
    "ts_out_of_range": Col.TS,
    "unparseable_quantity": Col.QUANTITY,
    "unparseable_amount": Col.AMOUNT,
    "non_positive_quantity": Col.QUANTITY,
    "implausible_quantity": Col.QUANTITY,
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
    Col.MEMBER: "STRING",
    Col.PRODUCT: "STRING",
    Col.TS: "TIMESTAMP",
    Col.QUANTITY: "DOUBLE",
    Col.AMOUNT: "DOUBLE",
    Col.UNIT_PRICE: "DOUBLE",
    Col.COST: "DOUBLE",
    Col.CHANNEL: "STRING",
    Col.STORE: "STRING",
    Col.BASKET: "STRING",
}
PRODUCT_OUTPUT: dict[str, str] = {
    Col.PRODUCT: "STRING",
    Col.CATEGORY: "STRING",
    Col.PRICE: "DOUBLE",
    Col.BRAND: "STRING",
    Col.NAME: "STRING",
    Col.LAUNCHED_AT: "TIMESTAMP",
}
MEMBER_OUTPUT: dict[str, str] = {
    Col.MEMBER: "STRING",
    Col.JOINED_AT: "TIMESTAMP",
    Col.AGE_GROUP: "STRING",
    Col.REGION: "STRING",
}

UNKNOWN_CATEGORY = "unknown"
_TXN_IDS = (Col.MEMBER, Col.PRODUCT, Col.CHANNEL, Col.STORE, Col.BASKET)
_TXN_ATTRS = (Col.CATEGORY, Col.BRAND, Col.NAME, Col.AGE_GROUP, Col.REGION)
# Every cleaned transaction column: together they define an exact duplicate.
_TXN_KEY = (Col.MEMBER, Col.PRODUCT, Col.TS, Col.QUANTITY, Col.AMOUNT, Col.COST,
            Col.CHANNEL, Col.STORE, Col.BASKET, *_TXN_ATTRS)
# Whitespace stripped from text values; exports often carry NBSPs and BOMs inside fields.
_WS = " \t\r\n\u00a0\ufeff"
# DuckDB's memory cap: this share of the machine's RAM unless RECSYS_INGEST_MEMORY says otherwise.
MEMORY_SHARE = 0.35
MEMORY_ENV = "RECSYS_INGEST_MEMORY"
ENGINES = ("duckdb", "spark")


class SQLFailure(Exception):
    """A statement the Spark engine could not run (what ``duckdb.Error`` is on DuckDB)."""


_SQL_ERRORS: tuple[type[BaseException], ...] = (duckdb.Error, SQLFailure)


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
    engine: str = "duckdb"

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
        for shown in self.tables.get("transactions", {}).get("malformed_rows", []):
            console.print(f"  malformed line {shown['line']:,}: {shown['error']}: "
                          f"{shown['text'][:80]!r}", highlight=False, style="dim")
        for name in ("products", "members", "identities"):
            section = self.tables.get(name, {})
            if "rows_in" not in section:
                continue  # derived from the lines, nothing was validated
            issues = {**section.get("rejected_by_reason", {}), **section.get("repaired_by_reason", {})}
            found = ", ".join(f"{reason} {n:,}" for reason, n in issues.items() if n) or "no issues"
            console.print(f"{name} table: {section['rows_kept']:,} of {section['rows_in']:,} rows "
                          f"kept ({found})", highlight=False)
            for shown in section.get("malformed_rows", []):
                console.print(f"  malformed line {shown['line']:,}: {shown['error']}",
                              highlight=False, style="dim")
        price = self.tables.get("products", {}).get("price", {})
        if price.get("derived"):
            never = (f"; {price['without_price']:,} never sold have none"
                     if price["without_price"] else "")
            console.print(f"products: no price column, so each product's price is the "
                          f"{price['source']} ({price['priced']:,} products{never})",
                          highlight=False)
        outputs = ", ".join(f"{name} {rows:,}" for name, rows in self.outputs.items())
        console.print(f"rows written: {outputs}", highlight=False)


@dataclass
class _Source:
    """One opened source table: the SQL that scans it and its resolved column names."""

    table: str
    mapping: TableMapping
    read_path: Path  # the file DuckDB reads (a zip's member is extracted first)
    columns: dict[str, str]  # canonical -> the file's own column name
    temporal: set[str]  # canonical columns whose source type is already a date / timestamp
    info: dict[str, Any]  # for the report: path, sha256, bytes
    window: tuple[str, str]  # SQL timestamp literals: the plausible [ts_min, ts_max)
    malformed: tuple[int, list[dict[str, Any]]] | None = None  # see _malformed
    # True when _row is the file's line number itself (Spark numbers every line it reads,
    # malformed ones included); DuckDB's reader skips malformed lines (see _line_of).
    row_is_line = False

    @staticmethod
    def ident(name: str) -> str:
        return _ident(name)

    @property
    def path(self) -> str:
        return str(self.mapping.path)

    @property
    def is_csv(self) -> bool:
        return self.mapping.file_format == "csv"

    @property
    def rejects(self) -> str:
        """The table DuckDB's CSV reader fills with the lines it could not read."""
        return f"rejects_{self.table}"

    def scan(self, rejects: str | None = None) -> str:
        """A DuckDB table expression over the file; a CSV's unreadable lines go to ``rejects``."""
        if not self.is_csv:
            return f"read_parquet({_lit(str(self.read_path))}, file_row_number = true)"
        tm = self.mapping
        opts = ["all_varchar = true", "header = true"]
        if tm.delimiter:
            opts.append(f"delim = {_lit(tm.delimiter)}")
        if tm.encoding:
            opts.append(f"encoding = {_lit(tm.encoding)}")
        # Malformed lines are set aside (and counted) instead of failing the whole file; with
        # errors tolerated the dialect sniffer also no longer mistakes a file with one ragged
        # line for a single-column file. The same options every time: the same rows are read.
        rejects = rejects or self.rejects
        opts += ["store_rejects = true", f"rejects_table = {_lit(rejects)}",
                 f"rejects_scan = {_lit(rejects + '_scan')}"]
        return f"read_csv({_lit(str(self.read_path))}, {', '.join(opts)})"

    @property
    def row_expr(self) -> str:
        """Over :meth:`scan`: the row's number counting the header as 1 (a CSV's line number
        when no line was malformed; :func:`_line_of` turns it into the line number)."""
        # Parquet has no header line; number rows as if it had one, like a CSV.
        return "row_number() OVER () + 1" if self.is_csv else "file_row_number + 2"

    def raw(self, canonical: str) -> str:
        """The source column for ``canonical`` as text, or a text NULL when it is not mapped."""
        if canonical in self.columns:
            return f"CAST({self.ident(self.columns[canonical])} AS STRING)"
        return "CAST(NULL AS STRING)"

    def numbered(self, canonical: tuple[str, ...]) -> str:
        """The mapped columns as text (``r_<canonical>``) plus ``_row``, read straight off the
        file. The numbering sits directly on the scan: DuckDB keeps a scan's order under
        ``preserve_insertion_order``, so ``_row`` follows the file."""
        cols = ", ".join(f"{self.raw(c)} AS {_ident('r_' + c)}" for c in canonical)
        return f"SELECT {self.row_expr} AS _row, {cols} FROM {self.scan()}"


def ingest(
    mapping: MappingConfig,
    out_dir: Path,
    strict: bool = False,
    *,
    memory_limit: str | None = None,
    threads: int | None = None,
    engine: str = "duckdb",
    spark: Any = None,
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
        DuckDB memory cap: a size (``"4GB"``) or a share of RAM (``"40%"``); default
        :func:`default_memory_limit`.
    threads
        DuckDB threads; default ``os.cpu_count()``.
    engine
        ``duckdb`` (this machine) or ``spark``: the same SQL (run through
        :func:`recsys.dialect.to_spark`, :mod:`recsys.spark.ingest`), the same tables and report.
    spark
        With ``engine="spark"``: the :class:`recsys.spark.session.SparkSettings` (master, conf).

    Returns
    -------
    ValidationReport
        Counts by reason; ``rows_in == rows_kept + rows_rejected``.

    Raises
    ------
    InputError
        Missing / empty / unreadable / corrupt file, a mapped column absent from the file, a
        bad ``ts_format``, or an external id that maps to two members.
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
    if engine not in ENGINES:
        raise InputError(f"engine must be duckdb or spark, not {engine!r}")
    out_dir = Path(out_dir)
    tmp_dir = out_dir / ".tmp"
    if tmp_dir.exists():
        shutil.rmtree(tmp_dir)  # left over from an interrupted run
    try:
        tmp_dir.mkdir(parents=True)
    except OSError as exc:
        raise InputError(f"cannot create the output folder {out_dir}: {exc.strerror}") from None
    if engine == "spark":
        from recsys.spark.ingest import run_on_spark

        try:
            report = run_on_spark(spark, lambda con, opener: _run(con, mapping, out_dir, tmp_dir, strict, opener))
        finally:
            shutil.rmtree(tmp_dir, ignore_errors=True)
        return _finish(report, out_dir, started)
    try:
        con = _connect(tmp_dir, memory_limit, threads)
    except BaseException:
        shutil.rmtree(tmp_dir, ignore_errors=True)
        raise
    try:
        report = _run(con, mapping, out_dir, tmp_dir, strict)
    except duckdb.OutOfMemoryException as exc:
        # Not the input's fault: the spill folder filled up or the cap is too tight.
        raise RecsysError(f"ingest ran out of memory ({_one_line(exc)}); free disk space under "
                          f"{out_dir} for spilling or give it more memory (--memory-limit, or "
                          f"{MEMORY_ENV} such as 12GB or 60%)") from None
    except duckdb.IOException as exc:
        raise RecsysError(f"ingest could not write its output or spill files ({_one_line(exc)}); "
                          f"check free disk space and permissions under {out_dir}") from None
    finally:
        con.close()
        shutil.rmtree(tmp_dir, ignore_errors=True)
    return _finish(report, out_dir, started)


def _finish(report: ValidationReport, out_dir: Path, started: float) -> ValidationReport:
    report.seconds = round(time.perf_counter() - started, 2)
    (out_dir / "validation_report.json").write_text(report.to_json() + "\n", encoding="utf-8")
    return report


def _run(con: Any, mapping: MappingConfig, out_dir: Path, tmp_dir: Path,
         strict: bool, open_source: Any = None) -> ValidationReport:
    """The ingest on ``con``: a DuckDB connection, or :class:`recsys.spark.ingest.SparkConnection`
    (which runs the same statements on Spark), whose sources ``open_source`` opens."""
    ts_min, ts_max = mapping.limits.window()
    window = (_ts_lit(ts_min), _ts_lit(ts_max))
    open_source = open_source or _open_source
    sources = {table: open_source(con, table, tm, tmp_dir, window)
               for table, tm in mapping.tables().items()}
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

    rules = {reason: Template(sql).substitute(ts_min=window[0], ts_max=window[1],
                                              max_quantity=repr(float(mapping.limits.max_quantity)))
             for reason, sql in REJECT_RULES.items()}
    counts = _stage_transactions(con, txn, ident is not None, prod is not None, strict, rules)
    rows_in, rows_kept = counts["rows_in"], counts["rows_kept"]
    rejected = {r: counts["rejected"].get(r, 0) for r in REJECT_REASONS}
    rows_rejected = sum(rejected.values())
    if rows_in != rows_kept + rows_rejected:  # every line must get exactly one fate
        raise AssertionError(f"ingest accounting is off: {rows_in} in != "
                             f"{rows_kept} kept + {rows_rejected} rejected")
    repaired = counts["repaired"]
    tables["transactions"] = {
        "rows_in": rows_in, "rows_kept": rows_kept, "rows_rejected": rows_rejected,
        "rejected_by_reason": rejected, "repaired_by_reason": repaired,
        "malformed_rows": counts["malformed_rows"],
        "limits": {"ts_min": ts_min.isoformat(), "ts_max": ts_max.isoformat(),
                   "max_quantity": mapping.limits.max_quantity},
    }

    outputs = _write_outputs(con, out_dir, tmp_dir, prod, memb is not None, tables, mapping.brand_from_id_prefix)
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
        engine=getattr(con, "engine", "duckdb"),
    )


# --------------------------------------------------------------------------------------------
# connection and sources


def default_memory_limit(wanted: str | None = None) -> str:
    """DuckDB's memory cap for an ingest (never below 1 GiB).

    ``wanted`` (``--memory-limit``), else ``RECSYS_INGEST_MEMORY``, when set: a size DuckDB
    understands (``"6GB"``) or a share of the machine's RAM (``"25%"``). Otherwise
    :data:`MEMORY_SHARE` of the RAM. A share is held to three quarters of what is available
    now (``MemAvailable``), so a busy machine is not pushed into swapping. Whatever does not fit
    spills to ``OUT_DIR/.tmp``; DuckDB's resident size runs a little above its cap (memory it
    allocates outside its buffer pool), which the share leaves room for.
    """
    source = "--memory-limit" if wanted else MEMORY_ENV
    wanted = (wanted or os.environ.get(MEMORY_ENV, "")).strip()
    if wanted and not wanted.endswith("%"):
        return wanted
    share = MEMORY_SHARE
    if wanted:
        try:
            share = float(wanted[:-1]) / 100
        except ValueError:
            raise InputError(f"{source} {wanted!r} is not a share of RAM; use e.g. 25% or a "
                             "size such as 6GB") from None
        if not 0 < share <= 1:
            raise InputError(f"{source} {wanted!r}: a share of RAM is between 1% and 100%")
    ram = _physical_memory()
    caps = [int(ram * share)] if ram else [8 * 1024**3]
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            info = dict(line.split(":", 1) for line in f)
        caps.append(int(info["MemAvailable"].split()[0]) * 1024 * 3 // 4)
    except (OSError, KeyError, ValueError):
        pass
    return f"{max(min(caps), 1024**3) // 1024**2}MB"


def _physical_memory() -> int | None:
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return None


def _connect(tmp_dir: Path, memory_limit: str | None, threads: int | None) -> duckdb.DuckDBPyConnection:
    con = duckdb.connect()
    memory_limit = default_memory_limit(memory_limit)
    try:
        con.execute(f"SET memory_limit = {_lit(memory_limit)}")
    except duckdb.Error:
        con.close()
        raise InputError(f"memory limit {memory_limit!r} is not a memory size; use e.g. 6GB or "
                         "800MB") from None
    con.execute(f"SET temp_directory = {_lit(str(tmp_dir / 'spill'))}")
    con.execute(f"SET threads = {int(threads or os.cpu_count() or 1)}")
    # Only the scans that number rows need their order kept (see _read); everything else is
    # ordered by explicit ORDER BYs, and not keeping insertion order lets the aggregation, the
    # sort and the Parquet writer stream in less memory.
    con.execute("SET preserve_insertion_order = false")
    con.execute("SET enable_progress_bar = false")
    con.execute("SET TimeZone = 'UTC'")  # strptime with %z must not depend on the host zone
    return con


def _open_source(con: Any, table: str, tm: TableMapping, tmp_dir: Path, window: tuple[str, str],
                 describe: Any = None, source_class: type[_Source] = _Source) -> _Source:
    """The source of ``table``, its mapped columns resolved against the file's; ``describe``
    gives the file's column names and types (default: DuckDB's reader)."""
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
    src = source_class(table, tm, read_path, {}, set(), info, window)

    try:
        if describe is not None:
            types = describe(src)
        else:
            described = con.execute(f"DESCRIBE SELECT * FROM {src.scan(src.rejects + '_sniff')}"
                                    ).fetchall()
            types = {row[0]: str(row[1]) for row in described}
    except _SQL_ERRORS as exc:
        raise InputError(f"{path}: cannot read it as {tm.file_format.upper()}: {_one_line(exc)}") from None

    by_lower: dict[str, list[str]] = {}
    for name in types:
        by_lower.setdefault(name.strip().lower(), []).append(name)
    for canonical, wanted in tm.columns.items():
        if wanted in types:
            src.columns[canonical] = wanted
            continue
        candidates = by_lower.get(wanted.strip().lower(), [])
        if len(candidates) != 1:
            listed = ", ".join(repr(n) for n in types)
            if len(listed) > 300:
                listed = listed[:297] + "..."
            raise InputError(f"{path}: column {wanted!r} (mapped to {table}.{canonical}) is not in "
                             f"the file; its columns are: {listed}"
                             + ("" if tm.delimiter or tm.file_format != "csv" or len(types) > 1
                                else " (one column: set delimiter in the mapping?)"))
        src.columns[canonical] = candidates[0]
    src.temporal.update(c for c, name in src.columns.items()
                        if types[name].startswith(("DATE", "TIMESTAMP")))

    if tm.ts_format:
        try:
            con.execute(f"SELECT try_strptime('', {_lit(tm.ts_format)})").fetchall()
        except _SQL_ERRORS as exc:
            raise InputError(f"[{table}] ts_format {tm.ts_format!r} is not a valid strptime "
                             f"format: {_one_line(exc)}") from None
    return src


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
            # Only the base name is used: a member called ../../x cannot leave tmp_dir.
            name = Path(members[0].filename.replace("\\", "/")).name or "member"
            out = tmp_dir / f"{table}__{name}"
            with zf.open(members[0]) as src, open(out, "wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
    except InputError:
        raise
    except zipfile.BadZipFile as exc:
        raise InputError(f"{path}: not a valid zip file or its data is damaged ({exc}); "
                         "export or download it again") from None
    except (zlib.error, EOFError, lzma.LZMAError) as exc:
        raise InputError(f"{path}: the zip's compressed data is corrupt or truncated "
                         f"({_one_line(exc)}); export or download it again") from None
    except (NotImplementedError, RuntimeError) as exc:
        # an unsupported compression method, or an encrypted member
        raise InputError(f"{path}: cannot unpack it ({_one_line(exc)}); re-zip it without a "
                         "password using deflate, or give the CSV itself") from None
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            raise RecsysError(f"no space left to unpack {path} under {tmp_dir}") from None
        raise InputError(f"{path}: the zip's data is damaged ({_one_line(exc)}); export or "
                         "download it again") from None
    return out


def _read(con: duckdb.DuckDBPyConnection, src: _Source, sql: str) -> None:
    """Run a statement that scans ``src``; a file DuckDB cannot read is the input's fault.

    Insertion order is kept for the statement: its scan numbers the rows (``_row``)."""
    try:
        con.execute("SET preserve_insertion_order = true")
        con.execute(sql)
    except (duckdb.OutOfMemoryException, duckdb.InterruptException):
        raise
    except _SQL_ERRORS as exc:
        msg = _one_line(exc)
        if "No space left on device" in msg:
            raise RecsysError(f"no space left for ingest's spill files under "
                              f"{Path(src.path).parent} ({msg})") from None
        raise InputError(f"{src.path}: cannot read it: {msg}") from None
    finally:
        con.execute("SET preserve_insertion_order = false")


def _malformed(con: duckdb.DuckDBPyConnection, src: _Source) -> tuple[int, list[dict[str, Any]]]:
    """How many lines of ``src`` the CSV reader set aside, and the first few of them (read
    once, after the scan that loads the table)."""
    if src.malformed is None:
        if not src.is_csv or not _table_exists(con, src.rejects):
            src.malformed = (0, [])
        else:
            n = con.execute(f"SELECT count(DISTINCT line) FROM {src.rejects}").fetchone()[0]
            first = con.execute(f"""
                SELECT line, arg_min(error_type, column_idx), arg_min(error_message, column_idx),
                       any_value(csv_line)
                FROM {src.rejects} GROUP BY line ORDER BY line LIMIT {MALFORMED_SHOWN}""").fetchall()
            src.malformed = (int(n), [
                {"line": int(line), "error": f"{kind.lower()}: {_one_line_text(msg)}",
                 "text": text or ""} for line, kind, msg, text in first])
    return src.malformed


def _line_of(con: duckdb.DuckDBPyConnection, src: _Source, row: int) -> int:
    """The file line of the ``row``-th row read (numbered from 2, as ``_row``): the reader's
    numbering skips malformed lines, the file's does not."""
    if src.row_is_line or not _malformed(con, src)[0]:
        return row
    # Before the i-th malformed line (0-based) come line - 2 - i good rows; the row follows
    # every malformed line that has fewer good rows than it before it.
    (skipped,) = con.execute(f"""
        SELECT count(*) FROM (SELECT line - 2 - (row_number() OVER (ORDER BY line) - 1) AS before
                              FROM (SELECT DISTINCT line FROM {src.rejects}))
        WHERE before < ?""", [row - 1]).fetchone()
    return row + int(skipped)


def _strict_malformed(con: duckdb.DuckDBPyConnection, src: _Source,
                      first_issue_line: int | None) -> None:
    """Under --strict: raise for the first malformed line if it comes before ``first_issue_line``."""
    _, shown = _malformed(con, src)
    if shown and (first_issue_line is None or shown[0]["line"] < first_issue_line):
        raise StrictValidationError(src.path, shown[0]["line"], f"(whole line: {shown[0]['error']})",
                                    shown[0]["text"][:200], "malformed_row")


def _check_rows(con: duckdb.DuckDBPyConnection, src: _Source, rows_read: int) -> int:
    """The number of malformed lines; an input without a readable data row is an error."""
    malformed, shown = _malformed(con, src)
    if rows_read == 0:
        if malformed:
            raise InputError(f"{src.path}: none of its {malformed:,} data lines could be read "
                             f"({shown[0]['error']}); check the delimiter and encoding in the "
                             "mapping")
        raise InputError(f"{src.path}: no data rows (only a header?); nothing to ingest")
    return malformed


def _count_rows(con: duckdb.DuckDBPyConnection, src: _Source, table: str) -> tuple[int, int]:
    """(rows read into ``table``, malformed lines); see :func:`_check_rows`."""
    n = int(con.execute(f"SELECT count(*) FROM {table}").fetchone()[0])
    return n, _check_rows(con, src, n)


# --------------------------------------------------------------------------------------------
# per-table staging


def _section(rows_read: int, rejected: dict[str, int], malformed: int,
             shown: list[dict[str, Any]]) -> dict[str, Any]:
    """A table's report section: ``rows_read`` rows were read, ``malformed`` lines were not."""
    rows_rejected = malformed + sum(rejected.values())
    out = {"rows_in": rows_read + malformed, "rows_kept": rows_read + malformed - rows_rejected,
           "rows_rejected": rows_rejected,
           "rejected_by_reason": {"malformed_row": malformed, **rejected}}
    if shown:
        out["malformed_rows"] = shown
    return out


def _stage_identities(con: duckdb.DuckDBPyConnection, src: _Source, by_channel: bool,
                      strict: bool) -> dict[str, Any]:
    canon = (Col.CHANNEL, Col.EXTERNAL_ID, Col.MEMBER)
    _read(con, src, f"""
        CREATE TABLE id_lines AS
        WITH k AS (SELECT *, {_cleaned(src, canon)} FROM ({src.numbered(canon)}))
        SELECT _row, k_channel AS channel, k_external_id AS external_id, k_member_id AS member_id,
               CASE WHEN k_channel IS NULL THEN 'missing_channel'
                    WHEN k_external_id IS NULL THEN 'missing_external_id'
                    WHEN k_member_id IS NULL THEN 'missing_member_id' END AS _status,
               r_channel, r_external_id, r_member_id
        FROM k""")
    rows_in, malformed = _count_rows(con, src, "id_lines")
    if strict:
        _raise_first(con, src, "id_lines", "_status")
    key = "channel, external_id" if by_channel else "external_id"
    conflict = con.execute(f"""
        SELECT {key}, min(member_id), max(member_id), min(_row) AS _first FROM id_lines
        WHERE _status IS NULL GROUP BY {key} HAVING count(DISTINCT member_id) > 1
        ORDER BY _first LIMIT 1""").fetchone()
    if conflict:
        *k, first, second, _ = conflict
        acct = f"external id {k[-1]!r}" + (f" on channel {k[0]!r}" if by_channel else "")
        raise InputError(f"{src.path}: {acct} maps to two member ids ({first!r} and {second!r}); "
                         "an account can belong to one member only, fix the identities file")
    # Without a channel on the lines, an account id is looked up whatever its channel.
    con.execute(f"CREATE TABLE ident AS SELECT DISTINCT {key}, member_id FROM id_lines "
                "WHERE _status IS NULL")
    rejected = _status_counts(con, "id_lines", ("missing_channel", "missing_external_id",
                                                "missing_member_id"))
    accounts, members = con.execute("SELECT count(*), count(DISTINCT member_id) FROM ident").fetchone()
    return {**_section(rows_in, rejected, malformed, _malformed(con, src)[1]),
            "accounts": accounts, "members": members, "join_on": key.replace(" ", "")}


def _stage_products(con: duckdb.DuckDBPyConnection, src: _Source, strict: bool) -> dict[str, Any]:
    canon = (Col.PRODUCT, Col.CATEGORY, Col.PRICE, Col.BRAND, Col.NAME, Col.LAUNCHED_AT)
    # Without a price column every price comes from the lines: that is no repair.
    bad_price = "price IS NULL" if Col.PRICE in src.columns else "false"
    _read(con, src, f"""
        CREATE TABLE p_lines AS
        WITH k AS (SELECT *, {_cleaned(src, canon)} FROM ({src.numbered(canon)})),
        c AS (
            SELECT _row, r_product_id, r_category, r_price, r_launched_at, k_launched_at,
                   k_product_id AS product_id, k_category AS category,
                   TRY_CAST(k_price AS DOUBLE) AS price0,
                   CASE WHEN isfinite(price0) AND price0 > 0 THEN price0 END AS price,
                   k_brand AS brand, k_name AS name,
                   {_date_expr(src, Col.LAUNCHED_AT, 'k_launched_at')},
                   coalesce(k_product_id <> r_product_id, false) AS _trimmed
            FROM k)
        SELECT *,
               CASE WHEN product_id IS NULL THEN 'missing_product_id'
                    WHEN row_number() OVER (PARTITION BY product_id ORDER BY _row) > 1
                        THEN 'duplicate_product_id' END AS _status,
               {bad_price} AS _bad_price,
               category IS NULL AS _missing_category,
               launched_at IS NULL AND k_launched_at IS NOT NULL AS _bad_launched_at
        FROM c""")
    rows_in, malformed = _count_rows(con, src, "p_lines")
    if strict:
        _raise_first(con, src, "p_lines", "_status", {
            "bad_price": ("_bad_price", "r_price"),
            "missing_category": ("_missing_category", "r_category"),
            "bad_launched_at": ("_bad_launched_at", "r_launched_at")})
    con.execute("CREATE TABLE p_kept AS SELECT * FROM p_lines WHERE _status IS NULL")
    rejected = _status_counts(con, "p_lines", ("missing_product_id", "duplicate_product_id"))
    repaired = dict(zip(("trimmed_id", "bad_price", "missing_category", "bad_launched_at"),
                        con.execute("""
        SELECT count(*) FILTER (WHERE _trimmed), count(*) FILTER (WHERE _bad_price),
               count(*) FILTER (WHERE _missing_category), count(*) FILTER (WHERE _bad_launched_at)
        FROM p_kept""").fetchone(), strict=True))
    con.execute("DROP TABLE p_lines")
    return {**_section(rows_in, rejected, malformed, _malformed(con, src)[1]),
            "repaired_by_reason": repaired}


def _stage_members(con: duckdb.DuckDBPyConnection, src: _Source, strict: bool) -> dict[str, Any]:
    canon = (Col.MEMBER, Col.JOINED_AT, Col.AGE_GROUP, Col.REGION)
    _read(con, src, f"""
        CREATE TABLE m_lines AS
        WITH k AS (SELECT *, {_cleaned(src, canon)} FROM ({src.numbered(canon)})),
        c AS (
            SELECT _row, r_member_id, r_joined_at, k_joined_at, k_member_id AS member_id,
                   {_date_expr(src, Col.JOINED_AT, 'k_joined_at')},
                   k_age_group AS age_group, k_region AS region,
                   coalesce(k_member_id <> r_member_id, false) AS _trimmed
            FROM k)
        SELECT *,
               CASE WHEN member_id IS NULL THEN 'missing_member_id'
                    WHEN row_number() OVER (PARTITION BY member_id ORDER BY _row) > 1
                        THEN 'duplicate_member_id' END AS _status,
               joined_at IS NULL AND k_joined_at IS NOT NULL AS _bad_joined_at
        FROM c""")
    rows_in, malformed = _count_rows(con, src, "m_lines")
    if strict:
        _raise_first(con, src, "m_lines", "_status",
                     {"bad_joined_at": ("_bad_joined_at", "r_joined_at")})
    con.execute("CREATE TABLE m_kept AS SELECT * FROM m_lines WHERE _status IS NULL")
    rejected = _status_counts(con, "m_lines", ("missing_member_id", "duplicate_member_id"))
    repaired = dict(zip(("trimmed_id", "bad_joined_at"), con.execute(
        "SELECT count(*) FILTER (WHERE _trimmed), count(*) FILTER (WHERE _bad_joined_at) FROM m_kept"
    ).fetchone(), strict=True))
    con.execute("DROP TABLE m_lines")
    return {**_section(rows_in, rejected, malformed, _malformed(con, src)[1]),
            "repaired_by_reason": repaired}


def _stage_transactions(con: duckdb.DuckDBPyConnection, src: _Source, has_ident: bool,
                        has_products: bool, strict: bool, rules: dict[str, str]) -> dict[str, Any]:
    canon = tuple(TRANSACTIONS.columns)
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
    if not has_products:
        rules = {r: sql for r, sql in rules.items() if r != "unknown_product"}
    status = "\n".join(f"WHEN {sql} THEN '{reason}'" for reason, sql in rules.items())
    # The raw text of the value a rejected (or cost-repaired) line was refused for, for --strict.
    bad_value = "\n".join(f"WHEN '{reason}' THEN r_{_REASON_COLUMN[reason]}"
                          for reason in (*rules, "unparseable_cost"))
    # Exact duplicates collapse in a spillable GROUP BY, in the same single pass over the file
    # that validates the lines: no table of all lines (nor of their raw text) is ever held. A
    # group is one status and one set of cleaned values; its smallest line number is the first
    # occurrence, and its flags are the ones that describe the kept line. Rejected lines are
    # grouped too (only their count is needed). Unmapped columns are NULL on every line, so they
    # are left out of the key and added back as NULL.
    key_cols = [c for c in _TXN_KEY if c in src.columns]
    unmapped = "".join(f", CAST(NULL AS {'DOUBLE' if c == Col.COST else 'STRING'}) AS {c}"
                       for c in _TXN_KEY if c not in src.columns)
    key = ", ".join(key_cols)
    # --strict also needs each group's second line (a duplicate), its first repaired cost and
    # the raw text of the value its first bad line was refused for.
    strict_cols = ("""min(_row, 2) AS _rows2, min(_row) FILTER (WHERE _bad_cost) AS _first_bad_cost,
                      min_by(_bad_value, _row) FILTER (WHERE _status IS NOT NULL OR _bad_cost)
                          AS _bad_value,""" if strict else "")
    _read(con, src, f"""
        CREATE TABLE t_groups AS
        WITH k AS (SELECT *, {_cleaned(src, canon)} FROM ({src.numbered(canon)})),
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
                   CASE {status} END AS _status,
                   _has_cost AND (cost0 IS NULL OR NOT isfinite(cost0)) AS _bad_cost
            FROM f),
        l AS (
            SELECT _row, _status, _bad_cost, _trimmed, _folded,
                   {"CASE coalesce(_status, CASE WHEN _bad_cost THEN 'unparseable_cost' END) "
                    + bad_value + " END" if strict else "NULL"} AS _bad_value,
                   member_id, product_id, ts, quantity, amount,
                   CASE WHEN _bad_cost THEN NULL ELSE cost0 END AS cost,
                   channel, store_id, basket_id, {", ".join(_TXN_ATTRS)}
            FROM s)
        SELECT _status, count(*) AS _n, min(_row) AS _row, min_by(_trimmed, _row) AS _trimmed,
               min_by(_folded, _row) AS _folded, min_by(_bad_cost, _row) AS _bad_cost,
               {strict_cols} {key}{unmapped}
        FROM l
        GROUP BY _status, {key}""")
    con.execute("CREATE VIEW t_kept AS SELECT * FROM t_groups WHERE _status IS NULL")
    counts: dict[str | None, int] = {}
    rows_kept = 0
    for status, n, groups in con.execute(
            "SELECT _status, sum(_n), count(*) FROM t_groups GROUP BY _status").fetchall():
        counts[status] = int(n)
        if status is None:
            rows_kept = int(groups)
    rows_read = sum(counts.values())
    malformed = _check_rows(con, src, rows_read)
    if strict:
        _raise_first_transaction(con, src, key_cols)

    counts["duplicate"] = counts.pop(None, 0) - rows_kept
    counts["malformed_row"] = malformed
    repaired = dict(zip(REPAIR_REASONS, con.execute("""
        SELECT count(*) FILTER (WHERE _trimmed), count(*) FILTER (WHERE _folded),
               count(*) FILTER (WHERE _bad_cost)
        FROM t_kept""").fetchone(), strict=True))
    return {"rows_in": rows_read + malformed, "rows_kept": rows_kept, "rejected": counts,
            "repaired": repaired, "malformed_rows": _malformed(con, src)[1]}


# --------------------------------------------------------------------------------------------
# strict mode


def _raise_first(con: duckdb.DuckDBPyConnection, src: _Source, table: str, status: str,
                 soft: dict[str, tuple[str, str]] | None = None) -> None:
    """Raise for the lowest-numbered row whose ``status`` is set or that has a ``soft`` issue
    (or for a malformed line before it).

    ``soft`` maps an issue name to (flag column, raw column): values that a lenient run repairs
    but that strict mode refuses.
    """
    soft = soft or {}
    issue = f"coalesce({status}, " + "".join(
        f"CASE WHEN {flag} THEN '{name}' ELSE " for name, (flag, _) in soft.items()
    ) + "NULL" + " END" * len(soft) + ")"
    row = con.execute(f"SELECT _row, {issue} FROM {table} WHERE {issue} IS NOT NULL "
                      "ORDER BY _row LIMIT 1").fetchone()
    _strict_malformed(con, src, None if row is None else _line_of(con, src, row[0]))
    if row is None:
        return
    line, reason = row
    raw_col = soft[reason][1] if reason in soft else f"r_{_REASON_COLUMN[reason]}"
    value = con.execute(f"SELECT {raw_col} FROM {table} WHERE _row = ?", [line]).fetchone()[0]
    column = _REASON_COLUMN[reason]
    raise StrictValidationError(src.path, _line_of(con, src, int(line)),
                                src.columns.get(column, column), "" if value is None else value,
                                reason)


def _raise_first_transaction(con: duckdb.DuckDBPyConnection, src: _Source,
                             key_cols: list[str]) -> None:
    """The first issue among the groups: a rejected line, a repaired cost or a duplicate."""
    bad = con.execute("""
        SELECT line, reason, _bad_value FROM (
            SELECT _row AS line, _status AS reason, _bad_value FROM t_groups
            WHERE _status IS NOT NULL
            UNION ALL
            SELECT _first_bad_cost, 'unparseable_cost', _bad_value FROM t_groups
            WHERE _status IS NULL AND _first_bad_cost IS NOT NULL)
        ORDER BY line LIMIT 1""").fetchone()
    dup = con.execute("""
        SELECT list_extract(_rows2, 2), list_extract(_rows2, 1) FROM t_groups
        WHERE _status IS NULL AND _n > 1 ORDER BY list_extract(_rows2, 2) LIMIT 1""").fetchone()
    first = min((r[0] for r in (dup, bad) if r is not None), default=None)
    _strict_malformed(con, src, None if first is None else _line_of(con, src, first))
    if dup is not None and (bad is None or dup[0] < bad[0]):
        raise StrictValidationError(src.path, _line_of(con, src, int(dup[0])),
                                    "(all mapped columns)",
                                    f"same as row {_line_of(con, src, int(dup[1]))}", "duplicate")
    if bad is not None:
        line, reason, value = bad
        column = _REASON_COLUMN[reason]
        # An empty CSV field reads as NULL; report it as the empty text the user sees.
        raise StrictValidationError(src.path, _line_of(con, src, int(line)),
                                    src.columns.get(column, column),
                                    "" if value is None else value, reason)


# --------------------------------------------------------------------------------------------
# outputs


PRICE_FROM_LINES = "median amount / quantity of its kept sales lines"


def _write_outputs(con: duckdb.DuckDBPyConnection, out_dir: Path, tmp_dir: Path,
                   prod: _Source | None, has_members: bool,
                   tables: dict[str, dict[str, Any]], brand_prefix: int | None = None) -> dict[str, int]:
    staged = tmp_dir / "out"
    staged.mkdir()
    # A NULL-only column gets an explicit type so the Parquet schema is the same for every source.
    txn_cols = ", ".join(
        f"CAST({'amount / quantity' if c == Col.UNIT_PRICE else c} AS {t}) AS {c}"
        for c, t in TRANSACTION_OUTPUT.items())
    _copy(con, f"SELECT {txn_cols} FROM t_kept ORDER BY ts, member_id, _row",
          staged / "transactions.parquet")

    line_price = "SELECT product_id, median(amount / quantity) AS line_price FROM t_kept GROUP BY 1"
    brand = Col.BRAND
    if brand_prefix is not None:  # a barcode's leading digits name its maker (MappingConfig)
        brand = (f"coalesce({Col.BRAND}, CASE WHEN length({Col.PRODUCT}) >= {BARCODE_MIN_LENGTH} "
                 f"THEN substr({Col.PRODUCT}, 1, {int(brand_prefix)}) END)")
    if prod is not None:
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
    prod_cols = ", ".join(f"CAST({brand if c == Col.BRAND else c} AS {t}) AS {c}" for c, t in PRODUCT_OUTPUT.items())
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
    priced, unpriced, branded = con.execute(
        f"SELECT count(price), count(*) - count(price), count(brand) "
        f"FROM read_parquet({_lit(str(staged / 'products.parquet'))})").fetchone()
    for name in ("transactions", "products", "members"):
        file = staged / f"{name}.parquet"
        # Moved only once all three are written: a failed run never mixes old and new tables.
        os.replace(file, out_dir / file.name)
    for name, given in (("products", prod is not None), ("members", has_members)):
        section = tables.setdefault(name, {})
        section["derived_from"] = "table" if given else "transaction lines"
        section["rows_out"] = outputs[f"{name}.parquet"]
    listed = prod is not None and Col.PRICE in prod.columns
    tables["products"]["price"] = {
        "source": (f"list price column {prod.columns[Col.PRICE]!r}, else the {PRICE_FROM_LINES}"
                   if listed else PRICE_FROM_LINES),
        "derived": not listed, "priced": int(priced), "without_price": int(unpriced)}
    if brand_prefix is not None:
        tables["products"]["brand"] = {
            "source": f"the brand column, else the first {brand_prefix} characters of a barcode-like id "
                      f"({BARCODE_MIN_LENGTH}+ characters)",
            "branded": int(branded)}
    return outputs


def _copy(con: duckdb.DuckDBPyConnection, query: str, path: Path) -> None:
    con.execute(f"COPY ({query}) TO {_lit(str(path))} (FORMAT parquet, COMPRESSION zstd)")


def _mode(key: str, attr: str) -> str:
    """Per ``key``, the most frequent non-NULL ``attr`` on kept lines (ties: smallest value)."""
    return f"""
        SELECT {key}, {attr} AS v FROM (
            SELECT {key}, {attr}, row_number() OVER (PARTITION BY {key} ORDER BY n DESC, {attr}) AS _rk
            FROM (SELECT {key}, {attr}, count(*) AS n FROM t_kept
                  WHERE {attr} IS NOT NULL GROUP BY ALL) AS counted) AS ranked
        WHERE _rk = 1"""


# --------------------------------------------------------------------------------------------
# SQL helpers


def _ts_expr(src: _Source, canonical: str, cleaned: str) -> str:
    if canonical in src.temporal:  # Parquet DATE / TIMESTAMP: already typed, ignore ts_format
        return f"TRY_CAST({cleaned} AS TIMESTAMP)"
    if src.mapping.ts_format:
        return f"CAST(try_strptime({cleaned}, {_lit(src.mapping.ts_format)}) AS TIMESTAMP)"
    return f"TRY_CAST({cleaned} AS TIMESTAMP)"


def _date_expr(src: _Source, canonical: str, cleaned: str) -> str:
    """A member's or product's date, ``<canonical>0`` parsed like a line's and ``<canonical>``
    the same but NULL outside the plausible window (two items of one SELECT list)."""
    lo, hi = src.window
    parsed = f"{canonical}0"
    return (f"{_ts_expr(src, canonical, cleaned)} AS {parsed}, "
            f"CASE WHEN {parsed} >= {lo} AND {parsed} < {hi} THEN {parsed} END AS {canonical}")


def _status_counts(con: duckdb.DuckDBPyConnection, table: str, reasons: tuple[str, ...]) -> dict[str, int]:
    found = dict(con.execute(f"SELECT _status, count(*) FROM {table} WHERE _status IS NOT NULL "
                             "GROUP BY _status").fetchall())
    return {r: int(found.get(r, 0)) for r in reasons}


def _table_exists(con: duckdb.DuckDBPyConnection, name: str) -> bool:
    return bool(con.execute("SELECT count(*) FROM duckdb_tables() WHERE table_name = ?",
                            [name]).fetchone()[0])


def _cleaned(src: _Source, canonical: tuple[str, ...]) -> str:
    """``k_<c>``: each mapped ``r_<c>`` trimmed of whitespace, empty as NULL (unmapped: NULL)."""
    return ", ".join(
        f"{_clean('r_' + c) if c in src.columns else 'CAST(NULL AS STRING)'} AS k_{c}"
        for c in canonical)


def _clean(column: str) -> str:
    """Trimmed text, with empty strings as NULL."""
    # trim() with a character set is several times slower than a look at the two ends, and
    # almost no value needs it. Plain comparisons: an IN list here would plan as a join.
    ends = " OR ".join(
        f"{end}({column}, 1) <= ' '" if ch == " " else f"{end}({column}, 1) = {_lit(ch)}"
        for end in ("left", "right") for ch in (" ", "\u00a0", "\ufeff"))
    return (f"CASE WHEN {ends} THEN NULLIF(trim({column}, {_lit(_WS)}), '') "
            f"WHEN {column} = '' THEN NULL ELSE {column} END")


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _lit(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _ts_lit(value: datetime) -> str:
    return f"TIMESTAMP '{value.isoformat(sep=' ', timespec='microseconds')}'"


def _one_line_text(text: str) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= 300 else text[:297] + "..."


def _one_line(exc: BaseException) -> str:
    return _one_line_text(str(exc))
