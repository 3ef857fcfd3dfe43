"""Synthetic data: deterministic, the requested sizes, and the shapes recommenders rely on."""

from __future__ import annotations

import hashlib
import json
import tomllib
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from recsys.cli import app
from recsys.data.ingest import ingest
from recsys.data.mapping import resolve_source
from recsys.data.synth import SynthSpec, synthesize
from recsys.errors import InputError

FILES = ("transactions.parquet", "products.parquet", "members.parquet")
SPEC = SynthSpec(members=1_500, products=2_000, lines=60_000, categories=40, seed=11)


@pytest.fixture(scope="module")
def synth_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("synth")
    synthesize(SPEC, out)
    return out


def _con(folder: Path) -> duckdb.DuckDBPyConnection:
    con = duckdb.connect()
    for name in ("transactions", "products", "members"):
        con.execute(f"CREATE VIEW {name} AS SELECT * FROM read_parquet('{folder / name}.parquet')")
    return con


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _repeat_share(folder: Path) -> float:
    """Share of lines whose product the member had already bought on an earlier trip."""
    return _con(folder).execute(
        """
        SELECT avg(CASE WHEN first_ts < ts THEN 1 ELSE 0 END)
        FROM (SELECT ts, min(ts) OVER (PARTITION BY member_id, product_id) AS first_ts
              FROM transactions)
        """
    ).fetchone()[0]


def test_same_seed_gives_identical_files_and_another_seed_does_not(tmp_path: Path, synth_dir: Path):
    synthesize(SPEC, tmp_path / "again")
    for name in FILES:
        assert _digest(tmp_path / "again" / name) == _digest(synth_dir / name), name

    other = SynthSpec(**{**SPEC.__dict__, "seed": SPEC.seed + 1})
    synthesize(other, tmp_path / "other")
    assert _digest(tmp_path / "other" / "transactions.parquet") != _digest(
        synth_dir / "transactions.parquet"
    )


def test_sizes_and_text_ids(synth_dir: Path):
    con = _con(synth_dir)
    assert con.execute("SELECT count(*) FROM transactions").fetchone()[0] == SPEC.lines
    assert con.execute("SELECT count(DISTINCT product_id), count(*) FROM products").fetchone() == (
        SPEC.products,
        SPEC.products,
    )
    assert con.execute("SELECT count(DISTINCT member_id), count(*) FROM members").fetchone() == (
        SPEC.members,
        SPEC.members,
    )
    assert con.execute("SELECT count(DISTINCT category) FROM products").fetchone()[0] == SPEC.categories

    tx = pq.read_schema(synth_dir / "transactions.parquet")
    for col in ("member_id", "product_id", "channel", "store_id"):
        assert tx.field(col).type == pa.string(), col
    assert tx.field("ts").type == pa.timestamp("us")
    assert pq.read_schema(synth_dir / "products.parquet").field("product_id").type == pa.string()
    assert pq.read_schema(synth_dir / "members.parquet").field("member_id").type == pa.string()

    assert con.execute(
        r"SELECT bool_and(regexp_full_match(member_id, 'M\d{7}')) FROM members"
    ).fetchone()[0]
    assert con.execute(
        r"SELECT bool_and(regexp_full_match(product_id, 'P\d{6}')) FROM products"
    ).fetchone()[0]
    # Every line names a known member and product.
    assert con.execute(
        """
        SELECT count(*) FROM transactions t
        LEFT JOIN members m USING (member_id) LEFT JOIN products p USING (product_id)
        WHERE m.member_id IS NULL OR p.product_id IS NULL
        """
    ).fetchone()[0] == 0


def test_values_are_plausible(synth_dir: Path):
    con = _con(synth_dir)
    channels = {r[0] for r in con.execute("SELECT DISTINCT channel FROM transactions").fetchall()}
    assert channels == {"pos", "app", "miniprogram"}
    q1, q3, qmin, amin = con.execute(
        "SELECT avg((quantity = 1)::INT), avg((quantity <= 3)::INT), min(quantity), min(amount) "
        "FROM transactions"
    ).fetchone()
    assert q1 > 0.5 and q3 > 0.85 and qmin >= 1 and amin > 0
    # amount = quantity × list price, less a promotion discount on some lines.
    full, discounted, over = con.execute(
        """
        SELECT avg((abs(t.amount - t.quantity * p.price) < 0.011)::INT),
               avg((t.amount < t.quantity * p.price - 0.011)::INT),
               sum((t.amount > t.quantity * p.price + 0.011)::INT)
        FROM transactions t JOIN products p USING (product_id)
        """
    ).fetchone()
    assert full > 0.7 and 0.05 < discounted < 0.3 and over == 0


