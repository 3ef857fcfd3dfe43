"""The two engines the feature build runs on: DuckDB (one machine, the default) and Spark.

:func:`features.build.build_features` drives the same steps through either -- define the views
of ``features/sql``, check each tag's SQL, write each table sorted by its key, read counts back --
with the same SQL text: DuckDB runs it as written; Spark runs it through
:func:`recsys.dialect.to_spark`, the one place where the two spellings differ. Both write one
Parquet file per table (zstd), rows in key order, so the snapshots compare file by file.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import duckdb

from recsys.dialect import quote_spark, to_spark

if TYPE_CHECKING:
    from pyspark.sql import SparkSession


def _sql_path(path: Path) -> str:
    return "'" + str(path).replace("'", "''") + "'"


class DuckDBEngine:
    """DuckDB, out of core: the single-machine feature build."""

    name = "duckdb"
    errors: tuple[type[BaseException], ...] = (duckdb.Error,)

    def __init__(self, con: duckdb.DuckDBPyConnection):
        self.con = con

    def quote(self, name: str) -> str:
        return f'"{name}"'

    def parquet(self, path: Path) -> str:
        return f"read_parquet({_sql_path(path)})"

    def view(self, name: str, sql: str, reused: bool = False) -> None:
        """A view; DuckDB streams it into each query that reads it (``reused`` changes nothing)."""
        self.con.execute(f"CREATE TEMP VIEW {name} AS {sql}")

    def table(self, name: str, sql: str) -> None:
        self.con.execute(f"CREATE TEMP TABLE {name} AS {sql}")

    def columns(self, sql: str) -> list[str]:
        return [r[0] for r in self.con.execute(f"DESCRIBE {sql}").fetchall()]

    def fetchall(self, sql: str) -> list[tuple[Any, ...]]:
        return self.con.execute(sql).fetchall()

    def copy(self, sql: str, order: str, target: Path) -> int:
        (n,) = self.con.execute(
            f"COPY (SELECT * FROM ({sql}) AS f ORDER BY {order}) TO {_sql_path(target)} "
            "(FORMAT parquet, COMPRESSION zstd)"
        ).fetchone() or (0,)
        return int(n)


class SparkEngine:
    """Spark SQL over the same views, through :func:`recsys.dialect.to_spark`."""

    name = "spark"
    # DuckDB SQL -> Spark SQL (recsys.dialect.to_spark; the benchmark swaps in sqlglot's to compare)
    translate = staticmethod(to_spark)

    def __init__(self, spark: SparkSession):
        from pyspark.errors import PySparkException

        self.spark = spark
        self.errors: tuple[type[BaseException], ...] = (PySparkException, ValueError)
        self._cached: list[Any] = []

    def quote(self, name: str) -> str:
        return quote_spark(name)

    def parquet(self, path: Path) -> str:
        return f"parquet.{quote_spark(str(path))}"

    def sql(self, sql: str) -> Any:
        return self.spark.sql(self.translate(sql))

    def view(self, name: str, sql: str, reused: bool = False) -> None:
        """A view; ``reused`` (the purchase lines, read by every feature) is cached on first use
        rather than scanned and joined again by each query that reads it."""
        frame = self.sql(sql)
        if reused:
            frame = frame.cache()
            self._cached.append(frame)
        frame.createOrReplaceTempView(name)

    def table(self, name: str, sql: str) -> None:
        frame = self.sql(sql).cache()
        self._cached.append(frame)
        frame.createOrReplaceTempView(name)

    def columns(self, sql: str) -> list[str]:
        return list(self.sql(sql).columns)  # analysed, not run: binds the SQL like DESCRIBE

    def fetchall(self, sql: str) -> list[tuple[Any, ...]]:
        return [tuple(row) for row in self.sql(sql).collect()]

    def copy(self, sql: str, order: str, target: Path) -> int:
        """One Parquet file sorted by ``order`` (Spark writes a folder of parts; the one part
        becomes ``target``)."""
        frame = self.sql(f"SELECT * FROM ({sql}) AS f").repartition(1).sortWithinPartitions(order)
        from recsys.spark.session import write_single_parquet

        return write_single_parquet(frame, target)

    def close(self) -> None:
        for frame in self._cached:
            frame.unpersist()
        for view in ("transactions", "products", "members", "lines", "category_price_bands",
                     "member_base", "product_base"):
            self.spark.catalog.dropTempView(view)
