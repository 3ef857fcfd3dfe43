"""The one place where the DuckDB spelling of the project's SQL and Spark SQL's differ.

The ingest's SQL (:mod:`recsys.data.ingest`: cleaning, the rejection rules, deduplication, the
canonical tables) and every feature definition (``features/sql/*.sql``, the tags' SQL in :mod:`recsys.tags`) is written
once, for DuckDB, in the subset of SQL both engines share plus a few engine shims that
``duckdb_functions.sql`` defines as DuckDB macros. :func:`to_spark` turns such SQL into Spark SQL by
expanding each shim into its Spark spelling (:data:`SPARK_SHIMS`), and nothing else: the shared
subset means the same in both engines.

``sqlglot`` (DuckDB -> Spark transpilation) was measured against these hand-kept shims on the
feature SQL (``tests/test_features_spark.py`` keeps the measurement): it gets the null ordering of
``ORDER BY ... ASC`` right, which the shared subset avoids needing, but it rewrites three
constructs the features rely on into something else -- ``list(v ORDER BY k)`` into an unordered
``COLLECT_LIST(v)``, the exact ``PERCENTILE_CONT(q) WITHIN GROUP (ORDER BY x)`` into the
approximate ``PERCENTILE_APPROX``, and ``len(list)`` into the string ``LENGTH`` -- each a silent
change of the outputs. :func:`to_spark_sqlglot` is kept for that comparison; :func:`to_spark`
is what the Spark feature build runs.

The ingest's SQL is plain DuckDB (no macros): its Spark spellings here are for DuckDB built-ins --
``isfinite``, ``trim(s, characters)``, ``try_strptime`` (its strptime format becomes a Java
pattern), ``median`` (spelt out with DuckDB's arithmetic, the mean of the two middle values, where
Spark's ``median`` interpolates and can differ in the last bit), ``min(v, n)`` (the n smallest as a
list), ``list_extract`` (1-based) and ``read_parquet``. A call of a name with no spelling for the
engine asked for is left as it is.
"""

from __future__ import annotations

import re
from collections.abc import Callable

# DuckDB macro -> its Spark SQL spelling, given the call's arguments as SQL text.
SPARK_SHIMS: dict[str, Callable[[list[str]], str]] = {
    # whole calendar days from the date of start to the date of end
    "days_between": lambda a: f"CAST(datediff(CAST({a[1]} AS DATE), CAST({a[0]} AS DATE)) AS BIGINT)",
    # aggregate: the group's values as a list ordered by sort_key (ties: by value)
    "ordered_list": lambda a: (f"transform(array_sort(collect_list(named_struct('k', {a[1]}, 'v', {a[0]}))), "
                               "x -> x.v)"),
    "empty_text_list": lambda a: "CAST(array() AS ARRAY<STRING>)",
    # aggregate: a sum exact to a millionth, whatever order the lines are added in (same SQL)
    "exact_sum": lambda a: f"CAST(SUM(CAST(round({a[0]} * 1000000) AS BIGINT)) AS DOUBLE) / 1000000",
    # aggregate: the group's non-NULL values as an ascending list of doubles
    "sorted_values": lambda a: f"array_sort(collect_list(CAST({a[0]} AS DOUBLE)))",
    # the q-quantile of an ascending list, with exactly the arithmetic of the DuckDB macro
    "interpolated_quantile": lambda a: _interpolated_quantile(a[0], a[1]),
    # DuckDB built-ins the ingest uses
    "isfinite": lambda a: f"(NOT isnan({a[0]}) AND abs({a[0]}) < double('infinity'))",
    "trim": lambda a: f"btrim({a[0]}, {a[1]})" if len(a) == 2 else f"trim({a[0]})",
    "try_strptime": lambda a: f"try_to_timestamp({a[0]}, {java_pattern(a[1])})",
    "median": lambda a: _median(a[0]),
    "min": lambda a: f"slice(array_sort(collect_list({a[0]})), 1, {a[1]})" if len(a) == 2 else f"min({a[0]})",
    "list_extract": lambda a: f"element_at({a[0]}, {a[1]})",
    "read_parquet": lambda a: f"parquet.{quote_spark(_unquote(a[0]))}",
}


def _interpolated_quantile(sorted_list: str, q: str) -> str:
    pos = f"(CAST({q} AS DOUBLE) * (size(_s) - 1))"
    at = lambda fn: f"element_at(_s, CAST({fn}({pos}) AS INT) + 1)"  # noqa: E731
    return (f"transform(array({sorted_list}), _s -> CASE WHEN size(_s) = 0 THEN NULL ELSE "
            f"{at('floor')} + ({at('ceil')} - {at('floor')}) * ({pos} - floor({pos})) END)[0]")

