"""Ingest: every rejection reason and repair on tiny hand-written files, with exact counts."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import duckdb
import pytest
from typer.testing import CliRunner

from recsys.cli import app
from recsys.data.ingest import REJECT_REASONS, ingest
from recsys.data.mapping import MappingConfig, resolve_source
from recsys.errors import InputError, StrictValidationError

REPO = Path(__file__).resolve().parents[1]
TAFENG_ZIP = REPO.parent / "shared" / "data" / "ta_feng.csv.zip"

TXN_COLUMNS = {"member_id": "card", "product_id": "sku", "ts": "date", "quantity": "qty",
               "amount": "paid", "cost": "cost"}

# One line per reason, in file order; the comment is the expected fate.
LINES = """card,sku,date,qty,paid,cost
M1,P1,2024-01-01,1,10,5
,P1,2024-01-01,1,10,5
M1,  ,2024-01-01,1,10,5
M2,P1,not a date,1,10,5
M2,P1,2024-01-02,abc,10,5
M2,P1,2024-01-02,1,ten,5
M2,P1,2024-01-02,-1,-10,5
M2,P1,2024-01-02,2,0,5
M1,P1,2024-01-01,1,10,5
 M3 ,P2,2024-01-03,2,30,
M3,P9,2024-01-04,1,7,n/a
,P1,2024-01-01,1,10,5
M1,P1,2024-01-01,1,10,5
"""
# line 2 kept | 3 missing_member_id | 4 missing_product_id | 5 unparseable_ts
# 6 unparseable_quantity | 7 unparseable_amount | 8 non_positive_quantity (checked before amount)
# 9 non_positive_amount | 10 duplicate of 2 | 11 kept, trimmed_id | 12 kept, cost n/a -> NULL
# 13 missing_member_id again (bad lines are never "duplicates") | 14 duplicate of 2


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def _mapping(tmp_path: Path, lines: str = LINES, columns: dict[str, str] | None = None,
             **tables: object) -> MappingConfig:
    src = _write(tmp_path / "src" / "lines.csv", lines)
    raw = {"name": "shop",
           "transactions": {"path": str(src), "columns": columns or TXN_COLUMNS}, **tables}
    return MappingConfig.from_dict(raw).resolved(tmp_path)


def _rows(path: Path, sql: str = "SELECT * FROM t") -> list[tuple]:
    con = duckdb.connect()
    con.execute(f"CREATE VIEW t AS SELECT * FROM read_parquet('{path}')")
    return con.execute(sql).fetchall()


def test_each_reason_counted_exactly(tmp_path: Path) -> None:
    out = tmp_path / "out"
    report = ingest(_mapping(tmp_path), out)

    assert report.rejected_by_reason == {
        "malformed_row": 0,
        "missing_member_id": 2,
        "missing_product_id": 1,
        "unparseable_ts": 1,
        "ts_out_of_range": 0,
        "unparseable_quantity": 1,
        "unparseable_amount": 1,
        "non_positive_quantity": 1,
        "implausible_quantity": 0,
        "non_positive_amount": 1,
        "unknown_product": 0,
        "duplicate": 2,
    }
    assert report.repaired_by_reason == {"trimmed_id": 1, "identity_folded": 0,
                                         "unparseable_cost": 1}
    assert (report.rows_in, report.rows_kept, report.rows_rejected) == (13, 3, 10)
    assert report.rows_in == report.rows_kept + report.rows_rejected

    # kept: the first M1/P1 line, the trimmed M3 line and the M3/P9 line with its cost dropped
    assert _rows(out / "transactions.parquet",
                 "SELECT member_id, product_id, ts::DATE::VARCHAR, quantity, amount, unit_price, "
                 "cost FROM t") == [
        ("M1", "P1", "2024-01-01", 1.0, 10.0, 10.0, 5.0),
        ("M3", "P2", "2024-01-03", 2.0, 30.0, 15.0, None),
        ("M3", "P9", "2024-01-04", 1.0, 7.0, 7.0, None),
    ]
    saved = json.loads((out / "validation_report.json").read_text())
    assert saved["rows_in"] == 13 and saved["rejected_by_reason"]["duplicate"] == 2
    assert saved["sources"][0]["sha256"] and saved["created_at"]
    assert not (out / ".tmp").exists()


def test_output_contract_columns_and_types(tmp_path: Path) -> None:
    out = tmp_path / "out"
    ingest(_mapping(tmp_path), out)
    expected = {
        "transactions": [("member_id", "VARCHAR"), ("product_id", "VARCHAR"),
                         ("ts", "TIMESTAMP"), ("quantity", "DOUBLE"), ("amount", "DOUBLE"),
                         ("unit_price", "DOUBLE"), ("cost", "DOUBLE"), ("channel", "VARCHAR"),
                         ("store_id", "VARCHAR"), ("basket_id", "VARCHAR")],
        "products": [("product_id", "VARCHAR"), ("category", "VARCHAR"), ("price", "DOUBLE"),
                     ("brand", "VARCHAR"), ("name", "VARCHAR"), ("launched_at", "TIMESTAMP")],
        "members": [("member_id", "VARCHAR"), ("joined_at", "TIMESTAMP"),
                    ("age_group", "VARCHAR"), ("region", "VARCHAR")],
    }
    for table, cols in expected.items():
        described = duckdb.sql(f"DESCRIBE SELECT * FROM '{out / table}.parquet'").fetchall()
        assert [(r[0], r[1]) for r in described] == cols, table
    # derived products: no category on the lines -> 'unknown'; price = median unit price
    assert _rows(out / "products.parquet", "SELECT product_id, category, price FROM t") == [
        ("P1", "unknown", 10.0), ("P2", "unknown", 15.0), ("P9", "unknown", 7.0)]
    assert _rows(out / "members.parquet", "SELECT member_id FROM t") == [("M1",), ("M3",)]


def test_sorted_by_ts_then_member(tmp_path: Path) -> None:
    lines = "card,sku,date,qty,paid\nB,P,2024-01-02,1,1\nC,P,2024-01-01,1,1\nA,P,2024-01-02,1,1\n"
    out = tmp_path / "out"
    ingest(_mapping(tmp_path, lines, {k: v for k, v in TXN_COLUMNS.items() if k != "cost"}), out)
    assert _rows(out / "transactions.parquet", "SELECT member_id FROM t") == [("C",), ("A",), ("B",)]


def test_derived_attributes_take_the_most_frequent_value(tmp_path: Path) -> None:
    lines = """card,sku,date,qty,paid,cat,age
