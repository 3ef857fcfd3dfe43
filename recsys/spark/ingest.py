"""``recsys data ingest --engine spark``: the DuckDB ingest's own statements, run on Spark.

:func:`recsys.data.ingest.ingest` issues the same statements whichever engine runs them -- the
cleaning, the rejection rules (``REJECT_RULES``), identity folding, deduplication, the canonical
tables and every count of the report. :class:`SparkConnection` takes them as DuckDB would
(``CREATE TABLE / VIEW ... AS``, ``SELECT``, ``COPY ... TO``) and runs each through
:func:`recsys.dialect.to_spark`, the one place where the two spellings differ. What is Spark's own
is only how a file is read: :func:`open_source` reads a CSV with Spark's reader (every field as
text; a line that does not split into the header's fields is kept aside in ``PERMISSIVE`` mode
and counted as ``malformed_row``) or a Parquet file, and numbers the lines in file order.

On a cluster the mapping's paths must be readable by the driver (the report hashes them) and by
every executor (a shared filesystem); the output folder likewise.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from recsys.data.ingest import SQLFailure, ValidationReport, _one_line, _open_source, _Source
from recsys.data.mapping import TableMapping
from recsys.dialect import quote_spark, to_spark

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

    from recsys.spark.session import SparkSettings

_CREATE = re.compile(r"^\s*CREATE\s+(?:TEMP\s+)?(TABLE|VIEW)\s+(\w+)\s+AS\s+(.*)$", re.S | re.I)
_DROP = re.compile(r"^\s*DROP\s+(?:TABLE|VIEW)\s+(\w+)\s*$", re.I)
_COPY = re.compile(r"^\s*COPY\s+\((.*)\)\s+TO\s+'((?:[^']|'')*)'\s+\(FORMAT parquet, COMPRESSION zstd\)\s*$", re.S)
CORRUPT = "_corrupt_line"  # Spark's column for a CSV line it could not split into the header's fields


class _Result:
    def __init__(self, rows: list[tuple[Any, ...]]):
        self.rows = rows

    def fetchall(self) -> list[tuple[Any, ...]]:
        return self.rows

    def fetchone(self) -> tuple[Any, ...] | None:
        return self.rows[0] if self.rows else None


class SparkConnection:
    """The statements :mod:`recsys.data.ingest` gives DuckDB, run on Spark SQL: a table is a
    cached temporary view, a ``COPY`` one Parquet file written in the query's order."""

    engine = "spark"

    def __init__(self, spark: SparkSession):
        self.spark = spark
        self.views: dict[str, DataFrame | None] = {}

    def sql(self, sql: str) -> DataFrame:
        from pyspark.errors import PySparkException

        try:
            return self.spark.sql(to_spark(sql))
        except (PySparkException, ValueError) as exc:
            raise SQLFailure(_one_line(exc).split(" SQLSTATE")[0]) from None

    def register(self, name: str, frame: DataFrame, cached: bool) -> None:
        if cached:
            frame = frame.cache()
        frame.createOrReplaceTempView(name)
        self.views[name] = frame if cached else None

    def execute(self, sql: str, params: list[Any] | None = None) -> _Result:
        from pyspark.errors import PySparkException

        for value in params or []:  # the ingest passes only integers
            sql = sql.replace("?", str(int(value)), 1)
        if sql.lstrip().upper().startswith("SET "):
            return _Result([])  # DuckDB's own settings (insertion order, memory): nothing here
        if m := _CREATE.match(sql):
            self.register(m.group(2), self.sql(m.group(3)), cached=m.group(1).upper() == "TABLE")
            return _Result([])
        if m := _DROP.match(sql):
            self.drop(m.group(1))
            return _Result([])
        try:
            if m := _COPY.match(sql):
                return _Result([(self.copy(m.group(1), Path(m.group(2).replace("''", "'"))),)])
            return _Result([tuple(row) for row in self.sql(sql).collect()])
        except PySparkException as exc:
            raise SQLFailure(_one_line(exc).split(" SQLSTATE")[0]) from None

    def copy(self, query: str, target: Path) -> int:
        """``query`` (its ORDER BY last) as one Parquet file: the sorted partitions are joined
        in order, never shuffled again."""
        from recsys.spark.session import write_single_parquet

        return write_single_parquet(self.sql(query).coalesce(1), target)

    def drop(self, name: str) -> None:
        frame = self.views.pop(name, None)
        if frame is not None:
            frame.unpersist()
        self.spark.catalog.dropTempView(name)

    def close(self) -> None:
        for name in list(self.views):
            self.drop(name)