def _median(value: str) -> str:
    """DuckDB's ``median`` of doubles: the middle value, or the mean of the two middle ones."""
    n = "size(_s)"
    half = f"CAST({n} / 2 AS INT)"
    return (f"transform(array(array_sort(collect_list(CAST({value} AS DOUBLE)))), _s -> CASE WHEN {n} = 0 "
            f"THEN NULL WHEN {n} % 2 = 1 THEN element_at(_s, {half} + 1) ELSE "
            f"(element_at(_s, {half}) + element_at(_s, {half} + 1)) / 2 END)[0]")


def _unquote(literal: str) -> str:
    if not (len(literal) >= 2 and literal[0] == literal[-1] == "'"):
        raise ValueError(f"expected a string literal, got {literal}")
    return literal[1:-1].replace("''", "'")


# strptime directive -> the Java DateTimeFormatter letters Spark's to_timestamp reads
STRPTIME_TO_JAVA = {"Y": "yyyy", "y": "yy", "m": "MM", "d": "dd", "H": "HH", "I": "hh", "M": "mm", "S": "ss",
                    "f": "SSSSSS", "p": "a", "b": "MMM", "B": "MMMM", "j": "DDD"}


def java_pattern(literal: str) -> str:
    """A strptime format as an SQL literal (``'%Y-%m-%d %H:%M:%S'``) -> the literal of the Java
    pattern Spark's ``to_timestamp`` reads (``'yyyy-MM-dd HH:mm:ss'``); other text is quoted.

    >>> java_pattern("'%Y年%m月%d日 %H:%M:%S'")
    "'yyyy''年''MM''月''dd''日 ''HH'':''mm'':''ss'"
    """
    fmt, out, text = _unquote(literal), [], []
    q = "'"

    def flush() -> None:
        if text:  # Java quotes literal text with '...' ('' for a quote); SQL doubles every '
            out.append(q * 2 + "".join(text).replace(q, q * 4) + q * 2)
            text.clear()
    i = 0
    while i < len(fmt):
        if fmt[i] == "%" and i + 1 < len(fmt):
            d = fmt[i + 1]
            if d == "%":
                text.append("%")
            elif d in STRPTIME_TO_JAVA:
                flush()
                out.append(STRPTIME_TO_JAVA[d])
            else:
                raise ValueError(f"the strptime directive %{d} has no Spark spelling; these have: "
                                 + " ".join("%" + k for k in STRPTIME_TO_JAVA))
            i += 2
            continue
        text.append(fmt[i])
        i += 1
    flush()
    return q + "".join(out) + q


# How many arguments each shim takes (any of these).
ARITY: dict[str, tuple[int, ...]] = {
    "days_between": (2,), "ordered_list": (2,), "empty_text_list": (0,), "sorted_values": (1,),
    "interpolated_quantile": (2,), "exact_sum": (1,), "isfinite": (1,), "trim": (1, 2), "try_strptime": (2,),
    "median": (1,), "min": (1, 2), "list_extract": (2,), "read_parquet": (1,),
}

_CALL = re.compile(r"\b(" + "|".join(SPARK_SHIMS) + r")\s*\(", re.IGNORECASE)


def quote_spark(name: str) -> str:
    """An identifier quoted for Spark SQL (tag names are validated: no backtick can occur)."""
    return f"`{name}`"


def to_spark(sql: str) -> str:
    """DuckDB feature SQL as Spark SQL: every shim call expanded (nested calls too), comments
    dropped, the rest as is.

    Examples
    --------
    >>> to_spark("SELECT days_between(first_ts, DATE '2001-02-01') AS d FROM t -- recency")
    "SELECT CAST(datediff(CAST(DATE '2001-02-01' AS DATE), CAST(first_ts AS DATE)) AS BIGINT) AS d FROM t "
    """
    return expand(sql, SPARK_SHIMS)


def _quoted_spans(sql: str) -> list[tuple[int, int]]:
    """``(start, end)`` of every quoted string or name in ``sql`` (comments already stripped)."""
    spans, i, start, quote = [], 0, 0, None
    while i < len(sql):
        ch = sql[i]
        if quote:
            if ch == quote and sql[i + 1 : i + 2] == quote:
                i += 1  # '' inside a string
            elif ch == quote:
                spans.append((start, i + 1))
                quote = None
        elif ch in "'\"`":
            quote, start = ch, i
        i += 1
    return spans


