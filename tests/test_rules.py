"""Rule tags a retailer defines (features/rules.py): parsed on a restricted grammar, compiled to the
feature SQL, computed by the build on DuckDB and on Spark with the same values, refused by name
when malformed, reported when they match nobody. Known answers on a hand-made shop."""

from __future__ import annotations

import json
from datetime import date, datetime, timedelta
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from features.build import build_features
from features.config import FeatureConfig
from features.rules import compile_rule, load_rules, parse_rules, sql_string
from recsys.errors import InputError
from recsys.tags import TagRegistry

AS_OF = date(2024, 3, 1)
SHIPPED = Path(__file__).resolve().parent.parent / "features" / "rules.toml"
# (member, product, days before the as-of date, amount, channel); no basket ids: a day is an occasion
LINES = [
    ("a", "x", 3, 600.0, "app"), ("a", "y", 3, 500.0, "app"),
    ("b", "x", 5, 60.0, "store"), ("b", "y", 9, 50.0, "store"),
    ("c", "x", 70, 1500.0, "store"),
    ("d", "y", 4, 20.0, "app"), ("d", "z", 100, 10.0, "store"),
    ("e", "z", 61, 5.0, "store"), ("e", "z", 200, 990.0, "store"),
    ("f", "z", 60, 30.0, "store"),
    ("a", "z", 0, 999.0, "store"),  # on the as-of date itself: never seen by any rule
]
MEMBERS = list("abcdefg")  # g never bought
JOINED_DAYS_BEFORE = {"a": 10, "b": 400, "c": 45}
BRANDS = {"x": "L'Oréal", "y": "B\\2", "z": None}

# name -> (when, the members it must hold)
CASES = {
    "lapsed": ("days_since_last_purchase > 60", set("ce")),
    "big90": ("spend(90) > 1000", set("ac")),
    "twice30": ("purchases(30) >= 2", set("b")),
    "brand_quote": ('bought_brand("L\'Oréal", 30)', set("ab")),
    "brand_backslash": ('bought_brand("B\\\\2")', set("abd")),
    "cat_ever": ('bought_category("c2")', set("def")),
    "app30": ('used_channel("app", 30)', set("ad")),
    "joined30": ("joined_within(30)", set("a")),
    "joined_days": ("days_since_joined >= 40 and days_since_joined < 500", set("bc")),
    "not_recent": ("not (days_since_last_purchase <= 60)", set("ceg")),
    "two_products": ("distinct_products(30) >= 2", set("ab")),
    "avg_basket": ("spend(90) / purchases(90) > 500", set("ac")),
    "chain": ("2 <= purchases() < 3", set("bde")),
    "either": ('bought_product("x", 10) or (purchases() == 0)', set("abg")),
    "arith": ("spend() - 2 * spend(30) > 900.5", set("ce")),
    "negative": ("-days_since_last_purchase < -100", set()),
}


def _canonical(folder: Path) -> Path:
    folder.mkdir(parents=True)
    midnight = datetime.combine(AS_OF, datetime.min.time())
    tx = [{"member_id": m, "product_id": p, "ts": midnight - timedelta(days=d) + timedelta(hours=10),
           "quantity": 1.0, "amount": a, "unit_price": a, "cost": None, "channel": ch, "store_id": "S1",
           "basket_id": None} for m, p, d, a, ch in LINES]
    pq.write_table(pa.Table.from_pylist(tx, schema=pa.schema([
        ("member_id", pa.string()), ("product_id", pa.string()), ("ts", pa.timestamp("us")),
        ("quantity", pa.float64()), ("amount", pa.float64()), ("unit_price", pa.float64()), ("cost", pa.float64()),
        ("channel", pa.string()), ("store_id", pa.string()), ("basket_id", pa.string())])), folder / "transactions.parquet")
    pq.write_table(pa.table({"product_id": ["x", "y", "z"], "category": ["c1", "c1", "c2"],
                             "price": [50.0, 50.0, 20.0], "brand": [BRANDS[p] for p in "xyz"], "name": ["X", "Y", "Z"],
                             "launched_at": pa.array([None] * 3, pa.timestamp("us"))}), folder / "products.parquet")
    joined = [midnight - timedelta(days=JOINED_DAYS_BEFORE[m]) if m in JOINED_DAYS_BEFORE else None for m in MEMBERS]
    pq.write_table(pa.table({"member_id": MEMBERS, "joined_at": pa.array(joined, pa.timestamp("us")),
                             "age_group": ["25-34"] * 7, "region": ["east"] * 7}), folder / "members.parquet")
    return folder


