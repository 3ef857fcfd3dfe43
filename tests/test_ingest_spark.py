"""``recsys data ingest --engine spark`` writes the DuckDB ingest's tables and report: the same rows,
values and rejection counts, from the same statements (recsys/dialect.py is the only difference),
on a raw export with every kind of noise the rules reject or repair.

One local[2] session (the ``spark`` fixture); a synthetic retailer export of a few thousand lines.
"""

from __future__ import annotations

import gzip
import json
import re
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from recsys.data.ingest import REJECT_REASONS, ValidationReport, ingest
from recsys.data.mapping import resolve_source
from recsys.data.synth import SynthSpec, synthesize_retailer
from recsys.errors import StrictValidationError

SPEC = SynthSpec(members=200, products=80, lines=3_000, categories=8, seed=11)
TABLES = ("transactions.parquet", "products.parquet", "members.parquet")


def _noisy_export(root: Path) -> Path:
    """The synthetic export (walk-ins, refunds, carrier bags, repeats) plus lines that hit every
    other rule: out-of-range and unparseable times, implausible quantities, text amounts, padded
    ids, ragged lines; and a member file with a repeated member and a bad join date."""
    synthesize_retailer(SPEC, root, 4)
    sales = root / "sales_lines.csv.gz"
    with gzip.open(sales, "rt", encoding="utf-8") as f:
        lines = f.read().splitlines()
    header, body = lines[0], lines[1:]
    n = len(header.split(";"))

    def variant(line: str, **changes: str) -> str:
        fields = line.split(";")
        for i, value in changes.items():
            fields[int(i[1:])] = value
        return ";".join(fields)

    ts = body[10].split(";")[1]
    extra = [
        variant(body[10], f1="1985" + ts[4:]),  # ts_out_of_range
        variant(body[11], f1="2024年13月45日 99:00:00"),  # unparseable_ts
        variant(body[12], f6="20000"),  # implausible_quantity
        variant(body[13], f8="twelve"),  # unparseable_amount
        variant(body[14], f8="0"),  # non_positive_amount
        variant(body[15], f6=""),  # unparseable_quantity
        variant(body[16], f5=" "),  # missing_product_id
        variant(body[17], f4="  " + body[17].split(";")[4] + " ", f0="X1"),  # trimmed, kept
        ";".join(body[18].split(";")[: n - 2]),  # malformed_row: too few fields
        body[19] + ";extra",  # malformed_row: too many fields
        variant(body[20], f6="inf"),  # unparseable_quantity: not finite
    ]
    mixed = body[:100] + extra[:6] + body[100:200] + extra[6:] + body[200:]
    with gzip.open(sales, "wt", encoding="utf-8") as f:
        f.write("\n".join([header, *mixed]) + "\n")
    members = root / "members.csv"
    rows = members.read_text(encoding="utf-8").splitlines()
    rows += [rows[5], "NEWMEMBER,31/02/2024,,north"]  # duplicate; bad join date
    members.write_text("\n".join(rows) + "\n", encoding="utf-8")
    mapping = root / "mapping.toml"  # a fixed window: by default it ends a day after the run
    mapping.write_text(mapping.read_text(encoding="utf-8") + "\n[limits]\nts_max = 2025-01-01\n", encoding="utf-8")
    return mapping


def _lines_only(mapping: Path) -> Path:
    """The same export mapped without its product, member and identity files: prices become the
    median paid, categories and member attributes come from the lines."""
    text = mapping.read_text(encoding="utf-8")
    text = re.split(r"\n\[products\]", text)[0] + "\n[limits]\nts_max = 2025-01-01\n"
    out = mapping.with_name("lines_only.toml")
    out.write_text(text.replace('name = "synth_retailer"', 'name = "lines_only"') + "\n", encoding="utf-8")
    return out