def strip_comments(sql: str) -> str:
    """``sql`` without its ``--`` comments (a ``--`` inside a quoted string or name stays)."""
    out, i, quote = [], 0, None
    while i < len(sql):
        ch = sql[i]
        if quote:
            if ch == quote:
                quote = None
        elif ch in "'\"`":
            quote = ch
        elif sql.startswith("--", i):
            end = sql.find("\n", i)
            i = len(sql) if end < 0 else end
            continue
        out.append(ch)
        i += 1
    return "".join(out)


def _arguments(sql: str, start: int) -> tuple[list[str], int]:
    """The top-level comma-separated arguments of a call whose ``(`` ends at ``start``, and the
    position after its ``)``; quotes and nested parentheses are respected."""
    depth, args, current, i = 0, [], [], start
    quote: str | None = None
    while i < len(sql):
        ch = sql[i]
        if quote:
            current.append(ch)
            if ch == quote:
                if i + 1 < len(sql) and sql[i + 1] == quote:  # '' inside a string
                    current.append(sql[i + 1])
                    i += 1
                else:
                    quote = None
        elif ch in "'\"`":
            quote = ch
            current.append(ch)
        elif ch == "(":
            depth += 1
            current.append(ch)
        elif ch == ")":
            if depth == 0:
                text = "".join(current).strip()
                if text or args:
                    args.append(text)
                return args, i + 1
            depth -= 1
            current.append(ch)
        elif ch == "," and depth == 0:
            args.append("".join(current).strip())
            current = []
        else:
            current.append(ch)
        i += 1
    raise ValueError(f"unbalanced parentheses in: {sql[start - 20 : start + 60]}")


# The DuckDB macros of duckdb_functions.sql, for the sqlglot comparison (which needs plain DuckDB).
_DUCKDB_BODIES: dict[str, Callable[[list[str]], str]] = {
    "days_between": lambda a: f"date_diff('day', CAST({a[0]} AS DATE), CAST({a[1]} AS DATE))",
    "ordered_list": lambda a: f"list({a[0]} ORDER BY {a[1]})",
    "empty_text_list": lambda a: "CAST([] AS VARCHAR[])",
    "sorted_values": lambda a: f"list_sort(list(CAST({a[0]} AS DOUBLE)) FILTER (WHERE {a[0]} IS NOT NULL))",
    "exact_sum": lambda a: f"CAST(SUM(CAST(round({a[0]} * 1000000) AS BIGINT)) AS DOUBLE) / 1000000",
    "interpolated_quantile": lambda a: (
        f"CASE WHEN len({a[0]}) = 0 THEN NULL ELSE list_extract({a[0]}, CAST(floor(CAST({a[1]} AS DOUBLE) * "
        f"(len({a[0]}) - 1)) AS BIGINT) + 1) + (list_extract({a[0]}, CAST(ceil(CAST({a[1]} AS DOUBLE) * "
        f"(len({a[0]}) - 1)) AS BIGINT) + 1) - list_extract({a[0]}, CAST(floor(CAST({a[1]} AS DOUBLE) * "
        f"(len({a[0]}) - 1)) AS BIGINT) + 1)) * (CAST({a[1]} AS DOUBLE) * (len({a[0]}) - 1) - "
        f"floor(CAST({a[1]} AS DOUBLE) * (len({a[0]}) - 1))) END"),
}


def expand(sql: str, shims: dict[str, Callable[[list[str]], str]]) -> str:
    """``sql`` with every call of a shim replaced by ``shims[name](arguments)``."""
    sql = strip_comments(sql)
    quoted = _quoted_spans(sql)
    out, pos = [], 0
    for match in _CALL.finditer(sql):
        if match.start() < pos or any(a <= match.start() < b for a, b in quoted):
            continue  # inside a call already expanded, or inside a string / quoted name
        name = match.group(1).lower()
        args, end = _arguments(sql, match.end())
        if len(args) not in ARITY[name]:
            wanted = " or ".join(map(str, ARITY[name]))
            raise ValueError(f"{name}() takes {wanted} argument(s), got {len(args)}: {sql[match.start():end]}")
        out.append(sql[pos : match.start()])
        expanded = [expand(a, shims) for a in args]
        if name in shims:
            out.append(shims[name](expanded))
        else:  # no spelling for this engine: the call as written, its arguments expanded
            out.append(f"{sql[match.start():match.end()]}{', '.join(expanded)})")
        pos = end
    out.append(sql[pos:])
    return "".join(out)


def to_spark_sqlglot(sql: str) -> str:
    """The translation by ``sqlglot`` (DuckDB -> Spark) of ``sql`` with the shims expanded into
    the DuckDB they stand for; kept to measure it against :func:`to_spark` (module docstring)."""
    import sqlglot

    return ";\n".join(sqlglot.transpile(expand(sql, _DUCKDB_BODIES), read="duckdb", write="spark"))
