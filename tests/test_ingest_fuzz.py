"""No input file makes ingest show a traceback: random and mutated files give either a one-line
InputError that names the file, or a report in which every line is accounted for.

Each example starts from a small valid export in one of the formats ingest reads (CSV with
either delimiter, gzip CSV, a zip holding a CSV, Parquet; UTF-8 or UTF-16), then applies a few
mutations drawn by hypothesis: flipped bytes (inside compressed streams too), truncation,
inserted bytes, ragged rows, another encoding, or a file replaced by random binary / nothing.
The examples are derandomized and bounded, so the test takes seconds and never flakes; set
``RECSYS_FUZZ_EXAMPLES`` to run more of them (each run then explores new ones).
"""

from __future__ import annotations

import gzip
import io
import os
import tempfile
import zipfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from recsys.data.ingest import ingest
from recsys.data.mapping import MappingConfig
from recsys.errors import InputError

_EXAMPLES = int(os.environ.get("RECSYS_FUZZ_EXAMPLES", "0"))
FUZZ = settings(max_examples=_EXAMPLES or 30, deadline=None, derandomize=not _EXAMPLES,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

COLUMNS = {"member_id": "card", "product_id": "sku", "ts": "date", "quantity": "qty",
           "amount": "paid", "channel": "via"}
ROWS = [
    ("M1", "P1", "2024-01-01 10:00:00", "1", "10.5", "app"),
    ("M2", "P2", "2024-01-02 11:30:00", "2", "4", "pos"),
    ("M1", "P2", "2024-01-03 09:15:00", "1", "2", "mini"),
    ("M3", "P1", "2024-02-01 18:00:00", "3", "30", "pos"),
    ("会员4", "P3", "2024-02-02 08:00:00", "1", "9.9", "app"),
    ("M2", "P1", "2024-02-03 12:00:00", "1", "10", "pos"),
]
FORMATS = ("csv", "csv_semicolon", "csv_utf16", "csv.gz", "zip", "parquet")


def _csv_text(sep: str = ",") -> str:
    return "\n".join(sep.join(r) for r in [tuple(COLUMNS.values()), *ROWS]) + "\n"


def _base(fmt: str) -> tuple[str, bytes, dict]:
    """(file suffix, bytes, extra mapping keys) of a valid export in ``fmt``."""
    if fmt == "csv":
        return ".csv", _csv_text().encode(), {}
    if fmt == "csv_semicolon":
        return ".csv", _csv_text(";").encode(), {"delimiter": ";"}
    if fmt == "csv_utf16":
        return ".csv", _csv_text().encode("utf-16"), {"encoding": "utf-16"}
    if fmt == "csv.gz":
        return ".csv.gz", gzip.compress(_csv_text().encode(), mtime=0), {}
    if fmt == "zip":
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
            zf.writestr("export/lines.csv", _csv_text() * 3)
        return ".zip", buf.getvalue(), {}
    cols = list(zip(*ROWS, strict=True))
    table = pa.table({name: list(cols[i]) for i, name in enumerate(COLUMNS.values())})
    buf = io.BytesIO()
    pq.write_table(table, buf)
    return ".parquet", buf.getvalue(), {}


@st.composite
def mutation(draw: st.DrawFn) -> tuple:
    kind = draw(st.sampled_from(("flip", "truncate", "insert", "ragged", "reencode", "binary",
                                 "empty", "none")))
    if kind == "flip":
        return kind, draw(st.lists(st.tuples(st.floats(0, 1), st.integers(1, 255)),
                                   min_size=1, max_size=16))
    if kind in ("truncate", "insert"):
        return kind, draw(st.floats(0, 1)), draw(st.binary(min_size=1, max_size=40))
    if kind == "ragged":
        return kind, draw(st.integers(0, 20)), draw(st.sampled_from(("drop", "add", "quote")))
    if kind == "reencode":
        return kind, draw(st.sampled_from(("latin-1", "utf-16-le", "gb18030", "cp1252")))
    if kind == "binary":
        return kind, draw(st.binary(min_size=1, max_size=300))
    return (kind,)


def _apply(data: bytes, m: tuple) -> bytes:
    kind = m[0]
    if kind == "flip" and data:
        out = bytearray(data)
        for where, xor in m[1]:
            out[min(int(where * len(out)), len(out) - 1)] ^= xor
        return bytes(out)
    if kind == "truncate":
        return data[: int(m[1] * len(data))]
    if kind == "insert":
        at = int(m[1] * len(data))
        return data[:at] + m[2] + data[at:]
    if kind == "ragged":
        lines = data.split(b"\n")
        i = m[1] % len(lines)
        if m[2] == "drop":
            lines[i] = lines[i].rsplit(b",", 1)[0]
        elif m[2] == "add":
            lines[i] += b",extra"
        else:
            lines[i] = b'"' + lines[i]
        return b"\n".join(lines)
    if kind == "reencode":
        return data.decode("utf-8", errors="replace").encode(m[1], errors="replace")
    if kind == "binary":
        return m[1]
    if kind == "empty":
        return b""
    return data


def _check(cfg: MappingConfig, out: Path) -> None:
    try:
        report = ingest(cfg, out)
    except InputError as exc:
        msg = str(exc)
        assert "\n" not in msg and len(msg) < 1_000, msg
        assert "Traceback" not in msg
        assert str(cfg.transactions.path) in msg or (
            cfg.products is not None and str(cfg.products.path) in msg) or "mapping" in msg, msg
        return
    assert report.rows_in == report.rows_kept + report.rows_rejected
    assert report.rows_rejected == sum(report.rejected_by_reason.values())
    for name, n in report.outputs.items():
        table = pq.read_table(out / name)  # readable, every timestamp in range
        table.to_pylist()
        assert table.num_rows == n
    assert report.outputs["transactions.parquet"] == report.rows_kept
    assert not (out / ".tmp").exists()


@FUZZ
@given(fmt=st.sampled_from(FORMATS), mutations=st.lists(mutation(), min_size=1, max_size=3))
# the hardening issue's reproducer: flipped bytes in a zip's deflate stream (zlib error -3)
@example(fmt="zip", mutations=[("flip", [(0.25, 0xFF)])])
@example(fmt="csv.gz", mutations=[("flip", [(0.5, 0x5A), (0.6, 0x5A)])])
@example(fmt="parquet", mutations=[("flip", [(0.3, 0xFF), (0.35, 0xFF)])])
@example(fmt="csv", mutations=[("ragged", 1, "drop")])
def test_mutated_transaction_files_never_give_a_traceback(fmt: str, mutations: list[tuple]) -> None:
    suffix, data, extra = _base(fmt)
    for m in mutations:
        data = _apply(data, m)
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / f"lines{suffix}"
        src.write_bytes(data)
        cfg = MappingConfig.from_dict({"name": "fuzz", "transactions": {
            "path": str(src), "columns": COLUMNS, **extra}})
        _check(cfg, Path(tmp) / "out")


@settings(FUZZ, max_examples=_EXAMPLES or 15)
@given(mutations=st.lists(mutation(), min_size=1, max_size=2), as_csv=st.booleans())
def test_mutated_product_master_never_gives_a_traceback(mutations: list[tuple],
                                                        as_csv: bool) -> None:
    products = pa.table({"sku": ["P1", "P2", "P3"], "cat": ["a", "b", "a"],
                         "list_price": [1.5, 2.0, 3.0],
                         "first_listed": pa.array([19000, 19300, 19700], pa.date32())})
    buf = io.BytesIO()
    if as_csv:
        buf.write(b"sku,cat,list_price,first_listed\nP1,a,1.5,2022-01-08\nP2,b,2,2022-11-04\n"
                  b"P3,a,3,2023-12-09\n")
    else:
        pq.write_table(products, buf)
    data = buf.getvalue()
    for m in mutations:
        data = _apply(data, m)
    with tempfile.TemporaryDirectory() as tmp:
        lines = Path(tmp) / "lines.csv"
        lines.write_text(_csv_text(), encoding="utf-8")
        prod = Path(tmp) / ("products.csv" if as_csv else "products.parquet")
        prod.write_bytes(data)
        cfg = MappingConfig.from_dict({"name": "fuzz", "transactions": {
            "path": str(lines), "columns": COLUMNS}, "products": {"path": str(prod), "columns": {
                "product_id": "sku", "category": "cat", "price": "list_price",
                "launched_at": "first_listed"}}})
        _check(cfg, Path(tmp) / "out")
