"""The serving bundle: save -> load gives exactly the same answers; broken bundles are refused."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from helpers_data import BUNDLE_MODEL_PARAMS, MEMBERS, PRODUCTS, SEGMENTS, reseal, tiny_bundle

from recsys.bundle import FORMAT_VERSION, Bundle, BundleError, load_bundle, save_bundle
from recsys.tags import MultiTag, TagDef, TagRegistry
from recsys.tags import values as tag_values

MODELS = BUNDLE_MODEL_PARAMS


@pytest.fixture(params=sorted(MODELS))
def saved(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[Bundle, Path]:
    bundle = tiny_bundle(request.param)
    return bundle, save_bundle(tmp_path / "bundle", bundle)


def test_save_load_gives_identical_answers(saved: tuple[Bundle, Path]) -> None:
    original, path = saved
    loaded = load_bundle(path)

    assert type(loaded.model) is type(original.model)
    assert loaded.model.params == original.model.params
    assert loaded.members == original.members and loaded.products == original.products
    assert loaded.meta["run_id"] == "run-123" and loaded.meta["format_version"] == FORMAT_VERSION
    assert loaded.member_table.equals(original.member_table)
    members = np.arange(len(MEMBERS))
    for mode in ("discover", "replenish"):
        want_i, want_s = original.model.recommend(members, 4, mode=mode)
        got_i, got_s = loaded.model.recommend(members, 4, mode=mode)
        assert (want_i >= 0).any()  # the comparison is not between two empty answers
        np.testing.assert_array_equal(got_i, want_i)
        np.testing.assert_array_equal(got_s, want_s)
    want_i, want_s = original.model.audience(np.arange(len(PRODUCTS)), 3)
    got_i, got_s = loaded.model.audience(np.arange(len(PRODUCTS)), 3)
    np.testing.assert_array_equal(got_i, want_i)
    np.testing.assert_array_equal(got_s, want_s)
    mask = loaded.member_tags()["value_segment"].mask(["high"])
    np.testing.assert_array_equal(
        loaded.model.audience(np.array([2]), 2, member_mask=mask)[0],
        original.model.audience(np.array([2]), 2, member_mask=mask)[0],
    )


def test_known_answer_survives_the_round_trip(tmp_path: Path) -> None:
    loaded = load_bundle(save_bundle(tmp_path / "b", tiny_bundle("simple_blend")))
    top, _ = loaded.model.recommend(loaded.members.to_index(["m0"]), 2, mode="replenish")
    # m0 bought p0 on three days and p1 on one
    assert loaded.products.to_external(top[0]).tolist() == ["p0", "p1"]


def test_other_format_version_is_refused_naming_both(tmp_path: Path) -> None:
    path = save_bundle(tmp_path / "b", tiny_bundle("popular"))
    meta = json.loads((path / "bundle.json").read_text())
    meta["format_version"] = FORMAT_VERSION + 98
    (path / "bundle.json").write_text(json.dumps(meta))

    with pytest.raises(BundleError) as err:
        load_bundle(path)
    assert f"version {FORMAT_VERSION + 98}" in str(err.value)
    assert f"reads version {FORMAT_VERSION}" in str(err.value)


def test_missing_folder_is_refused(tmp_path: Path) -> None:
    with pytest.raises(BundleError, match="no bundle.json"):
        load_bundle(tmp_path / "nowhere")


def test_corrupt_json_is_refused(tmp_path: Path) -> None:
    path = save_bundle(tmp_path / "b", tiny_bundle("popular"))
    (path / "bundle.json").write_text('{"format_version": 1,')
    with pytest.raises(BundleError, match="not valid JSON"):
        load_bundle(path)


def test_missing_model_arrays_are_refused(tmp_path: Path) -> None:
    path = save_bundle(tmp_path / "b", tiny_bundle("simple_blend"))
    (path / "model" / "arrays" / "history.data.npy").unlink()
    with pytest.raises(BundleError, match="incomplete or corrupt"):
        load_bundle(path)


def test_id_list_that_disagrees_with_the_model_is_refused(tmp_path: Path) -> None:
    path = save_bundle(tmp_path / "b", tiny_bundle("popular"))
    pq.write_table(pa.table({"member_id": MEMBERS[:-1]}), path / "members.parquet")
    reseal(path)
    with pytest.raises(BundleError, match="do not match the model"):
        load_bundle(path)


@pytest.mark.parametrize("table", ["member_table", "product_table"])
def test_tables_out_of_order_are_refused_on_save(tmp_path: Path, table: str) -> None:
    bundle = tiny_bundle("popular")
    setattr(bundle, table, getattr(bundle, table).take(pa.array([1, 0, *range(2, getattr(bundle, table).num_rows)])))
    with pytest.raises(ValueError, match="order"):
        save_bundle(tmp_path / "b", bundle)


def test_a_model_saved_with_another_state_version_is_refused_by_name(tmp_path: Path) -> None:
    path = save_bundle(tmp_path / "b", tiny_bundle("popular"))
    doc = json.loads((path / "model" / "model.json").read_text())
    doc["state_version"] = 99
    (path / "model" / "model.json").write_text(json.dumps(doc))
    reseal(path)

    with pytest.raises(BundleError, match="popular model state version 99, this release reads 1"):
        load_bundle(path)


# ---------------------------------------------------------------------------------- tags
CHANNEL = TagDef(name="channel", entity="member", zh="购买渠道", en="Channel", open=True, multi=True,
                 query="SELECT member_id, channel AS value FROM lines",
                 values=tag_values(("app", "App", "app"), ("store", "门店", "store")))
SEGMENT = TagDef(name="value_segment", entity="member", zh="价值分层", en="Value segment", expr="'x'",
                 values=tag_values(("high", "高", "high"), ("mid", "中", "mid"), ("low", "低", "low")))
NEW = TagDef(name="is_new", entity="product", zh="新品", en="New product", expr="TRUE",
             values=tag_values(("true", "新品", "new"), ("false", "老品", "established")))


def tagged_bundle() -> Bundle:
    bundle = tiny_bundle("popular")
    n = len(MEMBERS)
    lists = [["app", "store"] if i % 3 == 0 else ["store"] if i % 3 == 1 else [] for i in range(n)]
    bundle.member_table = bundle.member_table.append_column("channel", pa.array(lists, pa.list_(pa.string())))
    bundle.product_table = bundle.product_table.append_column(
        "is_new", pa.array([i == 0 for i in range(len(PRODUCTS))]))
    bundle.tags = TagRegistry((SEGMENT, CHANNEL, NEW))
    return bundle


def test_tags_travel_in_bundle_json_and_give_columns(tmp_path: Path) -> None:
    path = save_bundle(tmp_path / "b", tagged_bundle())
    doc = json.loads((path / "bundle.json").read_text())
    assert [t["name"] for t in doc["tags"]] == ["value_segment", "channel", "is_new"]
    assert doc["tags"][1]["query"] == "SELECT member_id, channel AS value FROM lines"  # how it is computed
    loaded = load_bundle(path)
    assert loaded.tags == tagged_bundle().tags
    tags = loaded.member_tags()
    assert set(tags) == {"value_segment", "channel"}
    channel = tags["channel"]
    assert isinstance(channel, MultiTag) and channel.labels == ("app", "store")
    assert [channel.of(i) for i in range(3)] == [["app", "store"], ["store"], []]
    # a filter on either channel keeps a member who bought through both
    np.testing.assert_array_equal(channel.mask(["app"]), [i % 3 == 0 for i in range(len(MEMBERS))])
    np.testing.assert_array_equal(channel.mask(["store"]), [i % 3 != 2 for i in range(len(MEMBERS))])
    per, none = channel.counts(np.arange(len(MEMBERS)))
    assert (per.tolist(), none) == ([sum(i % 3 == 0 for i in range(len(MEMBERS))),
                                     sum(i % 3 != 2 for i in range(len(MEMBERS)))],
                                    sum(i % 3 == 2 for i in range(len(MEMBERS))))
    # labels in registry order (declared values first), not sorted
    assert tags["value_segment"].labels[:3] == ("high", "mid", "low")


def test_a_tag_without_its_column_is_refused(tmp_path: Path) -> None:
    bundle = tagged_bundle()
    bundle.member_table = bundle.member_table.drop_columns(["channel"])
    with pytest.raises(ValueError, match="member tag.s. channel have no column"):
        save_bundle(tmp_path / "b", bundle)
    path = save_bundle(tmp_path / "ok", tagged_bundle())
    pq.write_table(pq.read_table(path / "members.parquet").drop_columns(["channel"]), path / "members.parquet")
    reseal(path)
    with pytest.raises(BundleError, match="channel have no column"):
        load_bundle(path)


def test_a_bundle_without_tags_reads_them_from_its_text_columns(tmp_path: Path) -> None:
    loaded = load_bundle(save_bundle(tmp_path / "b", tiny_bundle("popular")))
    assert loaded.tags is None
    registry = loaded.tag_registry
    assert registry.names("member") == ("value_segment",)
    assert registry.get("value_segment").zh == "价值分层"  # the built-in tag's labels
    assert set(registry.get("value_segment").value_names) == {s for s in SEGMENTS if s}
    assert registry.names("product") == ("category",)


def test_indexes_travel_in_the_bundle_and_load_memory_mapped(tmp_path: Path) -> None:
    import faiss

    from recsys.ann import IndexSettings, build_indexes

    bundle = tiny_bundle("als")
    model = bundle.model
    # thresholds of 1: every vector set gets its approximate index (tiny data, one IVF cell)
    settings = IndexSettings(exact_max_members=1, exact_max_products=1)
    bundle.indexes = build_indexes(model.user_factors, model.item_factors, settings)
    assert set(bundle.indexes) == {"members", "products", "similar"}
    path = save_bundle(tmp_path / "b", bundle)
    meta = json.loads((path / "bundle.json").read_text())["indexes"]
    assert meta["members"]["file"] == "indexes/members.faiss" and meta["members"]["n"] == len(MEMBERS)
    assert meta["members"]["nprobe"] and meta["members"]["bytes"] == (path / "indexes/members.faiss").stat().st_size
    loaded = load_bundle(path)
    members = loaded.indexes["members"]
    assert isinstance(faiss.downcast_InvertedLists(members.index.invlists), faiss.OnDiskInvertedLists)
    _, want = bundle.indexes["members"].search(model.item_factors, 3, nprobe=1)
    _, got = members.search(model.item_factors, 3, nprobe=1)
    np.testing.assert_array_equal(got, want)
    # saved again elsewhere: the mapped file is copied, not referenced
    again = save_bundle(tmp_path / "c", loaded)
    assert (again / "indexes/members.faiss").read_bytes() == (path / "indexes/members.faiss").read_bytes()
    # a bundle without indexes still loads (older bundles): nothing to map
    assert load_bundle(save_bundle(tmp_path / "d", tiny_bundle("als"))).indexes == {}


def test_a_named_index_that_is_missing_or_does_not_fit_is_refused(tmp_path: Path) -> None:
    from recsys.ann import IndexSettings, build_indexes

    bundle = tiny_bundle("als")
    bundle.indexes = build_indexes(bundle.model.user_factors, bundle.model.item_factors,
                                   IndexSettings(exact_max_members=1), names=("members",))
    path = save_bundle(tmp_path / "b", bundle)
    meta = json.loads((path / "bundle.json").read_text())
    (path / "indexes/members.faiss").rename(path / "elsewhere.faiss")
    with pytest.raises(BundleError, match="indexes/members.faiss is missing"):
        load_bundle(path)
    (path / "elsewhere.faiss").rename(path / "indexes/members.faiss")
    meta["indexes"]["members"]["n"] = 99
    (path / "bundle.json").write_text(json.dumps(meta))
    with pytest.raises(BundleError, match="holds 99 vectors; the model has"):
        load_bundle(path)
    with pytest.raises(ValueError, match="the members index holds 4 vectors"):
        bundle.indexes["members"].meta["n"] = 4
        save_bundle(tmp_path / "c", bundle)


def test_recsys_bundle_index_adds_the_indexes_to_a_bundle(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from recsys.cli import app

    path = save_bundle(tmp_path / "b", tiny_bundle("als"))
    runner = CliRunner()
    res = runner.invoke(app, ["bundle", "index", str(path)])
    assert res.exit_code == 0 and "no index to build" in res.output  # tiny: searched exactly
    res = runner.invoke(app, ["bundle", "index", str(path), "--exact-max-members", "1"])
    assert res.exit_code == 0, res.output
    meta = json.loads((path / "bundle.json").read_text())
    assert set(meta["indexes"]) == {"members"} and meta["indexes"]["members"]["kind"] == "ivf"
    assert set(load_bundle(path).indexes) == {"members"}
    res = runner.invoke(app, ["bundle", "index", str(save_bundle(tmp_path / "p", tiny_bundle("popular")))])
    assert res.exit_code == 2 and "has no member and product vectors" in res.output


# ------------------------------------------------------------------ the model's arrays, memory-mapped (issue 16)
def _as_format_1(path: Path) -> Path:
    """The bundle at ``path`` as format 1 wrote it: the model's arrays in one ``arrays.npz``."""
    folder = path / "model" / "arrays"
    np.savez(path / "model" / "arrays.npz", **{f.name.removesuffix(".npy"): np.load(f) for f in folder.iterdir()})
    for f in folder.iterdir():
        f.unlink()
    folder.rmdir()
    doc = json.loads((path / "model" / "model.json").read_text())
    del doc["arrays"]
    (path / "model" / "model.json").write_text(json.dumps(doc))
    meta = json.loads((path / "bundle.json").read_text())
    meta["format_version"] = 1
    (path / "bundle.json").write_text(json.dumps(meta))
    return reseal(path)