def test_popularity_is_long_tailed(synth_dir: Path):
    top_share = _con(synth_dir).execute(
        """
        WITH counts AS (SELECT product_id, count(*) AS n FROM transactions GROUP BY 1),
             ranked AS (SELECT n, row_number() OVER (ORDER BY n DESC) AS rk FROM counts)
        SELECT sum(n) FILTER (WHERE rk <= $top) / sum(n) FROM ranked
        """,
        {"top": SPEC.products // 10},
    ).fetchone()[0]
    assert top_share > 0.4


def test_member_activity_is_long_tailed(synth_dir: Path):
    median, mean, top_share = _con(synth_dir).execute(
        """
        WITH counts AS (SELECT m.member_id, count(t.member_id) AS n
                        FROM members m LEFT JOIN transactions t USING (member_id) GROUP BY 1),
             ranked AS (SELECT n, row_number() OVER (ORDER BY n DESC) AS rk FROM counts)
        SELECT median(n), avg(n), sum(n) FILTER (WHERE rk <= $top) / sum(n) FROM ranked
        """,
        {"top": SPEC.members // 10},
    ).fetchone()
    assert median < 0.6 * mean  # most members buy less than the average member
    assert top_share > 0.35  # the top tenth of members make well over a tenth of the lines


def test_members_rebuy_their_staples(tmp_path: Path, synth_dir: Path):
    with_staples = _repeat_share(synth_dir)
    synthesize(SynthSpec(**{**SPEC.__dict__, "repeat_share": 0.0}), tmp_path / "no_staples")
    without = _repeat_share(tmp_path / "no_staples")
    assert with_staples > 0.3
    assert with_staples > without + 0.05


def test_price_tiers_separate_members(tmp_path: Path, synth_dir: Path):
    """Members differ in how cheap their choices are within categories; all-mid members less so."""

    def spread(folder: Path) -> float:
        return _con(folder).execute(
            """
            WITH level AS (SELECT category, avg(ln(price)) AS lv FROM products GROUP BY 1),
                 rel AS (SELECT t.member_id, ln(p.price) - l.lv AS r
                         FROM transactions t JOIN products p USING (product_id)
                         JOIN level l USING (category)),
                 per AS (SELECT member_id, avg(r) AS r FROM rel GROUP BY 1 HAVING count(*) >= 30)
            SELECT stddev_samp(r) FROM per
            """
        ).fetchone()[0]

    synthesize(SynthSpec(**{**SPEC.__dict__, "price_tiers": (0.0, 1.0, 0.0)}), tmp_path / "mid")
    assert spread(synth_dir) > 1.3 * spread(tmp_path / "mid")


def test_time_respects_lifecycles_and_launches(synth_dir: Path):
    con = _con(synth_dir)
    lo, hi = con.execute("SELECT min(ts), max(ts) FROM transactions").fetchone()
    assert str(lo) >= "2024-01-01" and str(hi) < "2024-07-01"
    assert con.execute(
        "SELECT count(*) FROM transactions JOIN members m USING (member_id) WHERE ts < m.joined_at"
    ).fetchone()[0] == 0
    assert con.execute(
        "SELECT count(*) FROM transactions JOIN products p USING (product_id) WHERE ts < p.launched_at"
    ).fetchone()[0] == 0
    # Cold start exists: products launched during the period that sell, and products never sold.
    launched_and_sold, never_sold = con.execute(
        """
        SELECT count(DISTINCT p.product_id) FILTER (WHERE p.launched_at >= '2024-01-01'
                                                     AND t.product_id IS NOT NULL),
               count(DISTINCT p.product_id) FILTER (WHERE t.product_id IS NULL)
        FROM products p LEFT JOIN transactions t USING (product_id)
        """
    ).fetchone()
    assert launched_and_sold > 0 and never_sold > 0
    # Members join during the period too, and some stop buying long before its end.
    joined_in_period, churned = con.execute(
        """
        SELECT (SELECT count(*) FROM members WHERE joined_at >= '2024-01-01'),
               (SELECT count(*) FROM (SELECT member_id FROM transactions GROUP BY 1
                                      HAVING count(*) >= 20 AND max(ts) < '2024-05-01'))
        """
    ).fetchone()
    assert joined_in_period > 0.2 * SPEC.members and churned > 0


def test_lines_come_in_trips(synth_dir: Path):
    lines_per_trip, mixed = _con(synth_dir).execute(
        """
        SELECT count(*) / count(DISTINCT (member_id, ts)),
               count(*) FILTER (WHERE n_channels > 1 OR n_stores > 1)
        FROM (SELECT member_id, ts, count(DISTINCT channel) OVER w AS n_channels,
                     count(DISTINCT store_id) OVER w AS n_stores
              FROM transactions WINDOW w AS (PARTITION BY member_id, ts))
        """
    ).fetchone()
    assert 2.5 < lines_per_trip < 6 and mixed == 0


def test_files_record_the_spec_that_made_them(synth_dir: Path):
    for name in FILES:
        meta = pq.read_schema(synth_dir / name).metadata
        recorded = json.loads(meta[b"recsys.synth"])
        assert recorded["seed"] == SPEC.seed and recorded["lines"] == SPEC.lines
        assert recorded["start"] == "2024-01-01"


def test_small_chunks_give_the_same_shape(tmp_path: Path):
    spec = SynthSpec(members=300, products=100, lines=9_000, chunk_lines=1_000, seed=3)
    synthesize(spec, tmp_path)
    meta = pq.ParquetFile(tmp_path / "transactions.parquet").metadata
    assert meta.num_rows == spec.lines
    assert meta.num_row_groups >= 5  # written chunk by chunk


def test_mapping_toml_names_existing_files(synth_dir: Path):
    mapping = tomllib.loads((synth_dir / "mapping.toml").read_text(encoding="utf-8"))
    assert mapping["name"] == "synth"
    for table in ("transactions", "products", "members"):
        path = Path(mapping[table]["path"])
        assert path.is_absolute() and path.is_file()
        assert path == synth_dir.resolve() / f"{table}.parquet"
        columns = mapping[table]["columns"]
        assert columns == {c: c for c in columns}  # identity mapping
        assert set(columns) == set(pq.read_schema(path).names)


@pytest.mark.parametrize(
    "bad",
    [
        {"members": 0},
        {"products": -5},
        {"lines": 0},
        {"categories": 0},
        {"members": True},
        {"lines": 10.5},
        {"seed": -1},
        {"repeat_share": 1.5},
        {"repeat_share": 0.7, "favourite_share": 0.5},
        {"price_tiers": (0.5, 0.5, 0.5)},
    ],
)
def test_bad_spec_is_an_input_error(bad: dict[str, object]):
    sizes: dict[str, object] = {"members": 10, "products": 10, "lines": 100}
    with pytest.raises(InputError):
        SynthSpec(**{**sizes, **bad})  # type: ignore[arg-type]


def test_categories_are_capped_at_products(tmp_path: Path):
    synthesize(SynthSpec(members=20, products=5, lines=200, categories=50), tmp_path)
    assert _con(tmp_path).execute("SELECT count(DISTINCT category) FROM products").fetchone()[0] == 5


def test_cli_synth(tmp_path: Path):
    out = tmp_path / "cli"
    result = CliRunner().invoke(
        app,
        ["data", "synth", "--out", str(out), "--members", "200", "--products", "50", "--lines", "5000"],
    )
    assert result.exit_code == 0, result.output
    assert "5,000 lines" in result.output
    assert pq.ParquetFile(out / "transactions.parquet").metadata.num_rows == 5_000
    assert (out / "mapping.toml").is_file()


def test_cli_bad_size_exits_with_message(tmp_path: Path):
    result = CliRunner().invoke(
        app, ["data", "synth", "--out", str(tmp_path / "x"), "--members", "0"]
    )
    assert result.exit_code == 2
    assert "members" in result.output


def test_ingest_accepts_every_line_strictly(tmp_path: Path, synth_dir: Path):
    """The files and mapping go through the real ingest path with nothing rejected."""
    source = resolve_source(str(synth_dir / "mapping.toml"), tmp_path)
    assert source.name == "synth"
    report = ingest(source, tmp_path / "canonical", strict=True)
    assert (report.rows_in, report.rows_kept, report.rows_rejected) == (SPEC.lines, SPEC.lines, 0)
    assert report.outputs["products.parquet"] == SPEC.products
    assert report.outputs["members.parquet"] == SPEC.members