M1,P1,2024-01-01,1,2,dairy,30-34
M1,P1,2024-01-02,1,4,dairy,
M2,P1,2024-01-02,2,2,milk,25-29
M2,P2,2024-01-03,1,5,,25-29
M2,P2,2024-01-04,1,5,,30-34
"""
    cols = {"member_id": "card", "product_id": "sku", "ts": "date", "quantity": "qty",
            "amount": "paid", "category": "cat", "age_group": "age"}
    out = tmp_path / "out"
    ingest(_mapping(tmp_path, lines, cols), out)
    # P1: dairy twice, milk once; unit prices 2, 4, 1 -> median 2. P2 has no category at all.
    assert _rows(out / "products.parquet", "SELECT product_id, category, price FROM t") == [
        ("P1", "dairy", 2.0), ("P2", "unknown", 5.0)]
    # M2: 25-29 twice beats 30-34 once; M1's only non-empty age group wins over the empty one.
    assert _rows(out / "members.parquet", "SELECT member_id, age_group, region FROM t") == [
        ("M1", "30-34", None), ("M2", "25-29", None)]
    # line attributes never stay in transactions
    assert "category" not in [r[0] for r in duckdb.sql(
        f"DESCRIBE SELECT * FROM '{out / 'transactions.parquet'}'").fetchall()]


def test_unknown_product_only_with_a_products_table(tmp_path: Path) -> None:
    products = _write(tmp_path / "src" / "products.csv", """id,cat,list_price,launch
P1,dairy,9.5,2023-05-01
P2,bakery,abc,
,bakery,3,
P2,bakery,4,
P3,,2,yesterday
""")
    prod_map = {"path": str(products), "columns": {"product_id": "id", "category": "cat",
                                                   "price": "list_price", "launched_at": "launch"}}
    out = tmp_path / "out"
    report = ingest(_mapping(tmp_path, products=prod_map), out)
    assert report.rejected_by_reason["unknown_product"] == 1  # the P9 line
    assert report.rows_kept == 2 and report.rows_in == report.rows_kept + report.rows_rejected
    assert report.tables["products"]["rejected_by_reason"] == {
        "malformed_row": 0, "missing_product_id": 1, "duplicate_product_id": 1}
    assert report.tables["products"]["repaired_by_reason"] == {
        "trimmed_id": 0, "bad_price": 1, "missing_category": 1, "bad_launched_at": 1}
    # P2's bad list price falls back to the median unit price paid (30 / 2); unsold P3 stays.
    assert _rows(out / "products.parquet",
                 "SELECT product_id, category, price, launched_at::DATE::VARCHAR FROM t") == [
        ("P1", "dairy", 9.5, "2023-05-01"),
        ("P2", "bakery", 15.0, None),
        ("P3", "unknown", 2.0, None),
    ]
    # without the table the same line is kept (see test_each_reason_counted_exactly)


def test_members_table_plus_members_seen_only_in_lines(tmp_path: Path) -> None:
    members = _write(tmp_path / "src" / "members.csv", """no,joined,band
