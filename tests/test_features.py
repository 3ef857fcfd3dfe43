"""Feature build: every tag on tiny hand-computed data, the as-of cut, the manifest and the CLI.

Expected values are worked out by hand in the comments next to each dataset, not recomputed.
"""

from __future__ import annotations

import hashlib
import json
from datetime import date, datetime, time, timedelta
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from rich.console import Console
from typer.testing import CliRunner

from features.build import FeatureSnapshot, build_features
from features.config import FeatureConfig
from recsys.cli import app
from recsys.errors import InputError
from recsys.tags import TagDef, TagRegistry
from recsys.tags import values as tag_values

AS_OF = date(2001, 2, 1)
MIDNIGHT = datetime.combine(AS_OF, time())

TX_SCHEMA = pa.schema([
    ("member_id", pa.string()), ("product_id", pa.string()), ("ts", pa.timestamp("us")),
    ("quantity", pa.float64()), ("amount", pa.float64()), ("unit_price", pa.float64()),
    ("cost", pa.float64()), ("channel", pa.string()), ("store_id", pa.string()),
    ("basket_id", pa.string()),
])
PRODUCT_SCHEMA = pa.schema([
    ("product_id", pa.string()), ("category", pa.string()), ("price", pa.float64()),
    ("brand", pa.string()), ("name", pa.string()), ("launched_at", pa.timestamp("us")),
])
MEMBER_SCHEMA = pa.schema([
    ("member_id", pa.string()), ("joined_at", pa.timestamp("us")), ("age_group", pa.string()),
    ("region", pa.string()),
])


def ago(days: int, hour: int = 12) -> datetime:
    """A time on the calendar day ``days`` days before the as-of date."""
    return MIDNIGHT - timedelta(days=days) + timedelta(hours=hour)


def line(member: str, product: str, ts: datetime, amount: float, quantity: float = 1.0,
         channel: str | None = None, basket: str | None = None) -> dict:
    return {"member_id": member, "product_id": product, "ts": ts, "quantity": quantity,
            "amount": amount, "unit_price": amount / quantity, "cost": None, "channel": channel,
            "store_id": None, "basket_id": basket}


def product(pid: str, category: str, price: float | None = None,
            launched_at: datetime | None = None) -> dict:
    return {"product_id": pid, "category": category, "price": price, "brand": None,
            "name": f"name {pid}", "launched_at": launched_at}


def member(mid: str, age_group: str | None = None, region: str | None = None) -> dict:
    return {"member_id": mid, "joined_at": datetime(2000, 1, 1), "age_group": age_group,
            "region": region}


def write_canonical(folder: Path, lines: list[dict], products: list[dict],
                    members: list[dict]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(lines, schema=TX_SCHEMA), folder / "transactions.parquet")
    pq.write_table(pa.Table.from_pylist(products, schema=PRODUCT_SCHEMA), folder / "products.parquet")
    pq.write_table(pa.Table.from_pylist(members, schema=MEMBER_SCHEMA), folder / "members.parquet")
    return folder


def rows_by_id(path: Path, key: str) -> dict[str, dict]:
    return {row[key]: row for row in pq.read_table(path).to_pylist()}


# --------------------------------------------------------------------------------------------
# The shop: small groups of members, each exercising one tag, in categories of their own so that
# the price bands of one group do not depend on another.

