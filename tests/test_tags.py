"""The tag registry: declarations are checked, travel as JSON, and requests are checked against it."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
from pydantic import ValidationError

from recsys.errors import InputError
from recsys.tags import (
    BUILTIN_TAGS,
    MultiTag,
    TagDef,
    TagRegistry,
    tag_column,
    tag_counts,
    tag_of,
    values,
    with_seen_values,
)

LIFECYCLE = TagRegistry.builtin().get("lifecycle")
REGION = TagRegistry.builtin().get("region")


def test_builtin_registry_is_the_one_declaration() -> None:
    registry = TagRegistry.builtin()
    assert registry.names("member") == ("value_segment", "lifecycle", "price_sensitivity", "age_group",
                                        "region", "channel", "store")
    assert registry.names("product") == ("price_band", "is_new", "never_sold")
    for tag in BUILTIN_TAGS:
        assert tag.zh and tag.en and (tag.expr or tag.query) and tag.description, tag.name
        assert tag.open or tag.values, tag.name
    assert registry.get("channel").multi and not registry.get("lifecycle").multi
    assert LIFECYCLE.label("sleeping") == ("沉睡", "sleeping")
    assert REGION.label("上海") == ("上海", "上海")  # an open tag's undeclared value is its own label
    assert LIFECYCLE.label(None) == ("未知", "unknown")


def test_json_round_trip_drops_snapshot_extras() -> None:
    registry = TagRegistry.builtin()
    entries = registry.to_json()
    entries[0]["counts"] = {"none": 3}  # what a manifest adds
    assert TagRegistry.from_json(entries) == registry
    assert "expr" not in LIFECYCLE.public() and LIFECYCLE.public()["values"][0] == {
        "value": "new", "zh": "新客", "en": "new"}


def test_from_json_says_which_entry_is_malformed() -> None:
    entries = TagRegistry.builtin().to_json()
    entries[2]["entity"] = "store"
    with pytest.raises(InputError, match=r"tags\[2\] \('price_sensitivity'\)"):
        TagRegistry.from_json(entries)
    with pytest.raises(InputError, match="expected a list"):
        TagRegistry.from_json({"name": "x"})


@pytest.mark.parametrize(("fields", "message"), [
    ({"name": "1st"}, "must be 1-64 letters"),
    ({"name": "member_id"}, "must be 1-64 letters"),
    ({"name": 'a"b'}, "must be 1-64 letters"),
    ({"query": "SELECT 1"}, "exactly one of expr"),
    ({"expr": None}, "exactly one of expr"),
    ({"open": False, "values": ()}, "must declare its values"),
    ({"values": values(("a", "a", "a"), ("a", "b", "b"))}, "declared twice"),
    ({"open": False, "values": values(("a", "a", "a")), "default": "b"}, "not one of its values"),
    ({"multi": True}, "needs a query"),
])
def test_a_malformed_declaration_is_refused(fields: dict, message: str) -> None:
    base = {"name": "t", "entity": "member", "zh": "标签", "en": "Tag", "open": True, "expr": "1"}
    with pytest.raises(ValidationError, match=message):
        TagDef(**{**base, **fields})


def test_chinese_names_are_fine() -> None:
    tag = TagDef(name="未购60天", entity="member", zh="未购60天", en="No purchase in 60 days",
                 expr="recency_days >= 60", values=values(("true", "是", "yes"), ("false", "否", "no")))
    assert tag.is_flag


def test_a_name_defined_twice_names_both_sources() -> None:
    clash = LIFECYCLE.model_copy(update={"source": "rules.toml"})
    with pytest.raises(InputError, match=r"'lifecycle' \(recsys.tags, rules.toml\)"):
        TagRegistry.builtin().extend([clash])


def test_check_filters_lists_what_exists() -> None:
    registry = TagRegistry.builtin()
    registry.check_filters({"lifecycle": ["active", "prospect"], "region": []})
    with pytest.raises(InputError) as err:
        registry.check_filters({"shoe_size": ["42"]})
    assert str(err.value).startswith("unknown member tag 'shoe_size'; tags: value_segment, lifecycle,")
    with pytest.raises(InputError, match="unknown lifecycle value.s. 'asleep'; allowed: new, active, sleeping, lost"):
        registry.check_filters({"lifecycle": ["active", "asleep"]})
    with pytest.raises(InputError, match="unknown member tag 'price_band'"):  # a product tag
        registry.check_filters({"price_band": ["low"]})


def test_seen_values() -> None:
    # closed: every declared value stays, in order
    assert with_seen_values(LIFECYCLE, {"active"}).value_names == LIFECYCLE.value_names
    with pytest.raises(InputError, match="produced value.s. asleep"):
        with_seen_values(LIFECYCLE, {"active", "asleep"})
    # open: declared labels for what was seen, in declared order, then the rest sorted
    channel = TagRegistry.builtin().get("channel")
    built = with_seen_values(channel, {"wechat", "store", "app"})
    assert built.value_names == ("app", "store", "wechat")
    assert built.label("store") == ("门店", "store") and built.label("wechat") == ("wechat", "wechat")


def test_a_chunked_text_column_codes_as_row_by_row() -> None:
    # tags are coded in Arrow (dictionary-encoded per chunk, each chunk's dictionary its own):
    # every row gets the code of its label, declared labels first, undeclared ones after them
    # sorted, and a null or an empty value no label
    column = pa.chunked_array([["lost", None, "zzz-custom", "", "new"], ["active", "lost", "aaa-custom", None]])
    tag = tag_column(LIFECYCLE, column)
    assert tag.labels == (*LIFECYCLE.value_names, "aaa-custom", "zzz-custom")
    rows = column.to_pylist()
    assert [tag_of(tag, i) for i in range(len(rows))] == [v if v else None for v in rows]
    assert tag_column(LIFECYCLE, pa.chunked_array([], pa.string())).codes.tolist() == []


def test_tag_columns_from_arrow() -> None:
    single = tag_column(LIFECYCLE, pa.array(["lost", None, "new", "lost"]))
    assert single.labels == LIFECYCLE.value_names
    assert [tag_of(single, i) for i in range(5)] == ["lost", None, "new", "lost", None]
    per, none = tag_counts(single, np.array([0, 1, 3]))
    assert dict(zip(single.labels, per.tolist(), strict=True))["lost"] == 2 and none == 1
    flag = tag_column(TagRegistry.builtin().get("is_new"), pa.array([True, False, None]))
    assert [tag_of(flag, i) for i in range(3)] == ["true", "false", None]
    channel = with_seen_values(TagRegistry.builtin().get("channel"), {"app", "store"})  # as a bundle has it
    multi = tag_column(channel, pa.array([["app", "store"], [], None, ["wechat"]], pa.list_(pa.string())))
    assert isinstance(multi, MultiTag) and multi.labels == ("app", "store", "wechat")
    assert [tag_of(multi, i) for i in range(5)] == [["app", "store"], [], [], ["wechat"], []]
    assert multi.mask(["store", "wechat"]).tolist() == [True, False, False, True]
    assert multi.mask(["nowhere"]).tolist() == [False] * 4
    per, none = tag_counts(multi, np.array([0, 1, 3]))
    assert (per.tolist(), none) == ([1, 1, 1], 1)
    assert multi.holds_any(0, frozenset({multi.code("store")})) and not multi.holds_any(1, frozenset({0, 1}))