M1,2020-03-01,30-34
M1,2021-01-01,40-44
M7,bad,25-29
""")
    mem_map = {"path": str(members), "columns": {"member_id": "no", "joined_at": "joined",
                                                 "age_group": "band"}}
    out = tmp_path / "out"
    report = ingest(_mapping(tmp_path, members=mem_map), out)
    section = report.tables["members"]
    assert section["rejected_by_reason"] == {"malformed_row": 0, "missing_member_id": 0,
                                             "duplicate_member_id": 1}
    assert section["repaired_by_reason"] == {"trimmed_id": 0, "bad_joined_at": 1}
    assert section["added_from_lines"] == 1  # M3 buys but is not in the members file
    assert _rows(out / "members.parquet",
                 "SELECT member_id, joined_at::DATE::VARCHAR, age_group FROM t") == [
        ("M1", "2020-03-01", "30-34"), ("M3", None, None), ("M7", None, "25-29")]


IDENTITIES = """channel,account,member
app,A-100,M1
mini,WX-9,M1
pos,0042,M1
app,A-200,M2
pos,0042,M1
"""


def test_identity_folding_joins_accounts_of_one_person(tmp_path: Path) -> None:
    ident = _write(tmp_path / "src" / "ident.csv", IDENTITIES)
    lines = """card,sku,date,qty,paid
A-100,P1,2024-01-01,1,1
WX-9,P1,2024-01-02,1,1
0042,P2,2024-01-03,1,1
M1,P3,2024-01-04,1,1
A-200,P1,2024-01-05,1,1
Z-1,P1,2024-01-06,1,1
 WX-9 ,P1,2024-01-02,1,1
"""
    cols = {k: v for k, v in TXN_COLUMNS.items() if k != "cost"}
    id_map = {"path": str(ident), "columns": {"channel": "channel", "external_id": "account",
                                              "member_id": "member"}}
    out = tmp_path / "out"
    report = ingest(_mapping(tmp_path, lines, cols, identities=id_map), out)
    # app + mini-program + POS card -> M1; the padded WX-9 line folds too and is then a duplicate
    assert _rows(out / "transactions.parquet", "SELECT member_id, product_id FROM t") == [
        ("M1", "P1"), ("M1", "P1"), ("M1", "P2"), ("M1", "P3"), ("M2", "P1"), ("Z-1", "P1")]
    assert report.repaired_by_reason["identity_folded"] == 4
    assert report.rejected_by_reason["duplicate"] == 1
    assert _rows(out / "members.parquet", "SELECT member_id FROM t") == [("M1",), ("M2",), ("Z-1",)]
    assert report.tables["identities"]["accounts"] == 4


def test_identity_join_is_channel_aware_when_lines_carry_a_channel(tmp_path: Path) -> None:
    ident = _write(tmp_path / "src" / "ident.csv", IDENTITIES + "mini,A-100,M9\n")
    lines = """card,sku,date,qty,paid,via