# what the Spark build is checked on (each rule is a few Spark queries): every construct that is
# spelt differently in the two engines -- dates (days_between), text with a quote or a backslash,
# division -- and the brand join
SPARK_CASES = ("lapsed", "brand_quote", "brand_backslash", "joined_days", "avg_basket", "chain")


def _rules_doc(names: tuple[str, ...] = tuple(CASES)) -> dict:
    return {"rules": [{"name": n, "zh": n, "en": n, "when": CASES[n][0]} for n in names]}


@pytest.fixture(scope="module")
def canonical(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _canonical(tmp_path_factory.mktemp("rules") / "canonical")


def _build(canonical: Path, out: Path, engine: str = "duckdb", names: tuple[str, ...] = tuple(CASES)):
    ruleset = parse_rules(_rules_doc(names), "test-rules.toml")
    return build_features(canonical, out, AS_OF, FeatureConfig(), tags=TagRegistry.builtin().extend(ruleset.tags),
                          checks=ruleset.checks(), engine=engine)  # type: ignore[arg-type]


def _holders(snapshot_dir: Path, name: str) -> set[str]:
    t = pq.read_table(snapshot_dir / "members.parquet", columns=["member_id", name])
    return {m for m, v in zip(t.column("member_id").to_pylist(), t.column(name).to_pylist(), strict=True) if v}


@pytest.fixture(scope="module")
def duck(canonical: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("rules-duck")
    _build(canonical, out)
    return out


@pytest.mark.parametrize("name", list(CASES))
def test_each_rule_holds_exactly_its_members(duck: Path, name: str) -> None:
    assert _holders(duck, name) == CASES[name][1]


def test_rule_tags_are_yes_no_registry_tags_with_counts_and_warnings(duck: Path) -> None:
    manifest = json.loads((duck / "manifest.json").read_text())
    entry = next(t for t in manifest["tags"] if t["name"] == "lapsed")
    assert entry["kind"] == "rule" and entry["source"] == "test-rules.toml"
    assert entry["counts"] == {"true": 2, "false": 5} and entry["missing"] == 0
    schema = pq.read_schema(duck / "members.parquet")
    assert schema.field("lapsed").type == pa.bool_()
    # the one rule that holds nobody is reported, not refused
    assert any("rule tag 'negative' (test-rules.toml) matches no member as of 2024-03-01" in w
               for w in manifest["warnings"])


def test_a_value_the_data_does_not_hold_is_a_warning(canonical: Path, tmp_path: Path) -> None:
    ruleset = parse_rules({"rules": [{"name": "ghost", "zh": "g", "en": "g", "when": 'bought_category("乳品", 30)'}]},
                          "r.toml")
    snap = build_features(canonical, tmp_path, AS_OF, FeatureConfig(), tags=TagRegistry.builtin().extend(ruleset.tags),
                          checks=ruleset.checks())
    warnings = snap.manifest["warnings"]
    assert any("rule 'ghost' (r.toml): category '乳品' is not in the data" in w for w in warnings)
    assert any("'ghost'" in w and "matches no member" in w for w in warnings)


def test_spark_computes_the_same_rule_tags(spark, canonical: Path, duck: Path, tmp_path: Path) -> None:
    _build(canonical, tmp_path, engine="spark", names=SPARK_CASES)
    d, s = pq.read_table(duck / "members.parquet"), pq.read_table(tmp_path / "members.parquet")
    for name in SPARK_CASES:
        assert s.column(name).to_pylist() == d.column(name).to_pylist(), name


def test_the_shipped_examples(canonical: Path, tmp_path: Path) -> None:
    ruleset = load_rules(SHIPPED)
    assert [(t.name, t.zh) for t in ruleset.tags] == [
        ("lapsed_60d", "未购60天"), ("spend_90d_over_1000", "近90天消费超1000元"), ("twice_in_30d", "30天内购买2次")]
    build_features(canonical, tmp_path, AS_OF, FeatureConfig(), tags=TagRegistry.builtin().extend(ruleset.tags))
    assert _holders(tmp_path, "lapsed_60d") == set("ce")
    assert _holders(tmp_path, "spend_90d_over_1000") == set("ac")
    assert _holders(tmp_path, "twice_in_30d") == set("b")


def test_recsys_features_build_rules(canonical: Path, tmp_path: Path) -> None:
    from recsys.cli import app

    out = tmp_path / "snap"
    result = CliRunner().invoke(app, ["features", "build", "--as-of", AS_OF.isoformat(), "--canonical", str(canonical),
                                      "--out", str(out), "--rules", str(SHIPPED)])
    assert result.exit_code == 0, result.output
    assert "30天内购买2次" in result.output
    assert _holders(out, "twice_in_30d") == set("b")
    bad = tmp_path / "bad.toml"
    bad.write_text('[[rules]]\nname = "oops"\nzh = "坏"\nen = "Bad"\nwhen = "purchases(30) >= "\n', encoding="utf-8")
    result = CliRunner().invoke(app, ["features", "build", "--as-of", AS_OF.isoformat(), "--canonical", str(canonical),
                                      "--out", str(tmp_path / "snap2"), "--rules", str(bad)])
    assert result.exit_code == 2 and "rule 'oops' (bad.toml): `when` does not parse" in result.output
    assert not (tmp_path / "snap2" / "manifest.json").exists()


@pytest.mark.parametrize(("when", "message"), [
    ("purchases(30) >= ", "does not parse at column"),
    ("__import__('os').system('true')", "__import__('os').system"),
    ("open('x')", "unknown function 'open'"),
    ("purchases(30)", "a rule needs a condition"),
    ("spend > 3", "spend is a function: call it"),
    ("recency_days > 3", "unknown name 'recency_days'"),
    ("purchases(0) > 1", "whole number from 1 to 36500, not 0"),
    ("purchases(1.5) > 1", "not 1.5"),
    ("purchases(30, 60) > 1", "at most one number of days"),
    ("bought_category(30)", "needs the category as text first"),
    ('bought_category("a") > 1', "a comparison needs a number, not a condition"),
    ('purchases(30) > "2"', "a comparison needs a number, not a text"),
    ("purchases(30) >= 2 and spend(30)", "and needs a condition"),
    ("joined_within()", "takes the number of days"),
    ("purchases(days=30) > 1", "give arguments by position"),
    ("[1, 2] == 3", "list is not part of the rule language"),
    ("purchases(30) in (1, 2)", "compare with < <= > >= == != only"),
    ("lambda: 1", "lambda is not part of the rule language"),
    ("purchases(30) ** 2 > 1", "arithmetic is + - * / only"),
])
def test_a_malformed_rule_is_refused_with_its_name(when: str, message: str) -> None:
    with pytest.raises(InputError) as exc:
        compile_rule("my_rule", "规则", "Rule", when, source="rules.toml")
    assert str(exc.value).startswith("rule 'my_rule' (rules.toml): ") and message in str(exc.value), str(exc.value)


@pytest.mark.parametrize(("doc", "message"), [
    ({}, "expected one or more [[rules]] tables"),
    ({"rules": [{"name": "a", "zh": "a", "en": "a"}]}, "rule 'a' (f.toml): needs when"),
    ({"rules": [{"name": "a", "zh": "a", "en": "a", "when": "purchases() > 1", "colour": "red"}]}, "unknown key(s) colour"),
    ({"rules": [{"name": "a", "zh": "a", "en": "a", "when": "purchases() > 1"}] * 2}, "rule 'a' (f.toml): defined twice"),
    ({"rules": [{"name": "1st", "zh": "a", "en": "a", "when": "purchases() > 1"}]}, "rule '1st' (f.toml): Value error, tag name"),
    ({"rules": [{"name": "a", "zh": "a", "en": "a", "when": "purchases() > 1"}], "extra": 1}, "unknown top-level key(s) extra"),
])
def test_a_malformed_rules_file_is_refused(doc: dict, message: str) -> None:
    with pytest.raises(InputError, match=None) as exc:
        parse_rules(doc, "f.toml")
    assert message in str(exc.value), str(exc.value)


def test_a_rule_named_like_a_builtin_tag_is_refused() -> None:
    ruleset = parse_rules({"rules": [{"name": "lifecycle", "zh": "a", "en": "a", "when": "purchases() > 1"}]}, "f.toml")
    with pytest.raises(InputError, match="defined twice: 'lifecycle'"):
        TagRegistry.builtin().extend(ruleset.tags)


def test_text_literals_read_the_same_in_both_engines() -> None:
    assert sql_string("plain") == "'plain'"
    assert sql_string("L'Oréal") == "('L' || chr(39) || 'Oréal')"
    assert sql_string("a\\b$") == "('a' || chr(92) || 'b$$')"