@pytest.fixture(scope="module")
def export(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _noisy_export(tmp_path_factory.mktemp("ingest-spark") / "raw")


def _both(spark, mapping_file: Path, out: Path, **kw):
    mapping = resolve_source(str(mapping_file), out)
    return {engine: ingest(mapping, out / engine, engine=engine, **kw) for engine in ("duckdb", "spark")}


def _same_tables(out: Path) -> None:
    for name in TABLES:
        duck, spark = pq.read_table(out / "duckdb" / name), pq.read_table(out / "spark" / name)
        assert duck.num_rows > 0, name
        unnullable = lambda s: pa.schema([f.with_nullable(True) for f in s])  # noqa: E731
        assert unnullable(spark.schema) == unnullable(duck.schema), name
        for column in duck.column_names:  # every value, rows in the same order
            assert spark.column(column).to_pylist() == duck.column(column).to_pylist(), (name, column)
    assert not any(p.name.startswith(".") for p in (out / "spark").iterdir())  # no staging left


def _comparable(report) -> dict:
    doc = report.to_dict()
    for key in ("engine", "created_at", "seconds", "out_dir"):
        doc.pop(key)
    for section in doc["tables"].values():  # each reader words its complaint its own way
        for shown in section.get("malformed_rows", []):
            shown["error"] = shown["error"].split(":")[0]
    return doc


def test_spark_ingest_writes_the_duckdb_tables_and_report(spark, export, tmp_path):
    reports = _both(spark, export, tmp_path)
    duck, on_spark = reports["duckdb"], reports["spark"]
    assert (duck.engine, on_spark.engine) == ("duckdb", "spark")
    _same_tables(tmp_path)
    assert _comparable(on_spark) == _comparable(duck)
    # every rule fired, and the accounting holds: rows in = kept + rejected by reason
    rejected = on_spark.rejected_by_reason
    assert list(rejected) == list(REJECT_REASONS)
    for reason in ("malformed_row", "missing_member_id", "missing_product_id", "unparseable_ts",
                   "ts_out_of_range", "unparseable_quantity", "unparseable_amount",
                   "non_positive_quantity", "implausible_quantity", "non_positive_amount",
                   "unknown_product", "duplicate"):
        assert rejected[reason] > 0, reason
    assert rejected["malformed_row"] == 2 and rejected["unparseable_quantity"] == 2
    assert on_spark.rows_in == on_spark.rows_kept + sum(rejected.values()) == SPEC.lines + 4 * 4 + 11
    assert on_spark.repaired_by_reason["trimmed_id"] >= 1 and on_spark.repaired_by_reason["identity_folded"] > 0
    shown = on_spark.tables["transactions"]["malformed_rows"]
    assert [s["error"].split(":")[0] for s in shown] == ["missing columns", "too many columns"]
    members = on_spark.tables["members"]
    assert members["rejected_by_reason"]["duplicate_member_id"] == 1
    assert members["repaired_by_reason"]["bad_joined_at"] == 1


def test_spark_ingest_derives_prices_and_attributes_like_duckdb(spark, export, tmp_path):
    """Without product and member files, from the command line: median prices, modal attributes."""
    from typer.testing import CliRunner

    from recsys.cli import app

    mapping = _lines_only(export)
    duck = ingest(resolve_source(str(mapping), tmp_path), tmp_path / "duckdb")
    result = CliRunner().invoke(app, ["data", "ingest", str(mapping), "--out", str(tmp_path / "spark"),
                                      "--engine", "spark", "--spark-master", "local[2]"])
    assert result.exit_code == 0, result.output
    assert "kept" in result.output
    _same_tables(tmp_path)
    on_spark = ValidationReport(**json.loads((tmp_path / "spark" / "validation_report.json").read_text()))
    assert _comparable(on_spark) == _comparable(duck)
    price = on_spark.tables["products"]["price"]
    assert price["derived"] and price["priced"] > 0 and on_spark.engine == "spark"


def test_spark_ingest_strict_stops_at_the_same_line(spark, export, tmp_path):
    errors = {}
    for engine in ("duckdb", "spark"):
        with pytest.raises(StrictValidationError) as info:
            ingest(resolve_source(str(export), tmp_path), tmp_path / engine, strict=True, engine=engine)
        errors[engine] = str(info.value)
    assert errors["spark"] == errors["duckdb"]
    assert not (tmp_path / "spark" / "transactions.parquet").exists()