A-100,P1,2024-01-01,1,1,app
A-100,P1,2024-01-02,1,1,mini
A-100,P1,2024-01-03,1,1,pos
"""
    cols = {**{k: v for k, v in TXN_COLUMNS.items() if k != "cost"}, "channel": "via"}
    id_map = {"path": str(ident), "columns": {"channel": "channel", "external_id": "account",
                                              "member_id": "member"}}
    out = tmp_path / "out"
    ingest(_mapping(tmp_path, lines, cols, identities=id_map), out)
    # the same account id means different people on different channels; no pos row -> unchanged
    assert _rows(out / "transactions.parquet", "SELECT member_id, channel FROM t") == [
        ("M1", "app"), ("M9", "mini"), ("A-100", "pos")]

    # without a channel on the lines the same identities file is ambiguous for A-100
    cols.pop("channel")
    with pytest.raises(InputError, match=r"external id 'A-100' maps to two member ids"):
        ingest(_mapping(tmp_path, lines, cols, identities=id_map), tmp_path / "out2")


def test_conflicting_identity_is_an_error(tmp_path: Path) -> None:
    ident = _write(tmp_path / "src" / "ident.csv", IDENTITIES + "app,A-100,M5\n")
    id_map = {"path": str(ident), "columns": {"channel": "channel", "external_id": "account",
                                              "member_id": "member"}}
    with pytest.raises(InputError, match=r"'A-100'.*\('M1' and 'M5'\)"):
        ingest(_mapping(tmp_path, identities=id_map), tmp_path / "out")


def test_strict_reports_the_first_bad_row(tmp_path: Path) -> None:
    cfg = _mapping(tmp_path)
    out = tmp_path / "out"
    with pytest.raises(StrictValidationError) as info:
        ingest(cfg, out, strict=True)
    err = info.value
    # the header is line 1, so the first data line (kept) is 2 and the empty card is line 3
    assert (err.path, err.row, err.column, err.value, err.reason) == (
        str(cfg.transactions.path), 3, "card", "", "missing_member_id")
    assert "row 3" in str(err) and "\n" not in str(err)
    assert not (out / "transactions.parquet").exists()


@pytest.mark.parametrize(("bad_line", "column", "value", "reason"), [
    ("M2,P1,31/01/2024,1,10,5", "date", "31/01/2024", "unparseable_ts"),
    ("M2,P1,2024-01-02,0,10,5", "qty", "0", "non_positive_quantity"),
    ("M2,P1,2024-01-02,1,10,five", "cost", "five", "unparseable_cost"),
    ("M1,P1,2024-01-01,1,10,5", "(all mapped columns)", "same as row 2", "duplicate"),
])
def test_strict_row_column_value(tmp_path: Path, bad_line: str, column: str, value: str,
                                 reason: str) -> None:
    lines = ("card,sku,date,qty,paid,cost\nM1,P1,2024-01-01,1,10,5\n M3,P2,2024-01-03,2,30,\n"
             f"{bad_line}\n,P1,2024-01-01,1,10,5\n")
    with pytest.raises(StrictValidationError) as info:
        ingest(_mapping(tmp_path, lines), tmp_path / "out", strict=True)
    assert (info.value.row, info.value.column, info.value.value, info.value.reason) == (
        4, column, value, reason)


def test_strict_checks_the_products_table_first(tmp_path: Path) -> None:
    products = _write(tmp_path / "src" / "products.csv", "id,cat,price\nP1,a,1\nP2,b,2\nP1,c,3\n")
    prod_map = {"path": str(products), "columns": {"product_id": "id", "category": "cat",
                                                   "price": "price"}}
    with pytest.raises(StrictValidationError) as info:
        ingest(_mapping(tmp_path, products=prod_map), tmp_path / "out", strict=True)
    assert (info.value.path, info.value.row, info.value.column, info.value.value,
            info.value.reason) == (str(products), 4, "id", "P1", "duplicate_product_id")


def test_strict_passes_clean_data(tmp_path: Path) -> None:
    lines = "card,sku,date,qty,paid,cost\nM1,P1,2024-01-01,1,10,5\n M3 ,P2,2024-01-03,2,30,\n"
    report = ingest(_mapping(tmp_path, lines), tmp_path / "out", strict=True)
    assert report.rows_kept == 2 and report.repaired_by_reason["trimmed_id"] == 1


def test_bom_zip_and_quoted_fields(tmp_path: Path) -> None:
    import zipfile

    csv = '\ufeff"card","sku","date","qty","paid"\n"007","0123","2024-01-01","1","2"\n'
    zpath = tmp_path / "src" / "lines.zip"
    zpath.parent.mkdir(parents=True)
    with zipfile.ZipFile(zpath, "w") as zf:
        zf.writestr("export/lines.csv", csv.encode("utf-8"))
    cfg = MappingConfig.from_dict({"name": "z", "transactions": {"path": str(zpath), "columns": {
        k: v for k, v in TXN_COLUMNS.items() if k != "cost"}}})
    out = tmp_path / "out"
    report = ingest(cfg, out)
    assert report.rows_kept == 1 and report.sources[0]["member"] == "lines.csv"
    assert _rows(out / "transactions.parquet", "SELECT member_id, product_id FROM t") == [
        ("007", "0123")]


# ---------------------------------------------------------------------------------------------
# errors are one-line InputErrors, and the CLI prints them without a traceback


def test_missing_file(tmp_path: Path) -> None:
    cfg = MappingConfig.from_dict({"name": "x", "transactions": {
        "path": str(tmp_path / "nope.csv"), "columns": TXN_COLUMNS}})
    with pytest.raises(InputError, match=r"transactions file not found: .*nope\.csv"):
        ingest(cfg, tmp_path / "out")


def test_empty_file_and_header_only(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="the file is empty"):
        ingest(_mapping(tmp_path, ""), tmp_path / "out")
    with pytest.raises(InputError, match="no data rows"):
        ingest(_mapping(tmp_path, "card,sku,date,qty,paid,cost\n"), tmp_path / "out")


def test_wrong_column_name_lists_the_columns_present(tmp_path: Path) -> None:
    cols = {**TXN_COLUMNS, "quantity": "quantity"}
    with pytest.raises(InputError) as info:
        ingest(_mapping(tmp_path, columns=cols), tmp_path / "out")
    msg = str(info.value)
    assert "column 'quantity' (mapped to transactions.quantity) is not in the file" in msg
    assert "lines.csv" in msg
    assert "'card', 'sku', 'date', 'qty', 'paid', 'cost'" in msg


def test_column_names_match_case_insensitively(tmp_path: Path) -> None:
    cols = {k: v.upper() for k, v in TXN_COLUMNS.items()}
    assert ingest(_mapping(tmp_path, columns=cols), tmp_path / "out").rows_kept == 3


def test_bad_ts_format(tmp_path: Path) -> None:
    src = _write(tmp_path / "l.csv", LINES)
    cfg = MappingConfig.from_dict({"name": "x", "transactions": {
        "path": str(src), "ts_format": "%Q", "columns": TXN_COLUMNS}})
    with pytest.raises(InputError, match="ts_format '%Q' is not a valid strptime format"):
        ingest(cfg, tmp_path / "out")


def _cli(tmp_path: Path, toml_text: str, *extra: str) -> tuple[int, str]:
    toml = _write(tmp_path / "m.toml", toml_text)
    result = CliRunner().invoke(app, ["data", "ingest", str(toml), "--data-dir", str(tmp_path),
                                      *extra])
    return result.exit_code, result.output


TOML = """name = "shop"
[transactions]
path = "src/lines.csv"
[transactions.columns]
member_id = "card"
product_id = "sku"
ts = "date"
quantity = "{qty}"
amount = "paid"
"""


@pytest.mark.parametrize(("lines", "qty", "needle"), [
    (None, "qty", "transactions file not found"),
    ("", "qty", "the file is empty"),
    ("card,sku,date,qty,paid\n", "qty", "no data rows"),
    (LINES, "units", "column 'units'"),
])
def test_cli_errors_are_one_line_exit_2(tmp_path: Path, lines: str | None, qty: str,
                                        needle: str) -> None:
    if lines is not None:
        _write(tmp_path / "src" / "lines.csv", lines)
    code, output = _cli(tmp_path, TOML.format(qty=qty))
    assert code == 2
    assert needle in output
    assert output.strip().count("\n") == 0, output
    assert "Traceback" not in output


def test_cli_strict_error_and_success(tmp_path: Path) -> None:
    _write(tmp_path / "src" / "lines.csv", LINES)
    code, output = _cli(tmp_path, TOML.format(qty="qty"), "--strict")
    assert code == 2 and "row 3" in output and "Traceback" not in output
    code, output = _cli(tmp_path, TOML.format(qty="qty"))
    assert code == 0, output
    assert (tmp_path / "shop" / "canonical" / "transactions.parquet").exists()
    assert "duplicate" in output


# ---------------------------------------------------------------------------------------------
# the real Ta-Feng file


@pytest.mark.tafeng
@pytest.mark.skipif(not TAFENG_ZIP.is_file(), reason=f"{TAFENG_ZIP} not found")
def test_tafeng_full_ingest(tmp_path: Path) -> None:
    (tmp_path / "raw").mkdir()
    shutil.copyfile(TAFENG_ZIP, tmp_path / "raw" / "ta_feng.csv.zip")
    out = tmp_path / "canonical"
    report = ingest(resolve_source("tafeng", tmp_path), out)

    assert report.rows_in == 817_741
    assert report.rows_in == report.rows_kept + report.rows_rejected
    assert set(report.rejected_by_reason) == set(REJECT_REASONS)
    con = duckdb.connect()
    txn, prod, memb = (f"read_parquet('{out / name}.parquet')"
                       for name in ("transactions", "products", "members"))
    assert con.execute(f"SELECT count(*) FROM {txn}").fetchone()[0] == report.rows_kept
    # ids keep their leading zeros
    assert con.execute(f"SELECT count(*) FROM {memb} WHERE member_id = '01104905'").fetchone()[0] == 1
    assert con.execute(f"SELECT count(*) FROM {prod} WHERE product_id LIKE '0%'").fetchone()[0] > 0
    first = con.execute(f"SELECT member_id, product_id, ts::VARCHAR, quantity, amount, cost "
                        f"FROM {txn} WHERE member_id = '01104905' AND product_id = '4710199010372' "
                        "ORDER BY ts LIMIT 1").fetchone()
    assert first == ("01104905", "4710199010372", "2000-11-01 00:00:00", 2.0, 30.0, 24.0)
    lo, hi = con.execute(f"SELECT min(ts)::DATE::VARCHAR, max(ts)::DATE::VARCHAR FROM {txn}").fetchone()
    assert (lo, hi) == ("2000-11-01", "2001-02-28")
    assert con.execute(f"SELECT count(*) FROM {memb}").fetchone()[0] == 32_266
    assert con.execute(f"SELECT count(*) FROM {prod}").fetchone()[0] == 23_812
    # the mapping's brand_from_id_prefix: barcode ids name their maker in the first 8 digits
    branded, wrong = con.execute(f"SELECT count(brand), count(*) FILTER (brand <> substr(product_id, 1, 8)) "
                                 f"FROM {prod}").fetchone()
    assert branded == report.tables["products"]["brand"]["branded"] > 20_000 and wrong == 0


# ---------------------------------------------------------------------------------------------
# implausible values, malformed rows, corrupt archives (hardening issue, defects 6, 8 and 9)

IMPLAUSIBLE = """card,sku,date,qty,paid
M1,P1,11/1/2000,1,10
M1,P2,11/1/00,1,10
M1,P2,11/1/1900,1,10
M1,P2,11/1/2099,1,10
M1,P2,1/1/1,1,10
M1,P2,1/1/99,1,10
M2,P1,11/2/2000,99999999999,10
M2,P2,11/3/2000,10000,20000
"""


def _us_dates(tmp_path: Path, lines: str = IMPLAUSIBLE, **extra: object) -> MappingConfig:
    src = _write(tmp_path / "src" / "lines.csv", lines)
    cols = {k: v for k, v in TXN_COLUMNS.items() if k != "cost"}
    return MappingConfig.from_dict({"name": "us", "transactions": {
        "path": str(src), "ts_format": "%m/%d/%Y", "columns": cols}, **extra}).resolved(tmp_path)


def test_implausible_dates_and_quantities_are_rejected(tmp_path: Path) -> None:
    import pyarrow.parquet as pq

    out = tmp_path / "out"
    report = ingest(_us_dates(tmp_path), out)
    # year 0 (a two-digit year under %Y), 1900, 2099, year 1 and year 99 are outside the default
    # window 1990-01-01 .. now + 1 day; 99,999,999,999 units is over the default maximum 10,000
    assert report.rejected_by_reason["ts_out_of_range"] == 5
    assert report.rejected_by_reason["implausible_quantity"] == 1
    assert (report.rows_in, report.rows_kept) == (8, 2)
    assert report.rows_in == report.rows_kept + report.rows_rejected
    # every kept timestamp is one pyarrow (and so pandas and the training code) can read
    table = pq.read_table(out / "transactions.parquet").to_pylist()
    assert [(r["member_id"], r["ts"].year, r["quantity"]) for r in table] == [
        ("M1", 2000, 1.0), ("M2", 2000, 10_000.0)]
    assert report.tables["transactions"]["limits"]["max_quantity"] == 10_000


def test_limits_are_configurable_in_the_mapping(tmp_path: Path) -> None:
    limits = {"ts_min": "1900-01-01", "ts_max": "2100-01-01", "max_quantity": 1e12}
    report = ingest(_us_dates(tmp_path, limits=limits), tmp_path / "out")
    # now only year 0, 1 and 99 fall outside; nothing is too many
    assert report.rejected_by_reason["ts_out_of_range"] == 3
    assert report.rejected_by_reason["implausible_quantity"] == 0
    assert report.rows_kept == 5
    with pytest.raises(InputError, match="ts_min .* must be before ts_max"):
        _us_dates(tmp_path, limits={"ts_min": "2024-01-01", "ts_max": "2023-01-01"})


@pytest.mark.parametrize(("lines", "line", "value", "reason"), [
    ("card,sku,date,qty,paid\nM1,P1,11/1/2000,1,10\nM1,P2,11/1/00,1,10\n", 3, "11/1/00",
     "ts_out_of_range"),
    ("card,sku,date,qty,paid\nM1,P1,11/1/2000,1,10\nM1,P2,11/1/2000,1e11,10\n", 3, "1e11",
     "implausible_quantity"),
])
def test_strict_refuses_implausible_values(tmp_path: Path, lines: str, line: int, value: str,
                                           reason: str) -> None:
    with pytest.raises(StrictValidationError) as info:
        ingest(_us_dates(tmp_path, lines), tmp_path / "out", strict=True)
    assert (info.value.row, info.value.value, info.value.reason) == (line, value, reason)


def test_dates_of_members_and_products_outside_the_window_are_dropped(tmp_path: Path) -> None:
    members = _write(tmp_path / "src" / "members.csv", "no,joined\nM1,11/1/00\nM2,3/4/2020\n")
    products = _write(tmp_path / "src" / "products.csv",
                      "id,cat,price,launch\nP1,a,1,1/1/1\nP2,b,2,2/2/2000\n")
    cfg = _us_dates(
        tmp_path,
        members={"path": str(members), "ts_format": "%m/%d/%Y",
                 "columns": {"member_id": "no", "joined_at": "joined"}},
        products={"path": str(products), "ts_format": "%m/%d/%Y",
                  "columns": {"product_id": "id", "category": "cat", "price": "price",
                              "launched_at": "launch"}})
    out = tmp_path / "out"
    report = ingest(cfg, out)
    # the line's date is kept only when plausible; so are the dates that describe a member or a
    # product (an impossible one is cleared, like an unparseable one, and counted)
    assert report.tables["members"]["repaired_by_reason"]["bad_joined_at"] == 1
    assert report.tables["products"]["repaired_by_reason"]["bad_launched_at"] == 1
    assert _rows(out / "members.parquet", "SELECT member_id, joined_at::DATE::VARCHAR FROM t") == [
        ("M1", None), ("M2", "2020-03-04")]
    assert _rows(out / "products.parquet", "SELECT product_id, launched_at::DATE::VARCHAR FROM t"
                 ) == [("P1", None), ("P2", "2000-02-02")]


RAGGED = """card,sku,date,qty,paid,cost
M1,P1,2024-01-01,1,10,5
M2,P1,2024-01-01,1,10
M3,P1,2024-01-01,1,10,5,extra
M4,P1,2024-01-02,1,10,5
M5\udcff,P1,2024-01-03,1,10,5
M6,P1,2024-01-03,1,10,5
M7,P1,not a date,1,10,5
"""


def _ragged(tmp_path: Path, text: str = RAGGED) -> MappingConfig:
    """RAGGED's line 6 holds a byte that is not UTF-8 (written through surrogateescape)."""
    src = tmp_path / "src" / "lines.csv"
    src.parent.mkdir(parents=True, exist_ok=True)
    src.write_bytes(text.encode("utf-8", errors="surrogateescape"))
    return MappingConfig.from_dict({"name": "shop", "transactions": {
        "path": str(src), "columns": TXN_COLUMNS}}).resolved(tmp_path)


