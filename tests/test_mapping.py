"""Column mapping: TOML in, validated config out; a retailer's own export loads without code."""

from __future__ import annotations

from pathlib import Path

import duckdb
import pytest

from recsys.data.ingest import ingest
from recsys.data.mapping import MappingConfig, resolve_source
from recsys.errors import InputError

SOURCES = Path(__file__).resolve().parents[1] / "recsys" / "data" / "sources"

RETAILER_TOML = """
name = "acme"
[transactions]
path = "acme/sales.csv"
ts_format = "%d.%m.%Y %H:%M"
delimiter = ";"
[transactions.columns]
member_id = "Kundennummer"
product_id = "Artikel"
ts = "Zeitpunkt"
quantity = "Menge"
amount = "Umsatz"
store_id = "Filiale"
category = "Warengruppe"
"""

RETAILER_CSV = """Kundennummer;Artikel;Zeitpunkt;Menge;Umsatz;Filiale;Warengruppe
0001;00042;03.01.2024 10:15;2;5.0;F1;milk
0002;00042;03.01.2024 11:00;1;2.5;F1;milk
0001;00077;04.01.2024 09:30;1;3.0;F2;bread
"""


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def test_retailer_csv_loads_through_a_toml_mapping(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    _write(data_dir / "acme" / "sales.csv", RETAILER_CSV)
    toml = _write(tmp_path / "acme.toml", RETAILER_TOML)

    cfg = resolve_source(str(toml), data_dir)
    assert cfg.name == "acme"
    # relative paths in the file resolve against the data dir, not the working directory
    assert cfg.transactions.path == (data_dir / "acme" / "sales.csv").resolve()

    report = ingest(cfg, tmp_path / "out")
    assert (report.rows_in, report.rows_kept, report.rows_rejected) == (3, 3, 0)
    rows = duckdb.sql(
        f"SELECT member_id, product_id, ts::VARCHAR, quantity, amount, unit_price, store_id, cost "
        f"FROM '{tmp_path / 'out' / 'transactions.parquet'}'"
    ).fetchall()
    assert rows == [
        ("0001", "00042", "2024-01-03 10:15:00", 2.0, 5.0, 2.5, "F1", None),
        ("0002", "00042", "2024-01-03 11:00:00", 1.0, 2.5, 2.5, "F1", None),
        ("0001", "00077", "2024-01-04 09:30:00", 1.0, 3.0, 3.0, "F2", None),
    ]
    products = duckdb.sql(
        f"SELECT product_id, category, price FROM '{tmp_path / 'out' / 'products.parquet'}'"
    ).fetchall()
    assert products == [("00042", "milk", 2.5), ("00077", "bread", 3.0)]


def test_parquet_input_with_typed_columns(tmp_path: Path) -> None:
    src = tmp_path / "sales.parquet"
    duckdb.sql(f"""
        COPY (SELECT * FROM (VALUES
            ('007', 'A1', TIMESTAMP '2024-02-01 08:00:00', 1, 9.5),
            ('008', 'A2', TIMESTAMP '2024-02-02 09:00:00', 3, 6.0),
            ('008', 'A2', TIMESTAMP '2024-02-02 09:00:00', 3, 6.0)
        ) t(cust, item, sold_at, n, paid)) TO '{src}' (FORMAT parquet)""")
    cfg = MappingConfig.from_dict({
        "name": "pq",
        "transactions": {"path": str(src), "columns": {
            "member_id": "cust", "product_id": "item", "ts": "sold_at",
            "quantity": "n", "amount": "paid"}},
    }).resolved(tmp_path)
    report = ingest(cfg, tmp_path / "out")
    assert (report.rows_in, report.rows_kept, report.rejected_by_reason["duplicate"]) == (3, 2, 1)
    rows = duckdb.sql(
        f"SELECT member_id, ts::VARCHAR, unit_price FROM '{tmp_path / 'out' / 'transactions.parquet'}'"
    ).fetchall()
    assert rows == [("007", "2024-02-01 08:00:00", 9.5), ("008", "2024-02-02 09:00:00", 2.0)]


def test_unknown_canonical_column_is_named(tmp_path: Path) -> None:
    toml = _write(tmp_path / "m.toml", RETAILER_TOML + 'colour = "Farbe"\n')
    with pytest.raises(InputError, match=r"unknown canonical column 'colour'"):
        resolve_source(str(toml), tmp_path)


def test_missing_required_column_is_named(tmp_path: Path) -> None:
    toml = _write(tmp_path / "m.toml", RETAILER_TOML.replace('ts = "Zeitpunkt"\n', ""))
    with pytest.raises(InputError, match=r"required column 'ts' is not mapped"):
        resolve_source(str(toml), tmp_path)


def test_products_table_requires_its_own_columns() -> None:
    raw = {
        "name": "x",
        "transactions": {"path": "t.csv", "columns": {
            "member_id": "m", "product_id": "p", "ts": "t", "quantity": "q", "amount": "a"}},
        "products": {"path": "p.csv", "columns": {"product_id": "p", "price": "c"}},
    }
    with pytest.raises(InputError, match=r"products\.columns: required column 'category'"):
        MappingConfig.from_dict(raw)
    # price is optional: without it, ingest derives each product's price from its sales lines
    raw["products"]["columns"] = {"product_id": "p", "category": "c"}
    assert "price" not in MappingConfig.from_dict(raw).products.columns


def test_limits_section(tmp_path: Path) -> None:
    toml = _write(tmp_path / "m.toml", RETAILER_TOML + """
[limits]
ts_min = 2000-01-01
ts_max = 2030-06-30T12:00:00
max_quantity = 500
""")
    cfg = resolve_source(str(toml), tmp_path)
    assert (cfg.limits.ts_min.isoformat(), cfg.limits.ts_max.isoformat(), cfg.limits.max_quantity) == (
        "2000-01-01T00:00:00", "2030-06-30T12:00:00", 500)
    for bad, needle in (("max_quantity = 0", "max_quantity"), ("ts_min = 'soon'", "ts_min"),
                        ("colour = 1", "limits.colour")):
        toml = _write(tmp_path / "m.toml", RETAILER_TOML + f"\n[limits]\n{bad}\n")
        with pytest.raises(InputError, match=needle):
            resolve_source(str(toml), tmp_path)


def test_unknown_key_is_rejected(tmp_path: Path) -> None:
    toml = _write(tmp_path / "m.toml", RETAILER_TOML.replace("[transactions]\n",
                                                              "[transactions]\nseparator = ','\n"))
    with pytest.raises(InputError, match=r"transactions\.separator"):
        resolve_source(str(toml), tmp_path)


def test_bad_dataset_name_is_rejected(tmp_path: Path) -> None:
    toml = _write(tmp_path / "m.toml", RETAILER_TOML.replace('name = "acme"', 'name = "../up"'))
    with pytest.raises(InputError, match="folder name"):
        resolve_source(str(toml), tmp_path)


def test_builtin_tafeng_mapping(tmp_path: Path) -> None:
    cfg = resolve_source("tafeng", tmp_path)
    assert cfg.name == "tafeng"
    assert cfg.transactions.path == tmp_path.resolve() / "raw" / "ta_feng.csv.zip"
    assert cfg.transactions.columns["member_id"] == "CUSTOMER_ID"
    assert cfg.transactions.columns["quantity"] == "AMOUNT"
    assert cfg.transactions.columns["amount"] == "SALES_PRICE"
    assert cfg.products is None and cfg.members is None and cfg.identities is None


def test_commented_example_mapping_parses(tmp_path: Path) -> None:
    cfg = MappingConfig.from_toml(SOURCES / "example_retailer.toml").resolved(tmp_path)
    assert set(cfg.tables()) == {"transactions", "products", "members", "identities"}
    assert cfg.transactions.delimiter == ";"
    assert cfg.products is not None and cfg.products.file_format == "parquet"
    assert cfg.identities is not None
    assert cfg.identities.columns == {"channel": "channel", "external_id": "account_id",
                                      "member_id": "member_no"}


def test_absolute_paths_stay(tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere" / "sales.csv"
    toml = _write(tmp_path / "m.toml", RETAILER_TOML.replace('"acme/sales.csv"', f'"{elsewhere}"'))
    assert resolve_source(str(toml), tmp_path / "data").transactions.path == elsewhere


def test_unknown_source_and_missing_mapping_file(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"unknown source 'nosuch'.*tafeng"):
        resolve_source("nosuch", tmp_path)
    with pytest.raises(InputError, match="mapping file not found"):
        resolve_source(str(tmp_path / "absent.toml"), tmp_path)


def test_invalid_toml_is_an_input_error(tmp_path: Path) -> None:
    toml = _write(tmp_path / "m.toml", "name = \n")
    with pytest.raises(InputError, match="not valid TOML"):
        resolve_source(str(toml), tmp_path)