def shop_lines() -> list[dict]:
    lines = [
        # Lifecycle (category L). Recency and tenure are counted in calendar days, so the time of
        # day must not matter: sleep60's last purchase is late in the evening.
        line("sleep60", "l1", ago(100), 10), line("sleep60", "l1", ago(60, hour=23), 10),
        line("active59", "l1", ago(100), 10), line("active59", "l1", ago(59), 10),
        line("lost90", "l1", ago(90, hour=0), 10),
        line("sleep89", "l1", ago(89), 10),
        line("new29", "l1", ago(29), 10),
        line("notnew30", "l1", ago(30), 10),
        # Price sensitivity. Category C1 sells one line at each unit price 1..9:
        # PERCENTILE_CONT(1/3) sits at position 8/3 -> 3 + 2/3 = 11/3, (2/3) at 16/3 -> 19/3.
        # Low: 1, 2, 3; mid: 4, 5, 6; high: 7, 8, 9.
        line("hi", "p7", ago(5), 7), line("hi", "p9", ago(5), 9), line("hi", "p5", ago(5), 5),
        line("lo", "p1", ago(5), 1), line("lo", "p2", ago(5), 2), line("lo", "p8", ago(5), 8),
        line("mix", "p3", ago(5), 3), line("mix", "p4", ago(5), 4), line("mix", "p6", ago(5), 6),
        # C2 sells 10, 20, 30, 40 (quantity 2 each, so unit price is half the amount):
        # q_low at position 1 = 20, q_high at position 2 = 30 -> 10 low, 40 high, 20/30 mid.
        line("tie", "q10", ago(5), 20, 2), line("tie", "q20", ago(5), 40, 2),
        line("tie", "q30", ago(5), 60, 2), line("tie", "q40", ago(5), 80, 2),
        # Two priced lines only: too few for a price tag.
        line("few", "r5", ago(5), 5), line("few", "r5", ago(6), 5),
        # Top categories by lines: B 2, then A, C, D one each -> tie broken by id: [B, A, C].
        # Channel by occasions: app 2 (two days, no basket), store 1 (one basket of 3 lines).
        line("top", "b1", ago(5), 1, channel="app"), line("top", "b1", ago(4), 1, channel="app"),
        line("top", "a1", ago(3), 1, channel="store", basket="S1"),
        line("top", "c1", ago(3), 1, channel="store", basket="S1"),
        line("top", "d1", ago(3), 1, channel="store", basket="S1"),
        # Frequency: one day without baskets (2 lines) = 1 occasion; one day with baskets X1 and
        # X2 = 2 occasions -> 3 occasions, 5 lines, 2 distinct days.
        line("freq", "f1", ago(10), 1), line("freq", "f1", ago(10), 1),
        line("freq", "f1", ago(9), 1, basket="X1"), line("freq", "f1", ago(9), 1, basket="X1"),
        line("freq", "f1", ago(9), 1, basket="X2"),
        # Products of category P. Unit prices: pp 4, 2, 10; pq 1; pr 20 -> sorted 1 2 4 10 20:
        # q_low at position 4/3 = 2 + (4-2)/3 = 8/3, q_high at 8/3 = 4 + (10-4)*2/3 = 8.
        line("buyer1", "pp", ago(31), 8, 2), line("buyer1", "pp", ago(20), 2),
        line("buyer2", "pp", ago(10), 10),
        line("buyer2", "pq", ago(30, hour=0), 1),
        line("buyer1", "pr", ago(5), 20),
    ]
    return lines


def shop_products() -> list[dict]:
    return [
        # l1: first sold 100 days ago but launched 20 days ago -> new by its launch date.
        product("l1", "L", 10, launched_at=ago(20)),
        *[product(f"p{i}", "C1", float(i)) for i in range(1, 10)],
        *[product(f"q{i}", "C2", float(i)) for i in (10, 20, 30, 40)],
        product("r5", "C3", 5), product("a1", "A", 1), product("b1", "B", 1),
        product("c1", "C", 1), product("d1", "D", 1), product("f1", "F", 1),
        product("pp", "P", None),  # no list price: price = median unit price 4
        product("pq", "P", 1.5),
        product("pr", "P", 20),
        product("pn_c1", "C1", 2.0, launched_at=ago(10)),  # never sold: list price 2 -> low
        product("pn_old", "C1", 5.0, launched_at=ago(400)),  # never sold: 5 -> mid
        product("pn_null", "C1", None),  # never sold, no price -> unknown
        product("pn_nocat", "Z", 3.0),  # never sold, category without lines -> unknown
    ]


def shop_members() -> list[dict]:
    ids = ["sleep60", "active59", "lost90", "sleep89", "new29", "notnew30", "lo", "mix",
           "tie", "few", "top", "freq", "buyer1", "buyer2", "prospect"]
    return [member("hi", "25-29", "north")] + [member(m) for m in ids]