def test_ragged_rows_are_counted_not_fatal(tmp_path: Path) -> None:
    out = tmp_path / "out"
    report = ingest(_ragged(tmp_path), out)
    # lines 3 (a field short), 4 (a field over) and 6 (not UTF-8) are malformed; the file is
    # read, and each other line gets its usual fate
    assert report.rejected_by_reason["malformed_row"] == 3
    assert report.rejected_by_reason["unparseable_ts"] == 1
    assert (report.rows_in, report.rows_kept) == (7, 3)
    assert report.rows_in == report.rows_kept + report.rows_rejected
    section = report.tables["transactions"]
    assert [m["line"] for m in section["malformed_rows"]] == [3, 4, 6]
    assert "M2,P1,2024-01-01,1,10" in section["malformed_rows"][0]["text"]
    assert _rows(out / "transactions.parquet", "SELECT member_id FROM t ORDER BY 1") == [
        ("M1",), ("M4",), ("M6",)]


def test_strict_points_at_the_malformed_line_and_keeps_line_numbers(tmp_path: Path) -> None:
    with pytest.raises(StrictValidationError) as info:
        ingest(_ragged(tmp_path), tmp_path / "out", strict=True)
    assert (info.value.row, info.value.reason) == (3, "malformed_row")
    assert "M2,P1,2024-01-01,1,10" in str(info.value) and "\n" not in str(info.value)
    # rows after skipped lines keep their own line numbers (the bad date is on line 8)
    fixed = RAGGED.replace("M2,P1,2024-01-01,1,10\n", "").replace(
        "M3,P1,2024-01-01,1,10,5,extra\n", "").replace("M5\udcff", "M5")
    with pytest.raises(StrictValidationError) as info:
        ingest(_ragged(tmp_path, fixed), tmp_path / "out", strict=True)
    assert (info.value.row, info.value.reason) == (6, "unparseable_ts")