class SparkSource(_Source):
    """A source read by Spark: ``raw_<table>`` holds every line read, numbered by its line in
    the file (``_row``, header = 1), malformed lines marked in :data:`CORRUPT`."""

    row_is_line = True

    @staticmethod
    def ident(name: str) -> str:
        return quote_spark(name)

    @property
    def view(self) -> str:
        return f"raw_{self.table}"

    def numbered(self, canonical: tuple[str, ...]) -> str:
        cols = ", ".join(f"{self.raw(c)} AS r_{c}" for c in canonical)
        where = f" WHERE {CORRUPT} IS NULL" if self.is_csv else ""
        return f"SELECT _row, {cols} FROM {self.view}{where}"


def _reader(spark: SparkSession, tm: TableMapping) -> Any:
    reader = spark.read.option("header", True).option("escape", '"').option("multiLine", False)
    if tm.delimiter:
        reader = reader.option("sep", tm.delimiter)
    if tm.encoding:
        reader = reader.option("encoding", tm.encoding)
    return reader


def open_source(con: SparkConnection, table: str, tm: TableMapping, tmp_dir: Path,
                window: tuple[str, str]) -> SparkSource:
    """The mapped columns resolved as the DuckDB ingest resolves them, then the file read into
    ``raw_<table>`` with its lines numbered and its malformed lines counted."""
    from pyspark.sql import functions as F  # noqa: N812
    from pyspark.sql.types import (
        DateType,
        StringType,
        StructField,
        StructType,
        TimestampNTZType,
        TimestampType,
    )

    spark = con.spark

    def describe(src: _Source) -> dict[str, str]:
        path = str(src.read_path)
        if src.is_csv:
            return {name: "VARCHAR" for name in _reader(spark, tm).csv(path).columns}
        temporal = {DateType: "DATE", TimestampType: "TIMESTAMP", TimestampNTZType: "TIMESTAMP"}
        return {f.name: temporal.get(type(f.dataType), f.dataType.simpleString().upper())
                for f in spark.read.parquet(path).schema.fields}

    src = _open_source(con, table, tm, tmp_dir, window, describe=describe, source_class=SparkSource)
    try:
        if src.is_csv:
            header = _reader(spark, tm).csv(str(src.read_path)).columns
            schema = StructType([StructField(n, StringType()) for n in header]
                                + [StructField(CORRUPT, StringType())])
            frame = (_reader(spark, tm).schema(schema).option("mode", "PERMISSIVE")
                     .option("columnNameOfCorruptRecord", CORRUPT).csv(str(src.read_path)))
        else:
            frame = spark.read.parquet(str(src.read_path))
        frame = frame.withColumn("_id", F.monotonically_increasing_id()).withColumn("_part", F.spark_partition_id())
        frame = frame.cache()
        con.views[f"_{src.view}"] = frame
        # Dense line numbers in file order: each partition's rows come after the earlier ones'.
        sizes = dict(frame.groupBy("_part").count().collect())
        offsets, start = {}, 0
        for part in sorted(sizes):
            offsets[part], start = start, start + sizes[part]
        offset = F.create_map(*[F.lit(x) for kv in offsets.items() for x in kv]) if offsets else F.lit(None)
        numbered = frame.withColumn(
            "_row", (F.col("_id") - F.shiftleft(F.col("_part").cast("long"), 33) + offset[F.col("_part")] + 2))
        con.register(src.view, numbered, cached=False)
        if src.is_csv:
            delimiter = tm.delimiter or ","
            bad = con.spark.sql(f"SELECT _row, {CORRUPT} FROM {src.view} WHERE {CORRUPT} IS NOT NULL ORDER BY _row")
            n_bad = bad.count()
            shown = []
            for row, text in bad.limit(5).collect():
                fields = len(text.split(delimiter))  # as counted by a split on the delimiter
                kind = "too many columns" if fields > len(header) else "missing columns"
                shown.append({"line": int(row), "error": f"{kind}: expected {len(header)} fields, found {fields}",
                              "text": text})
            src.malformed = (int(n_bad), shown)
        else:
            src.malformed = (0, [])
    except SQLFailure:
        raise
    except Exception as exc:  # a file Spark cannot read is the input's fault, as on DuckDB
        from pyspark.errors import PySparkException

        if not isinstance(exc, PySparkException):
            raise
        from recsys.errors import InputError

        raise InputError(f"{src.path}: cannot read it: {_one_line(exc).split(' SQLSTATE')[0]}") from None
    return src


def run_on_spark(settings: SparkSettings | None,
                 run: Callable[[SparkConnection, Callable[..., SparkSource]], ValidationReport]) -> ValidationReport:
    """``run`` (the ingest) on a Spark session made from ``settings``; its views are dropped after."""
    from recsys.spark.session import spark_session

    with spark_session(settings) as spark:
        con = SparkConnection(spark)
        try:
            return run(con, open_source)
        finally:
            con.close()