def _answers(bundle: Bundle) -> list[np.ndarray]:
    members = np.arange(len(MEMBERS))
    out = [*bundle.model.recommend(members, 4, mode="discover"), *bundle.model.audience(np.arange(len(PRODUCTS)), 3)]
    assert (out[0] >= 0).any()  # the comparison is not between two empty answers
    return out


def test_the_models_arrays_load_memory_mapped_read_only_with_identical_scores(tmp_path: Path) -> None:
    original = tiny_bundle("als")
    path = save_bundle(tmp_path / "b", original)
    assert not (path / "model" / "arrays.npz").exists()
    assert {"user_factors.npy", "item_factors.npy", "history.data.npy"} <= {
        f.name for f in (path / "model" / "arrays").iterdir()}
    assert {"model/arrays/user_factors.npy", "model/arrays/history.indices.npy"} <= set(
        json.loads((path / "bundle.json").read_text())["files"])  # each checked by its SHA-256
    loaded = load_bundle(path)
    users = loaded.model.user_factors
    assert type(users) is np.ndarray and not users.flags.writeable
    assert isinstance(users.base, np.memmap | np.ndarray) and users.base is not None  # a view of the mapping
    with pytest.raises(ValueError, match="read-only"):
        users[0, 0] = 1.0
    assert not loaded.model.history.data.flags.writeable
    np.testing.assert_array_equal(users, original.model.user_factors)
    for got, want in zip(_answers(loaded), _answers(original), strict=True):
        np.testing.assert_array_equal(got, want)