def test_line_numbers_count_the_malformed_lines(tmp_path: Path) -> None:
    # the reader numbers only the rows it read: the bad date on line 5 is its 4th row, and the
    # malformed line 4 comes first in the file, so that is what --strict reports
    lines = ("card,sku,date,qty,paid\nM1,P1,2024-01-01,1,10\nM2,P1,2024-01-01,1,10\n"
             "bad,line\nM3,P1,soon,1,10\nM1,P1,2024-01-01,1,10\n")
    cfg = _mapping(tmp_path, lines, {k: v for k, v in TXN_COLUMNS.items() if k != "cost"})
    with pytest.raises(StrictValidationError) as info:
        ingest(cfg, tmp_path / "out", strict=True)
    assert (info.value.row, info.value.reason) == (4, "malformed_row")
    report = ingest(cfg, tmp_path / "out")
    assert [m["line"] for m in report.tables["transactions"]["malformed_rows"]] == [4]
    assert (report.rejected_by_reason["unparseable_ts"], report.rejected_by_reason["duplicate"],
            report.rows_kept) == (1, 1, 2)


def test_an_early_ragged_row_in_a_small_file_is_not_a_missing_column(tmp_path: Path) -> None:
    lines = ("CUSTOMER_ID,PRODUCT_ID,TRANSACTION_DT,AMOUNT,SALES_PRICE\n"
             "1,a,2024-01-01,1\n2,b,2024-01-01,1,3\n3,c,2024-01-02,2,4\n")
    cols = {"member_id": "CUSTOMER_ID", "product_id": "PRODUCT_ID", "ts": "TRANSACTION_DT",
            "quantity": "AMOUNT", "amount": "SALES_PRICE"}
    report = ingest(_mapping(tmp_path, lines, cols), tmp_path / "out")
    assert report.rejected_by_reason["malformed_row"] == 1 and report.rows_kept == 2


