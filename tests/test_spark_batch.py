"""Batch scoring on Spark equals the in-process path for the same model.

Bundles of three kinds of model (member / product vectors: ``als``; dense scores with an activity
tie-break: ``item_knn``; a candidate ranker: ``hybrid``) over the synthetic shop (200 members, 50
products), scored by the Spark jobs in ``local[2]`` over three member partitions and compared with
``pre_rank``, ``recommend`` and ``audience`` run here. One session for the module's jobs.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from helpers_data import N_MEMBERS, synthetic_data

from recsys.bundle import Bundle, load_bundle, save_bundle
from recsys.models import get_model
from recsys.precompute import PreRanked, pre_rank, same_list

PARAMS = {
    "als": {"factors": 8, "iterations": 5, "num_threads": 1, "seed": 3},
    "item_knn": {},
    "hybrid": {"factors": 8, "iterations": 5, "n_estimators": 30, "min_child_samples": 10,
               "knn_neighbours": 20, "audience_negatives": 5, "num_threads": 1},
}
PARTS = 3
LIFECYCLE = np.array(["active", "sleeping", "lost"], dtype=object)


def make_bundle(name: str) -> Bundle:
    data = synthetic_data()
    model = get_model(name)(PARAMS[name]).fit(data)
    members, products = data.interactions.members, data.interactions.products
    return Bundle(
        model=model, members=members, products=products,
        member_table=pa.table({
            "member_id": members.external_ids.astype(str),
            "value_segment": data.member_tags["value_segment"].values(),
            "lifecycle": LIFECYCLE[np.arange(len(members)) % 3],
        }),
        product_table=pa.table({
            "product_id": products.external_ids.astype(str),
            "category": data.product_tags["category"].values(),
        }),
        meta={"run_id": f"run-{name}"},
    )


@pytest.fixture(scope="module")
def bundles(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("batch-bundles")
    return {name: save_bundle(root / name, make_bundle(name)) for name in PARAMS}


@pytest.mark.parametrize("name", list(PARAMS))
def test_spark_pre_ranked_lists_equal_the_in_process_lists(spark, bundles, tmp_path, name):
    from recsys.spark.batch import ModelSource, attach_pre_ranked, pre_rank_lists

    bundle = load_bundle(bundles[name])
    want = pre_rank(bundle.model, n=20)
    out = tmp_path / "lists"
    summary = pre_rank_lists(spark, ModelSource(bundle=str(bundles[name])), str(out), n=20, partitions=PARTS)
    assert summary["members"] == N_MEMBERS and summary["verified_members"] == 16
    assert len(list(out.glob("part-*.parquet"))) >= 2  # really written by several tasks
    got = PreRanked.from_parquet(out)
    for mode in want.modes:
        assert_same_lists(want, got, mode)
    # the member ids travel with the rows, for exports that read the lists directly
    table = pq.read_table(out, columns=["member_row", "member_id"])
    ids = dict(zip(table.column("member_row").to_pylist(), table.column("member_id").to_pylist(), strict=True))
    assert ids[0] == bundle.members.external_ids[0] and ids[N_MEMBERS - 1] == bundle.members.external_ids[-1]
    # put into a copy of the bundle, the lists load as the bundle's own
    copy = tmp_path / "bundle"
    save_bundle(copy, bundle)
    attach_pre_ranked(copy, out, summary)
    served = load_bundle(copy).pre_ranked
    assert served is not None and served.meta["engine"] == "spark"
    for mode in want.modes:
        assert_same_lists(want, served, mode)


def assert_same_lists(want: PreRanked, got: PreRanked, mode: str) -> None:
    bad = [row for row in range(len(want.indices[mode]))
           if not same_list(want.indices[mode][row], want.scores[mode][row], got.indices[mode][row], got.scores[mode][row])]
    assert not bad, f"{mode} scores of member rows {bad[:5]} differ beyond the tolerance"


@pytest.mark.parametrize("name", ["als", "item_knn"])
def test_spark_audience_export_equals_the_in_process_audiences(spark, bundles, tmp_path, name):
    from recsys.spark.batch import ModelSource, audience_export

    bundle = load_bundle(bundles[name])
    where = {"lifecycle": ["active", "lost"]}
    mask = np.isin(LIFECYCLE[np.arange(N_MEMBERS) % 3], where["lifecycle"])
    products = ["p003", "p017", "p049"]  # p049 was never sold
    out = tmp_path / "audiences"
    summary = audience_export(spark, ModelSource(bundle=str(bundles[name])), str(out), n=25,
                              products=products, categories=["c2"], where=where, partitions=PARTS)
    rows = np.unique(np.concatenate([bundle.products.to_index(products), np.arange(20, 30)]))
    assert summary["products"] == len(rows) and summary["members_eligible"] == int(mask.sum())
    want_i, want_s = bundle.model.audience(rows, n=25, member_mask=mask)
    got = pq.read_table(out).sort_by([("product_row", "ascending"), ("rank", "ascending")])
    for j, row in enumerate(rows.tolist()):
        mine = got.filter(pc.equal(got.column("product_row"), row))
        real = want_i[j] >= 0
        assert mine.column("rank").to_pylist() == list(range(1, int(real.sum()) + 1))
        assert mine.column("member_id").to_pylist() == bundle.members.external_ids[want_i[j][real]].tolist()
        got_s = np.asarray(mine.column("score").to_pylist(), np.float32)
        assert same_list(want_i[j][real], want_s[j][real], want_i[j][real], got_s)
        assert set(mine.column("product_id").to_pylist()) == {bundle.products.external_ids[row]}


def test_spark_push_lists_equal_filtered_picks(spark, bundles, tmp_path):
    from recsys.spark.batch import ModelSource, push_lists

    bundle = load_bundle(bundles["item_knn"])
    out = tmp_path / "push"
    summary = push_lists(spark, ModelSource(bundle=str(bundles["item_knn"])), str(out), k=5, mode="discover",
                         where={"value_segment": ["a", "b"]}, categories=["c1", "c3"], exclude=["p012", "nope"],
                         partitions=PARTS)
    members = np.flatnonzero(np.isin(np.arange(N_MEMBERS) % 4, [0, 1]))
    assert summary["members"] == len(members)
    include = np.flatnonzero(np.isin(np.arange(50) // 10, [1, 3]))
    want_i, want_s = bundle.model.recommend(members, 5, mode="discover", include=include, exclude=np.array([12]))
    got = pq.read_table(out).sort_by([("member_id", "ascending"), ("rank", "ascending")])
    expect = [(bundle.members.external_ids[m], r + 1, bundle.products.external_ids[p], float(s))
              for m, pi, ps in zip(members, want_i, want_s, strict=True)
              for r, (p, s) in enumerate(zip(pi, ps, strict=True)) if p >= 0]
    assert list(zip(got.column("member_id").to_pylist(), got.column("rank").to_pylist(),
                    got.column("product_id").to_pylist(), got.column("score").to_pylist(), strict=True)) == expect
    assert not any(got.column("bought_before").to_pylist())  # discover: never what they bought


def test_spark_member_vectors_are_the_models(spark, bundles, tmp_path):
    from recsys.errors import RecsysError
    from recsys.spark.batch import ModelSource, member_vectors

    bundle = load_bundle(bundles["als"])
    out = tmp_path / "vectors"
    summary = member_vectors(spark, ModelSource(bundle=str(bundles["als"])), str(out), partitions=PARTS)
    assert summary == {**summary, "members": N_MEMBERS, "dim": 8}
    got = pq.read_table(out).sort_by("member_row")
    np.testing.assert_array_equal(np.asarray(got.column("vector").to_pylist(), np.float32), bundle.model.user_factors)
    assert got.column("member_id").to_pylist() == bundle.members.external_ids.tolist()
    with pytest.raises(RecsysError, match="no member vectors"):
        member_vectors(spark, ModelSource(bundle=str(bundles["item_knn"])), str(tmp_path / "none"))


def test_unknown_filters_are_refused_before_any_spark_work(spark, bundles, tmp_path):
    from recsys.errors import InputError
    from recsys.spark.batch import ModelSource, audience_export, push_lists

    src = ModelSource(bundle=str(bundles["als"]))
    with pytest.raises(InputError, match="unknown member tag 'age'"):
        push_lists(spark, src, str(tmp_path / "a"), where={"age": ["30"]})
    with pytest.raises(InputError, match="unknown lifecycle value"):
        audience_export(spark, src, str(tmp_path / "b"), where={"lifecycle": ["asleep"]})
    with pytest.raises(InputError, match="unknown category 'toys'"):
        audience_export(spark, src, str(tmp_path / "c"), categories=["toys"])
    with pytest.raises(InputError, match="unknown product"):
        audience_export(spark, src, str(tmp_path / "d"), products=["p999"])
    assert not any((tmp_path / x).exists() for x in "abcd")


def test_a_registered_model_is_shipped_to_the_executors(spark, bundles, store, tmp_path):
    import tempfile

    from recsys.spark.batch import ModelSource, pre_rank_lists
    from training.tracking import Tracker, gate_champion, log_bundle_model

    with Tracker("batch", "als", tracking_uri=store) as run:
        version = str(log_bundle_model(run, bundles["als"], "recsys-batch-test").version)
    assert gate_champion("recsys-batch-test", version, "recall@10", 0.2, tracking_uri=store) == "champion"
    before = set(Path(tempfile.gettempdir()).glob("recsys-batch-*"))
    out = tmp_path / "lists"
    source = ModelSource(registered_model="recsys-batch-test", alias="champion", tracking_uri=store)
    summary = pre_rank_lists(spark, source, str(out), n=10, partitions=PARTS)
    assert summary["version"] == version and summary["source"] == "recsys-batch-test@champion"
    want = pre_rank(load_bundle(bundles["als"]).model, n=10)
    got = PreRanked.from_parquet(out)
    for mode in want.modes:
        np.testing.assert_array_equal(got.indices[mode], want.indices[mode])
    assert set(Path(tempfile.gettempdir()).glob("recsys-batch-*")) == before  # the download is gone