@pytest.fixture(scope="module")
def shop(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_canonical(tmp_path_factory.mktemp("shop") / "canonical", shop_lines(),
                           shop_products(), shop_members())


@pytest.fixture(scope="module")
def snap(shop: Path, tmp_path_factory: pytest.TempPathFactory) -> FeatureSnapshot:
    return build_features(shop, tmp_path_factory.mktemp("snap"), AS_OF, FeatureConfig())


@pytest.fixture(scope="module")
def mem(snap: FeatureSnapshot) -> dict[str, dict]:
    return rows_by_id(snap.members_path, "member_id")


@pytest.fixture(scope="module")
def prod(snap: FeatureSnapshot) -> dict[str, dict]:
    return rows_by_id(snap.products_path, "product_id")


# --------------------------------------------------------------------------------------------
# members


def test_lifecycle_boundaries(mem: dict[str, dict]) -> None:
    expected = {
        # member: (recency_days, tenure_days, lifecycle)
        "sleep60": (60, 100, "sleeping"),  # exactly 60 days: "no purchase in 60 days"
        "active59": (59, 100, "active"),
        "lost90": (90, 90, "lost"),
        "sleep89": (89, 89, "sleeping"),
        "new29": (29, 29, "new"),
        "notnew30": (30, 30, "active"),
    }
    got = {m: (mem[m]["recency_days"], mem[m]["tenure_days"], mem[m]["lifecycle"]) for m in expected}
    assert got == expected


def test_prospect_has_a_row_and_empty_features(mem: dict[str, dict]) -> None:
    p = mem["prospect"]
    assert (p["lifecycle"], p["value_segment"], p["price_sensitivity"]) == ("prospect", "none", "unknown")
    assert (p["n_lines"], p["frequency"], p["monetary"], p["top_categories"]) == (0, 0, 0.0, [])
    assert p["recency_days"] is p["r_score"] is p["first_purchase"] is p["preferred_channel"] is None


def test_basic_aggregates(mem: dict[str, dict]) -> None:
    s = mem["sleep60"]
    assert (s["n_lines"], s["frequency"], s["monetary"], s["avg_basket_value"]) == (2, 2, 20.0, 10.0)
    assert s["first_purchase"] == ago(100) and s["last_purchase"] == ago(60, hour=23)


def test_frequency_counts_baskets_when_present_else_days(mem: dict[str, dict]) -> None:
    f = mem["freq"]
    assert (f["n_lines"], f["frequency"], f["avg_basket_value"]) == (5, 3, 5 / 3)
    assert mem["top"]["frequency"] == 3  # two app days + one store basket


def test_price_bands_table(snap: FeatureSnapshot) -> None:
    bands = rows_by_id(snap.category_price_bands_path, "category")
    assert bands["C1"]["q_low"] == pytest.approx(11 / 3)
    assert bands["C1"]["q_high"] == pytest.approx(19 / 3)
    assert bands["C1"]["n_lines"] == 9
    assert (bands["C2"]["q_low"], bands["C2"]["q_high"], bands["C2"]["n_lines"]) == (20, 30, 4)
    assert bands["P"]["q_low"] == pytest.approx(8 / 3) and bands["P"]["q_high"] == pytest.approx(8)
    assert "Z" not in bands  # no lines, no thresholds


def test_price_sensitivity(mem: dict[str, dict]) -> None:
    got = {m: (mem[m]["share_high"], mem[m]["share_low"], mem[m]["price_sensitivity"])
           for m in ("hi", "lo", "mix", "tie")}
    assert got == {
        "hi": (pytest.approx(2 / 3), 0.0, "high_end"),  # 7, 9 high; 5 mid
        "lo": (pytest.approx(1 / 3), pytest.approx(2 / 3), "price_sensitive"),
        "mix": (0.0, pytest.approx(1 / 3), "mainstream"),  # 3 low; 4, 6 mid
        "tie": (0.25, 0.25, "mainstream"),
    }
    assert (mem["few"]["n_priced_lines"], mem["few"]["price_sensitivity"]) == (2, "unknown")


def test_price_sensitivity_both_shares_over_threshold(shop: Path, tmp_path: Path) -> None:
    cfg = FeatureConfig(high_end_share=0.25, price_sensitive_share=0.25)
    got = rows_by_id(build_features(shop, tmp_path, AS_OF, cfg).members_path, "member_id")
    assert got["lo"]["price_sensitivity"] == "price_sensitive"  # 2/3 low beats 1/3 high
    assert got["mix"]["price_sensitivity"] == "price_sensitive"  # 1/3 low >= 0.25
    assert got["tie"]["price_sensitivity"] == "mainstream"  # 0.25 each: neither end dominates
    assert got["hi"]["price_sensitivity"] == "high_end"


def test_top_categories_and_channel(mem: dict[str, dict]) -> None:
    assert mem["top"]["top_categories"] == ["B", "A", "C"]
    assert mem["top"]["preferred_channel"] == "app"  # 2 occasions vs 1 (despite 3 store lines)
    assert mem["few"]["top_categories"] == ["C3"]
    assert mem["few"]["preferred_channel"] is None


def test_member_attributes_carried(mem: dict[str, dict]) -> None:
    assert (mem["hi"]["age_group"], mem["hi"]["region"]) == ("25-29", "north")
    assert mem["hi"]["joined_at"] == datetime(2000, 1, 1)
    assert len(mem) == len(shop_members())


RFM_POPULATION = {
    # member: (days since last purchase, purchase days, monetary)
    "a": (1, 5, 1000), "b": (2, 1, 500), "c": (3, 4, 10), "d": (4, 1, 30), "e": (5, 3, 600),
    "f": (7, 2, 40), "g": (6, 6, 700), "h": (8, 1, 800), "i": (9, 7, 900), "j": (10, 8, 20),
}


@pytest.fixture(scope="module")
def rfm_shop(tmp_path_factory: pytest.TempPathFactory) -> Path:
    lines = []
    for m, (recency, days, money) in RFM_POPULATION.items():
        # All the money on the last day; earlier days are zero-amount lines one day apart.
        lines.append(line(m, "x", ago(recency), money))
        lines += [line(m, "x", ago(recency + k), 0) for k in range(1, days)]
    return write_canonical(tmp_path_factory.mktemp("rfm") / "canonical", lines,
                           [product("x", "X", 1)], [member(m) for m in RFM_POPULATION])


def test_rfm_scores_and_segments(rfm_shop: Path, tmp_path: Path) -> None:
    got = rows_by_id(build_features(rfm_shop, tmp_path, AS_OF, FeatureConfig()).members_path,
                     "member_id")
    # score = 1 + floor(5 * (rank - 1) / 10), rank from the worst end; ties share the first rank.
    # R (recency desc): j i | h f | g e | d c | b a
    # F (days asc): b d h tie at rank 1 -> 1; f rank 4 -> 2; e, c -> 3; a, g -> 4; i, j -> 5
    # M (asc): c j | d f | b e | g h | i a
    expected = {
        "a": (5, 4, 5, "important_value"),
        "b": (5, 1, 3, "important_develop"),
        "c": (4, 3, 1, "general_value"),
        "d": (4, 1, 2, "general_develop"),
        "e": (3, 3, 3, "important_value"),
        "f": (2, 2, 2, "general_recover"),
        "g": (3, 4, 4, "important_value"),
        "h": (2, 1, 4, "important_recover"),
        "i": (1, 5, 5, "important_retain"),
        "j": (1, 5, 1, "general_retain"),
    }
    assert {m: (r["r_score"], r["f_score"], r["m_score"], r["value_segment"])
            for m, r in got.items()} == expected
    assert {m: (r["recency_days"], r["frequency"], r["monetary"]) for m, r in got.items()} == {
        m: (rec, days, float(money)) for m, (rec, days, money) in RFM_POPULATION.items()
    }


def test_rfm_high_score_is_configurable(rfm_shop: Path, tmp_path: Path) -> None:
    cfg = FeatureConfig(rfm_high_score=4)
    got = rows_by_id(build_features(rfm_shop, tmp_path, AS_OF, cfg).members_path, "member_id")
    assert got["e"]["value_segment"] == "general_recover"  # 3/3/3 is now low on all three
    assert got["a"]["value_segment"] == "important_value"  # 5/4/5


# --------------------------------------------------------------------------------------------
# products


def test_product_sales_and_price(prod: dict[str, dict]) -> None:
    pp = prod["pp"]
    assert (pp["n_buyers"], pp["n_lines"], pp["quantity"]) == (2, 3, 4.0)
    assert (pp["first_sale"], pp["last_sale"]) == (ago(31), ago(10))
    assert (pp["price"], pp["median_unit_price"], pp["never_sold"]) == (4.0, 4.0, False)
    assert prod["pq"]["price"] == 1.5  # list price wins over the median unit price


def test_product_price_band(prod: dict[str, dict]) -> None:
    assert {p: prod[p]["price_band"] for p in
            ("pp", "pq", "pr", "p3", "p4", "p6", "p7", "pn_c1", "pn_old", "pn_null", "pn_nocat")} == {
        "pp": "mid", "pq": "low", "pr": "high",  # median 4, 1, 20 against 8/3 and 8
        "p3": "low", "p4": "mid", "p6": "mid", "p7": "high",  # against 11/3 and 19/3
        "pn_c1": "low", "pn_old": "mid",  # never sold: list price 2, 5
        "pn_null": "unknown", "pn_nocat": "unknown",
    }


def test_the_price_band_rule_in_python_is_the_features_builds(snap: FeatureSnapshot, prod: dict[str, dict]) -> None:
    # a product described by attributes is banded by recsys.tags.price_band_of against the same
    # thresholds (training.data.category_price_bands): it must give every product the build's band
    from recsys.tags import price_band_of
    from training.data import category_price_bands

    bands = category_price_bands(snap.out_dir)
    assert bands
    for pid, row in prod.items():
        band_price = row["median_unit_price"] if row["median_unit_price"] is not None else row["price"]
        lo, hi = bands.get(row["category"], (None, None))
        assert price_band_of(band_price, lo, hi) == row["price_band"], pid


def test_product_never_sold_and_is_new(prod: dict[str, dict]) -> None:
    n = prod["pn_c1"]
    assert (n["never_sold"], n["n_buyers"], n["n_lines"], n["quantity"]) == (True, 0, 0, 0.0)
    assert n["first_sale"] is None and n["last_sale"] is None
    assert {p: prod[p]["is_new"] for p in ("pp", "pq", "pr", "pn_c1", "pn_old", "pn_null", "l1")} == {
        "pp": False,  # first sale 31 days ago
        "pq": True,  # first sale exactly 30 days ago
        "pr": True,
        "pn_c1": True,  # never sold, launched 10 days ago
        "pn_old": False,
        "pn_null": False,  # never sold, launch unknown
        "l1": True,  # old seller, but launched 20 days ago
    }
    assert len(prod) == len(shop_products())


def test_manifest_registry_lists_every_tag_with_values_and_counts(snap: FeatureSnapshot) -> None:
    registry = snap.tags
    assert registry.names("member") == ("value_segment", "lifecycle", "price_sensitivity", "age_group",
                                        "region", "channel", "store")
    assert registry.names("product") == ("price_band", "is_new", "never_sold")
    members = pq.read_table(snap.members_path).to_pydict()
    products = pq.read_table(snap.products_path).to_pydict()
    for tag in registry:
        column = (members if tag.entity == "member" else products)[tag.name]
        counts, missing = snap.tag_counts(tag.name)
        if tag.multi:
            held = [v for row in column for v in row]
            assert missing == sum(1 for row in column if not row)
        else:
            held = [str(v).lower() if isinstance(v, bool) else v for v in column if v is not None]
            assert missing == sum(1 for v in column if v is None)
        assert counts == {v: held.count(v) for v in tag.value_names}, tag.name
        # the SQL as run: thresholds filled in
        assert "${" not in (tag.expr or tag.query or "")
    # closed tags keep every declared value (nobody is "important_develop" here); open ones what was seen
    assert len(registry.get("value_segment").values) == 9  # eight segments + none
    assert snap.tag_counts("lifecycle")[0]["prospect"] == 1
    assert registry.get("region").value_names == ("north",)
    assert registry.get("channel").value_names == ("app", "store")  # declared labels first, in their order
    assert registry.get("channel").label("app") == ("App", "app")
    assert "recency_days < 60" in registry.get("lifecycle").expr
    # flags are booleans in the snapshot
    assert pq.read_schema(snap.products_path).field("is_new").type == pa.bool_()


def test_channel_is_a_multi_valued_tag(mem: dict[str, dict]) -> None:
    assert mem["top"]["channel"] == ["app", "store"]  # bought through both
    assert mem["few"]["channel"] == [] and mem["prospect"]["channel"] == []


def test_home_store_by_occasions(shop: Path, tmp_path: Path) -> None:
    lines = [
        # s2: one basket of three lines; s1: two days -> s1 by occasions
        {**line("a", "p1", ago(3), 1, basket="B1"), "store_id": "s2"},
        {**line("a", "p2", ago(3), 1, basket="B1"), "store_id": "s2"},
        {**line("a", "p3", ago(3), 1, basket="B1"), "store_id": "s2"},
        {**line("a", "p1", ago(5), 1), "store_id": "s1"}, {**line("a", "p1", ago(6), 1), "store_id": "s1"},
        # one occasion each (s9's has more lines): the smaller store id
        {**line("b", "p1", ago(2), 1), "store_id": "s9"}, {**line("b", "p2", ago(2), 1), "store_id": "s9"},
        {**line("b", "p1", ago(4), 1), "store_id": "s3"},
        line("c", "p1", ago(2), 1, channel="app"),  # no store
    ]
    folder = write_canonical(tmp_path / "c", lines, shop_products(), [member(m) for m in "abc"])
    snap = build_features(folder, tmp_path / "f", AS_OF, FeatureConfig())
    got = rows_by_id(snap.members_path, "member_id")
    assert {m: got[m]["store"] for m in "abc"} == {"a": "s1", "b": "s3", "c": None}
    assert snap.tags.get("store").value_names == ("s1", "s3")


VIP = TagDef(
    name="big_spender", entity="member", zh="高消费", en="Big spender", expr="monetary >= 100",
    values=tag_values(("true", "是", "yes"), ("false", "否", "no")), kind="rule", source="fixture",
)
STORE_VISITS = TagDef(
    name="visits", entity="member", zh="到店", en="Visits", open=True, default="0",
    query="SELECT member_id, CAST(COUNT(DISTINCT occasion_id) AS STRING) AS value FROM lines GROUP BY member_id",
)


def test_a_tag_added_to_the_registry_is_computed_and_recorded(shop: Path, tmp_path: Path) -> None:
    registry = TagRegistry.builtin().extend([VIP, STORE_VISITS])
    snap = build_features(shop, tmp_path, AS_OF, FeatureConfig(), tags=registry)
    got = rows_by_id(snap.members_path, "member_id")
    # sleep60 spent 20, buyer1 8 + 2 + 20 = 30, tie 20 + 40 + 60 + 80 = 200
    assert (got["tie"]["big_spender"], got["sleep60"]["big_spender"]) == (True, False)
    assert got["prospect"]["big_spender"] is False  # monetary is 0 without purchases
    assert got["freq"]["visits"] == "3" and got["prospect"]["visits"] == "0"  # default for no row
    entry = snap.tags.get("big_spender")
    assert (entry.kind, entry.source, entry.zh) == ("rule", "fixture", "高消费")
    assert snap.tag_counts("big_spender")[0]["true"] == sum(1 for r in got.values() if r["big_spender"])


@pytest.mark.parametrize(("tag", "message"), [
    (TagDef(name="bad", entity="member", zh="坏", en="Bad", open=True, expr="no_such_column + 1"),
     "tag 'bad' (recsys.tags): its SQL (an expression over the base row) does not run"),
    (TagDef(name="bad", entity="member", zh="坏", en="Bad", open=True, expr="${no_such_param}"),
     "uses ${no_such_param}, which is not a feature parameter"),
    (TagDef(name="bad", entity="member", zh="坏", en="Bad", values=tag_values(("x", "x", "x")),
            expr="CASE WHEN n_lines > 2 THEN 'x' ELSE 'y' END"),
     "produced value(s) y that are not among its declared values"),
    (TagDef(name="bad", entity="member", zh="坏", en="Bad", open=True,
            query="SELECT member_id, channel AS value FROM lines"),
     "several values for one member (e.g. 'top'); declare it multi = true"),
    (TagDef(name="frequency", entity="member", zh="频次", en="Frequency", open=True, expr="1"),
     "its name is a column of the member_base features"),
])
def test_a_broken_tag_is_refused_by_name(shop: Path, tmp_path: Path, tag: TagDef, message: str) -> None:
    with pytest.raises(InputError) as err:
        build_features(shop, tmp_path, AS_OF, FeatureConfig(), tags=TagRegistry.builtin().extend([tag]))
    assert message in str(err.value)
    assert not (tmp_path / "manifest.json").exists()


# --------------------------------------------------------------------------------------------
# as-of cut


def test_purchases_on_or_after_as_of_change_nothing(tmp_path: Path) -> None:
    # Both datasets list the later-only member and product, so whole tables must be identical.
    products = shop_products() + [product("p_late", "C1", 100.0)]
    members = shop_members() + [member("late")]
    later = [
        line("new29", "l1", MIDNIGHT, 500),  # exactly at the as-of midnight
        line("sleep60", "p9", MIDNIGHT + timedelta(days=1), 9000, channel="web", basket="Z9"),
        line("hi", "p1", MIDNIGHT + timedelta(hours=1), 0.01),  # would move C1's bands
        line("prospect", "pp", MIDNIGHT + timedelta(days=3), 4),
        line("late", "p_late", MIDNIGHT + timedelta(days=2), 100),
        line("late", "q10", MIDNIGHT + timedelta(days=2), 100),
        line("buyer1", "p_late", MIDNIGHT + timedelta(days=40), 100),
    ]
    base = write_canonical(tmp_path / "base", shop_lines(), products, members)
    leaky = write_canonical(tmp_path / "leaky", shop_lines() + later, products, members)
    a = build_features(base, tmp_path / "a", AS_OF, FeatureConfig())
    b = build_features(leaky, tmp_path / "b", AS_OF, FeatureConfig())

    for path in ("members.parquet", "products.parquet", "category_price_bands.parquet"):
        assert pq.read_table(a.out_dir / path).equals(pq.read_table(b.out_dir / path)), path
    late = rows_by_id(b.members_path, "member_id")["late"]
    assert (late["lifecycle"], late["n_lines"]) == ("prospect", 0)
    assert rows_by_id(b.products_path, "product_id")["p_late"]["never_sold"] is True
    assert a.manifest["inputs"]["transactions.parquet"] != b.manifest["inputs"]["transactions.parquet"]


def test_as_of_before_all_data_warns(shop: Path, tmp_path: Path) -> None:
    snap = build_features(shop, tmp_path, date(2000, 1, 1), FeatureConfig())
    members = pq.read_table(snap.members_path).to_pydict()
    assert set(members["lifecycle"]) == {"prospect"}
    assert set(pq.read_table(snap.products_path).column("never_sold").to_pylist()) == {True}
    assert snap.manifest["row_counts"]["category_price_bands"] == 0
    [warning] = snap.manifest["warnings"]
    assert "no purchase before 2000-01-01" in warning and "2000-10-24" in warning
    console = Console(record=True, width=120)
    snap.print_summary(console)
    assert "warning: no purchase before 2000-01-01" in console.export_text()


# --------------------------------------------------------------------------------------------
# manifest, inputs, config


def test_manifest(snap: FeatureSnapshot, shop: Path) -> None:
    m = json.loads((snap.out_dir / "manifest.json").read_text(encoding="utf-8"))
    assert m == snap.manifest == FeatureSnapshot.load(snap.out_dir).manifest
    assert m["as_of"] == "2001-02-01"
    assert m["row_counts"] == {"members": 16, "products": 27, "category_price_bands": 10}
    for table, n in m["row_counts"].items():
        assert pq.read_metadata(snap.out_dir / f"{table}.parquet").num_rows == n
    assert m["inputs"] == {
        name: hashlib.sha256((shop / name).read_bytes()).hexdigest()
        for name in ("transactions.parquet", "products.parquet", "members.parquet")
    }
    assert m["code_version"]["package"] == "0.1.0"
    assert m["config"] == FeatureConfig().model_dump(mode="json")
    assert m["stats"] == {"lines_before_as_of": len(shop_lines()), "members_with_purchase": 15}
    assert m["warnings"] == []


def test_manifest_hash_follows_input_change(shop: Path, tmp_path: Path, snap: FeatureSnapshot) -> None:
    changed = write_canonical(tmp_path / "canonical", shop_lines(),
                              shop_products() + [product("extra", "Z", 1.0)], shop_members())
    m = build_features(changed, tmp_path / "out", AS_OF, FeatureConfig()).manifest
    assert m["inputs"]["products.parquet"] != snap.manifest["inputs"]["products.parquet"]
    assert m["inputs"]["members.parquet"] == snap.manifest["inputs"]["members.parquet"]
    assert m["row_counts"]["products"] == snap.manifest["row_counts"]["products"] + 1


def test_missing_inputs_say_run_ingest(shop: Path, tmp_path: Path) -> None:
    with pytest.raises(InputError, match="run `recsys data ingest` first"):
        build_features(tmp_path / "nowhere", tmp_path / "out", AS_OF, FeatureConfig())
    partial = tmp_path / "partial"
    partial.mkdir()
    (partial / "transactions.parquet").write_bytes((shop / "transactions.parquet").read_bytes())
    with pytest.raises(InputError, match="lacks products.parquet, members.parquet"):
        build_features(partial, tmp_path / "out", AS_OF, FeatureConfig())


def test_missing_column_is_an_input_error(shop: Path, tmp_path: Path) -> None:
    folder = write_canonical(tmp_path / "c", shop_lines(), shop_products(), shop_members())
    pq.write_table(pq.read_table(folder / "members.parquet").drop_columns(["region"]),
                   folder / "members.parquet")
    with pytest.raises(InputError, match="lacks column"):
        build_features(folder, tmp_path / "out", AS_OF, FeatureConfig())


def test_config_from_toml(tmp_path: Path) -> None:
    path = tmp_path / "tags.toml"
    path.write_text("sleeping_days = 45\nband_quantiles = [0.25, 0.75]\n", encoding="utf-8")
    cfg = FeatureConfig.from_toml(path)
    assert (cfg.sleeping_days, cfg.lost_days, cfg.band_quantiles) == (45, 90, (0.25, 0.75))
    path.write_text("sleeping_dayz = 45\n", encoding="utf-8")
    with pytest.raises(InputError, match="sleeping_dayz"):
        FeatureConfig.from_toml(path)
    path.write_text("sleeping_days = 90\n", encoding="utf-8")
    with pytest.raises(InputError, match="smaller than lost_days"):
        FeatureConfig.from_toml(path)


def test_band_quantiles_are_configurable(shop: Path, tmp_path: Path) -> None:
    cfg = FeatureConfig(band_quantiles=(0.25, 0.75))
    bands = rows_by_id(build_features(shop, tmp_path, AS_OF, cfg).category_price_bands_path,
                       "category")
    assert (bands["C1"]["q_low"], bands["C1"]["q_high"]) == (3.0, 7.0)  # positions 2 and 6 of 1..9


# --------------------------------------------------------------------------------------------
# command line


def test_cli_build(shop: Path, tmp_path: Path) -> None:
    out = tmp_path / "feat"
    result = CliRunner().invoke(app, ["features", "build", "--as-of", "2001-02-01",
                                      "--canonical", str(shop), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "features as of 2001-02-01" in result.output
    assert "members by value_segment" in result.output and "重要价值" in result.output
    assert "products by price_band" in result.output
    assert FeatureSnapshot.load(out).manifest["row_counts"]["members"] == 16


def test_cli_bad_date(shop: Path, tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["features", "build", "--as-of", "2001-13-01",
                                      "--canonical", str(shop), "--out", str(tmp_path)])
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == [
        "error: --as-of '2001-13-01' is not a date; use YYYY-MM-DD, e.g. 2001-02-01"
    ]


def test_cli_missing_canonical(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["features", "build", "--as-of", "2001-02-01",
                                      "--canonical", str(tmp_path / "none"), "--out", str(tmp_path / "o")])
    assert result.exit_code == 2
    assert "run `recsys data ingest` first" in result.output