def _zip_bytes(payload: bytes) -> bytes:
    import io
    import zipfile

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("lines.csv", payload)
    return buf.getvalue()


def test_corrupt_zip_is_an_input_error_not_a_traceback(tmp_path: Path) -> None:
    data = bytearray(_zip_bytes(LINES.encode() * 50))
    # flip bytes inside the deflate stream (after the 30-byte local header and the name)
    for i in range(60, 90):
        data[i] ^= 0x5A
    src = tmp_path / "src" / "lines.zip"
    src.parent.mkdir(parents=True)
    src.write_bytes(bytes(data))
    cfg = MappingConfig.from_dict({"name": "z", "transactions": {"path": str(src),
                                                                "columns": TXN_COLUMNS}})
    with pytest.raises(InputError, match=r"lines\.zip.*(corrupt|damaged)"):
        ingest(cfg, tmp_path / "out")
    code, output = _cli(tmp_path, TOML.replace("src/lines.csv", "src/lines.zip").format(qty="qty"))
    assert code == 2 and "Traceback" not in output and output.strip().count("\n") == 0, output


def test_product_master_without_price_gets_the_median_paid(tmp_path: Path) -> None:
    products = _write(tmp_path / "src" / "products.csv",
                      "id,cat,brand\nP1,dairy,A\nP2,bakery,B\nP9,bakery,B\nP5,fruit,C\n")
    prod_map = {"path": str(products), "columns": {"product_id": "id", "category": "cat",
                                                   "brand": "brand"}}
    lines = ("card,sku,date,qty,paid\nM1,P1,2024-01-01,1,10\nM2,P1,2024-01-02,2,30\n"
             "M3,P1,2024-01-03,1,11\nM1,P2,2024-01-03,4,2\nM1,P9,2024-01-04,1,7\n")
    out = tmp_path / "out"
    report = ingest(_mapping(tmp_path, lines, {k: v for k, v in TXN_COLUMNS.items()
                                               if k != "cost"}, products=prod_map), out)
    section = report.tables["products"]
    # no price column is no repair: each product's price is the median amount / quantity of its
    # kept lines (P1: 10, 15, 11 -> 11), and a product never sold has none
    assert section["repaired_by_reason"]["bad_price"] == 0
    assert section["price"] == {"source": "median amount / quantity of its kept sales lines",
                                "derived": True,
                                "priced": 3, "without_price": 1}
    assert _rows(out / "products.parquet", "SELECT product_id, category, price FROM t") == [
        ("P1", "dairy", 11.0), ("P2", "bakery", 0.5), ("P5", "fruit", None), ("P9", "bakery", 7.0)]
    # --strict has nothing to refuse in a master that has no price at all
    assert ingest(_mapping(tmp_path, lines, {k: v for k, v in TXN_COLUMNS.items() if k != "cost"},
                           products=prod_map), tmp_path / "out2", strict=True).rows_kept == 5
    # and the report says so on the console
    from io import StringIO

    from rich.console import Console

    buf = StringIO()
    report.print(Console(file=buf, width=200))
    assert "no price column" in buf.getvalue()


