"""The feature build on Spark writes the DuckDB build's snapshot: same files, rows, values and
manifest, from the same SQL (recsys/dialect.py is the only difference), on an export with noise.

One local[2] session (the ``spark`` fixture); a synthetic retailer export of a few thousand lines.
"""

from __future__ import annotations

import json
from datetime import date
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from test_features import STORE_VISITS, VIP

from features.build import build_features
from features.config import FeatureConfig
from recsys.data.ingest import ingest
from recsys.data.mapping import resolve_source
from recsys.data.synth import SynthSpec, synthesize_retailer
from recsys.dialect import expand, strip_comments, to_spark
from recsys.errors import InputError
from recsys.tags import TagDef, TagRegistry

AS_OF = date(2024, 6, 1)  # the export covers January to June 2024
SPEC = SynthSpec(members=300, products=120, lines=6_000, categories=12, seed=5)
CHANNELS = TagDef(  # multi-valued, from a query: lists must come out in the same order
    name="channels_since_jan", entity="member", zh="渠道", en="Channels", open=True, multi=True,
    query="SELECT member_id, channel AS value FROM lines WHERE days_between(ts, ${as_of}) <= 90",
)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``DATA/shop/canonical`` from a noisy export (walk-ins, refunds, carrier bags, repeats)."""
    root = tmp_path_factory.mktemp("features-spark")
    synthesize_retailer(SPEC, root / "raw", 5)
    mapping = resolve_source(str(root / "raw" / "mapping.toml"), root)
    ingest(mapping, root / "data" / "shop" / "canonical")
    return root / "data"


@pytest.fixture(scope="module")
def canonical(data_dir: Path) -> Path:
    return data_dir / "shop" / "canonical"


def unnullable(schema: pa.Schema) -> pa.Schema:
    """The schema with every field nullable: DuckDB and Spark mark NOT NULL differently."""
    return pa.schema([f.with_nullable(True) for f in schema])


@pytest.fixture(scope="module")
def snapshots(spark, canonical: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = {"duckdb": canonical.parent / "features" / AS_OF.isoformat(),  # where training reads it
           "spark": tmp_path_factory.mktemp("snapshots") / "spark"}
    registry = TagRegistry.builtin().extend([VIP, STORE_VISITS, CHANNELS])
    for engine in ("duckdb", "spark"):
        build_features(canonical, out[engine], AS_OF, FeatureConfig(), tags=registry, engine=engine)
    return out


@pytest.mark.parametrize("name", ["members.parquet", "products.parquet", "category_price_bands.parquet"])
def test_spark_writes_the_duckdb_snapshot(snapshots, name):
    duck, spark = pq.read_table(snapshots["duckdb"] / name), pq.read_table(snapshots["spark"] / name)
    assert duck.num_rows > 0
    assert unnullable(spark.schema) == unnullable(duck.schema)  # names, order and types
    for column in duck.column_names:  # every value, rows in the same (key) order
        assert spark.column(column).to_pylist() == duck.column(column).to_pylist(), column


def test_the_manifests_differ_only_in_engine_and_time(snapshots):
    duck, spark = (json.loads((snapshots[e] / "manifest.json").read_text()) for e in ("duckdb", "spark"))
    assert (duck["engine"], spark["engine"]) == ("duckdb", "spark")
    for key in set(duck) | set(spark):
        if key not in ("engine", "created_at"):
            assert spark[key] == duck[key], key
    names = [t["name"] for t in spark["tags"]]
    assert {"value_segment", "lifecycle", "price_band", "big_spender", "visits", "channels_since_jan"} <= set(names)
    assert spark["stats"]["lines_before_as_of"] > 0


def test_a_broken_tag_is_refused_by_name_on_spark_too(spark, canonical, tmp_path):
    bad = TagDef(name="bad", entity="member", zh="坏", en="Bad", open=True, expr="no_such_column + 1")
    with pytest.raises(InputError, match=r"tag 'bad' \(recsys.tags\): its SQL \(an expression over the base row\) does not run"):
        build_features(canonical, tmp_path, AS_OF, FeatureConfig(), tags=TagRegistry.builtin().extend([bad]),
                       engine="spark")
    assert not (tmp_path / "manifest.json").exists()


# ---------------------------------------------------------------------------- training on Spark
def test_a_spark_training_run_records_the_engine_and_spark_conf(spark, data_dir, snapshots, store):
    from mlflow import MlflowClient

    from training.config import TrainConfig
    from training.pipeline import run_training

    cfg = TrainConfig.model_validate({
        "data": {"dataset": "shop", "data_dir": str(data_dir), "cutoff": AS_OF.isoformat(), "test_end": "2024-07-01"},
        "model": {"name": "spark_als", "params": {"factors": 8, "iterations": 3, "blocks": 2}},
        "evaluation": {"ks": [10], "audience_sizes": [100], "next_basket": False},
        "mlflow": {"experiment": "spark", "register": False},
        "spark": {"master": "local[2]", "conf": {"spark.sql.shuffle.partitions": "2"}},
    })
    result = run_training(cfg, tracking_uri=store)
    run = MlflowClient(tracking_uri=store).get_run(result.run_id)
    assert run.data.tags["engine"] == "spark" and run.data.params["engine"] == "spark"
    assert run.data.params["spark.master"].startswith("local")
    assert run.data.params["spark.conf.spark.sql.session.timeZone"] == "UTC"
    assert run.data.params["spark.version"].startswith("4.")
    assert result.metrics["recall@10"] > 0 and result.pre_ranked is not None


# ---------------------------------------------------------------------------- the dialect
def test_shims_expand_into_their_spark_spelling_nested_and_only_in_code():
    sql = ("SELECT ordered_list(c, rk) AS l, -- ordered_list(in, a comment)\n"
           " 'days_between(x, y)' AS text, interpolated_quantile(sorted_values(p), 0.5) AS m FROM t")
    out = to_spark(sql)
    assert "transform(array_sort(collect_list(named_struct('k', rk, 'v', c))), x -> x.v) AS l" in out
    assert "'days_between(x, y)' AS text" in out and "in, a comment" not in out
    assert "transform(array(array_sort(collect_list(CAST(p AS DOUBLE)))), _s ->" in out
    with pytest.raises(ValueError, match=r"days_between\(\) takes 2 argument"):
        to_spark("SELECT days_between(a) FROM t")
    assert strip_comments("SELECT '--' AS a -- b") == "SELECT '--' AS a "
    assert expand("SELECT empty_text_list()", {"empty_text_list": lambda a: "[]"}) == "SELECT []"


def test_exact_sum_adds_up_alike_in_both_engines_whatever_the_order(spark, tmp_path):
    """A plain SUM of doubles depends, in the last bit, on the order the lines are added in (each
    engine adds its own way, so members tied on monetary value ranked apart); exact_sum does not."""
    from features.build import _connect

    values = [0.1, 0.2, 0.3, 19.99, 0.07, 1234.56, 0.01] * 3
    orders = [values, values[::-1], sorted(values)]
    assert len({sum(v) for v in orders}) > 1  # the problem: the order changes a double sum
    expected = round(sum(round(v * 1_000_000) for v in values) / 1_000_000, 6)  # 3765.69
    sql = "SELECT g, exact_sum(v) AS s FROM t GROUP BY g ORDER BY g"
    con = _connect("1GB", 1, tmp_path)
    try:
        got_duckdb, got_spark = [], []
        for g, order in enumerate(orders):
            con.execute("CREATE OR REPLACE TEMP TABLE t AS SELECT * FROM (VALUES " +
                        ", ".join(f"({g}, {v!r}::DOUBLE, {i})" for i, v in enumerate(order)) +
                        ") AS x(g, v, i) ORDER BY i")
            got_duckdb += [s for _, s in con.execute(sql).fetchall()]
            frame = spark.createDataFrame([(g, v) for v in order], "g INT, v DOUBLE").repartition(3)
            frame.createOrReplaceTempView("t")
            got_spark += [r["s"] for r in spark.sql(to_spark(sql)).collect()]
        assert got_duckdb == got_spark == [expected] * len(orders)
        assert con.execute("SELECT exact_sum(v) FROM (SELECT NULL::DOUBLE AS v)").fetchone() == (None,)
    finally:
        con.close()
        spark.catalog.dropTempView("t")