def test_a_format_1_bundle_with_arrays_npz_still_loads(tmp_path: Path) -> None:
    original = tiny_bundle("als")
    old = _as_format_1(save_bundle(tmp_path / "b", original))
    loaded = load_bundle(old)
    assert loaded.meta["format_version"] == 1
    assert loaded.model.user_factors.flags.writeable  # read into memory, as format 1 always was
    for got, want in zip(_answers(loaded), _answers(original), strict=True):
        np.testing.assert_array_equal(got, want)
    # saved again by this release: format 2, arrays as files, arrays.npz gone
    again = load_bundle(save_bundle(tmp_path / "again", loaded))
    assert again.meta["format_version"] == FORMAT_VERSION and not (tmp_path / "again/model/arrays.npz").exists()
    for got, want in zip(_answers(again), _answers(original), strict=True):
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("checksums", [True, False], ids=["with-checksums", "older-bundle"])
def test_a_damaged_npy_array_is_refused_naming_it(tmp_path: Path, checksums: bool) -> None:
    for i, damage in enumerate(("flip", "truncate", "header")):
        if damage == "flip" and not checksums:
            continue  # a flipped byte among the numbers: only the checksum can tell
        path = save_bundle(tmp_path / f"b{i}", tiny_bundle("als"))
        file = path / "model" / "arrays" / "user_factors.npy"
        data = bytearray(file.read_bytes())
        if damage == "flip":
            data[-8:] = bytes(b ^ 0xFF for b in data[-8:])
        elif damage == "truncate":
            data = data[: len(data) - 8]
        else:
            data[:6] = b"NOTNPY"
        file.write_bytes(bytes(data))
        if not checksums:
            meta = json.loads((path / "bundle.json").read_text())
            del meta["files"]
            (path / "bundle.json").write_text(json.dumps(meta))
        with pytest.raises(BundleError, match="incomplete or corrupt") as err:
            load_bundle(path)
        assert "user_factors.npy" in str(err.value), (damage, str(err.value))


def test_a_damaged_file_is_named_by_its_checksum_before_anything_reads_it(tmp_path: Path) -> None:
    # the tables are read first, the model's arrays are hashed meanwhile: whichever file is
    # damaged, the refusal names it and says it does not match bundle.json
    for name in ("members.parquet", "model/model.json", "model/arrays/history.indptr.npy"):
        path = save_bundle(tmp_path / name.replace("/", "-"), tiny_bundle("als"))
        file = path / name
        data = bytearray(file.read_bytes())
        data[len(data) // 2] ^= 0xFF
        file.write_bytes(bytes(data))
        with pytest.raises(BundleError, match="does not match its SHA-256") as err:
            load_bundle(path)
        assert name in str(err.value)


def test_a_model_saved_with_an_unknown_array_layout_is_refused_by_name(tmp_path: Path) -> None:
    path = save_bundle(tmp_path / "b", tiny_bundle("popular"))
    doc = json.loads((path / "model" / "model.json").read_text())
    doc["arrays"] = "parquet"
    (path / "model" / "model.json").write_text(json.dumps(doc))
    with pytest.raises(BundleError, match="arrays stored as 'parquet'"):
        load_bundle(reseal(path))