def test_a_barcode_prefix_is_the_brand_of_products_without_one(tmp_path: Path) -> None:
    """``brand_from_id_prefix``: a product with no brand whose id is a barcode (12+ characters)
    gets the id's first N characters as its brand; a given brand and a short id are left alone."""
    products = _write(tmp_path / "src" / "products.csv",
                      "id,cat,brand\n4710001000011,dairy,Own\n4710001000028,dairy,\n"
                      "0088400000123,bakery,\nP9,bakery,\n")
    prod_map = {"path": str(products), "columns": {"product_id": "id", "category": "cat", "brand": "brand"}}
    lines = ("card,sku,date,qty,paid\nM1,4710001000011,2024-01-01,1,10\nM2,4710001000028,2024-01-02,2,30\n"
             "M3,P9,2024-01-03,1,11\n")
    cols = {k: v for k, v in TXN_COLUMNS.items() if k != "cost"}
    out = tmp_path / "out"
    report = ingest(_mapping(tmp_path, lines, cols, products=prod_map, brand_from_id_prefix=8), out)
    assert _rows(out / "products.parquet", "SELECT product_id, brand FROM t ORDER BY product_id") == [
        ("0088400000123", "00884000"), ("4710001000011", "Own"), ("4710001000028", "47100010"), ("P9", None)]
    assert report.tables["products"]["brand"]["branded"] == 3
    assert "first 8 characters" in report.tables["products"]["brand"]["source"]
    # without the setting, nothing is made up
    ingest(_mapping(tmp_path, lines, cols, products=prod_map), tmp_path / "plain")
    assert _rows(tmp_path / "plain" / "products.parquet", "SELECT count(brand) FROM t") == [(1,)]


# ---------------------------------------------------------------------------------------------
# memory: DuckDB's cap comes from a setting or a share of RAM, and whatever does not fit spills


def test_memory_limit_from_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from recsys.data.ingest import MEMORY_ENV, default_memory_limit

    monkeypatch.delenv(MEMORY_ENV, raising=False)
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    default_mb = int(default_memory_limit().removesuffix("MB"))
    assert 1024 <= default_mb <= max(ram * 0.35 / 2**20, 1024)
    monkeypatch.setenv(MEMORY_ENV, "3GB")
    assert default_memory_limit() == "3GB"
    monkeypatch.setenv(MEMORY_ENV, "10%")
    assert int(default_memory_limit().removesuffix("MB")) <= max(ram * 0.1 / 2**20, 1024)
    for bad in ("lots%", "0%", "250%"):
        monkeypatch.setenv(MEMORY_ENV, bad)
        with pytest.raises(InputError, match=MEMORY_ENV):
            default_memory_limit()
    monkeypatch.setenv(MEMORY_ENV, "a lot")
    out = tmp_path / "out"
    with pytest.raises(InputError, match="not a memory size"):
        ingest(_mapping(tmp_path), out)
    assert not (out / ".tmp").exists()


def test_cli_memory_limit(tmp_path: Path) -> None:
    _write(tmp_path / "src" / "lines.csv", LINES)
    code, output = _cli(tmp_path, TOML.format(qty="qty"), "--memory-limit", "1GB")
    assert code == 0, output
    code, output = _cli(tmp_path, TOML.format(qty="qty"), "--memory-limit", "half%")
    assert code == 2 and "--memory-limit 'half%' is not a share of RAM" in output
