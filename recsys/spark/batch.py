"""Batch scoring on Spark: the work that grows with members, over member partitions.

Each job splits the bundle's member rows into contiguous ranges (``spark.range`` partitions) and
scores them with ``mapInArrow``: a Python worker loads the model once (from the bundle folder, or
the registry version the driver resolved) and keeps it for every task it runs, then calls the same
functions the in-process path calls -- so what comes out is what ``recsys train`` / the server
would compute, written as Parquet:

* :func:`pre_rank_lists` -- every member's top-N products in each mode, exactly
  :func:`recsys.precompute.pre_rank`'s lists (``member_row, member_id, <mode>_products,
  <mode>_scores``); :func:`attach_pre_ranked` puts them into a bundle, which serves them as is;
* :func:`member_vectors` -- the member vectors the audience index is built from;
* :func:`audience_export` -- the top-N members of each product (of a list, a category, or all),
  optionally among members with given tags: each member partition keeps its own top-N per
  product, and the top-N of those is the audience :meth:`Recommender.audience` gives;
* :func:`push_lists` -- a campaign's picks: top-k products for each member with given tags,
  filtered by category and exclusions like a picks request.

Where the model comes from (:class:`ModelSource`): a bundle folder that the driver and every
executor read at the same path (local mode, a shared filesystem, or ``spark-submit --archives``),
or a registered model: the driver resolves the alias to a version once, downloads the bundle and
ships it to the executors with ``SparkContext.addFile``.
"""

from __future__ import annotations

import json
import math
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from recsys.bundle import Bundle, load_bundle
from recsys.columns import Col
from recsys.errors import InputError, RecsysError
from recsys.models.base import Capability, Recommender
from recsys.precompute import (
    DEFAULT_N,
    MAX_BATCH_ENTRIES,
    MODES,
    PreRanked,
    PreRankError,
    rank_members,
    same_list,
)

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

# members per Python call inside a task (each Arrow batch from Spark is cut into such blocks)
MEMBERS_PER_PARTITION = 50_000
VERIFY_MEMBERS = 16
PRE_RANKED_PARQUET = "pre_ranked.parquet"
RANK, SCORE, BOUGHT = "rank", "score", "bought_before"


# --------------------------------------------------------------------------- where the model is
@dataclass(frozen=True)
class ModelSource:
    """A bundle folder (``bundle``) or a registered model version (``registered_model`` +
    ``alias``, which may be a version number)."""

    bundle: str | None = None
    registered_model: str | None = None
    alias: str = "champion"
    tracking_uri: str | None = None

    def __post_init__(self) -> None:
        if (self.bundle is None) == (self.registered_model is None):
            raise InputError("give either a bundle folder (--bundle) or a registered model (--registered-model)")

    def describe(self) -> str:
        return self.bundle if self.bundle is not None else f"{self.registered_model}@{self.alias}"


@dataclass(frozen=True)
class _Shipped:
    """How a Python worker finds the bundle: a folder path, or a name under ``SparkFiles``."""

    path: str | None = None
    spark_file: str | None = None
    stamp: str = ""  # bundle.json's digest: a worker kept from an earlier job reloads a changed bundle

    def local_path(self) -> str:
        if self.path is not None:
            return self.path
        from pyspark import SparkFiles

        return SparkFiles.get(str(self.spark_file))


_LOADED: dict[_Shipped, Bundle] = {}


def _worker_bundle(shipped: _Shipped) -> Bundle:
    """The bundle, loaded once per Python worker process (Spark reuses workers across tasks)."""
    bundle = _LOADED.get(shipped)
    if bundle is None:
        _LOADED.clear()  # one model per worker: a new job's model replaces the last one
        bundle = _LOADED[shipped] = load_bundle(shipped.local_path())
    return bundle


@dataclass
class _Opened:
    bundle: Bundle  # the driver's copy: shapes, ids, tags, verification
    shipped: _Shipped
    cleanup: list[str] = field(default_factory=list)
    version: str | None = None

    def close(self) -> None:
        for path in self.cleanup:
            shutil.rmtree(path, ignore_errors=True)


def _open(spark: SparkSession, source: ModelSource) -> _Opened:
    if source.bundle is not None:
        folder = Path(source.bundle).resolve()
        return _Opened(load_bundle(folder), _Shipped(path=str(folder), stamp=_stamp(folder)))
    from recsys.pyfunc import download_bundle, mlflow_client, resolve_tracking_uri, resolve_version

    uri = resolve_tracking_uri(source.tracking_uri)
    version = resolve_version(mlflow_client(uri), str(source.registered_model), source.alias)
    tmp = tempfile.mkdtemp(prefix="recsys-batch-")
    local = download_bundle(str(source.registered_model), version, uri, dst=tmp)
    opened = _Opened(load_bundle(local), _Shipped(), [tmp], version)
    stamp = _stamp(local)
    staged = local
    try:
        name = f"recsys-{source.registered_model}-v{version}"
        staged = Path(tmp) / name
        local.rename(staged)
        spark.sparkContext.addFile(str(staged), recursive=True)
        opened.shipped = _Shipped(spark_file=name, stamp=stamp)
    except Exception:  # Spark Connect has no addFile: the driver's folder must be visible as is
        opened.shipped = _Shipped(path=str(staged if staged.exists() else local), stamp=stamp)
    return opened


def _stamp(folder: Path) -> str:
    import hashlib

    return hashlib.sha256((folder / "bundle.json").read_bytes()).hexdigest()[:16]


def _member_frame(spark: SparkSession, n_members: int, partitions: int | None) -> DataFrame:
    parts = partitions or max(1, math.ceil(n_members / MEMBERS_PER_PARTITION))
    parts = max(parts, min(n_members, spark.sparkContext.defaultParallelism if _classic(spark) else 2))
    return spark.range(0, n_members, 1, numPartitions=max(1, min(parts, max(n_members, 1))))


def _classic(spark: SparkSession) -> bool:
    try:
        spark.sparkContext  # noqa: B018 - Spark Connect sessions have none
        return True
    except Exception:
        return False


def _block_size(model: Recommender) -> int:
    return int(max(1, min(1024, MAX_BATCH_ENTRIES // max(model.n_products, 1))))


# --------------------------------------------------------------------------- pre-ranked lists
def pre_ranked_schema(modes: tuple[str, ...]) -> str:
    cols = ["member_row int", "member_id string"]
    for mode in modes:
        cols += [f"{mode}_products array<int>", f"{mode}_scores array<float>"]
    return ", ".join(cols)


def pre_rank_lists(
    spark: SparkSession, source: ModelSource, out: str, *, n: int = DEFAULT_N, modes: tuple[str, ...] = MODES,
    partitions: int | None = None, verify: int = VERIFY_MEMBERS,
) -> dict[str, Any]:
    """Every member's top-``n`` products in each mode, as :func:`recsys.precompute.pre_rank`
    ranks them, written to ``out`` (a Parquet folder). A sample of members is checked against the
    model's own ``recommend`` on the driver (:class:`PreRankError` if one differs).

    Returns the job summary (the meta a bundle keeps beside the lists)."""
    for mode in modes:
        if mode not in MODES:
            raise InputError(f"mode must be one of {', '.join(MODES)}; got {mode!r}")
    t0 = time.perf_counter()
    opened = _open(spark, source)
    try:
        model, ids = opened.bundle.model, opened.bundle.members.external_ids
        shipped = opened.shipped

        def job(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
            bundle = _worker_bundle(shipped)
            worker_model, member_ids = bundle.model, bundle.members.external_ids
            size = _block_size(worker_model)
            for rb in batches:
                rows = rb.column(0).to_numpy().astype(np.int64)
                for start in range(0, len(rows), size):
                    block = rows[start : start + size]
                    lists = rank_members(worker_model, block, n, modes)
                    cols: dict[str, pa.Array] = {
                        "member_row": pa.array(block.astype(np.int32)),
                        "member_id": pa.array(member_ids[block].astype(str)),
                    }
                    for mode in modes:
                        idx, sc = lists[mode]
                        cols[f"{mode}_products"] = _list_array(idx.astype(np.int32))
                        cols[f"{mode}_scores"] = _list_array(sc.astype(np.float32))
                    yield pa.RecordBatch.from_pydict(cols)

        frame = _member_frame(spark, model.n_members, partitions).mapInArrow(job, pre_ranked_schema(modes))
        frame.write.mode("overwrite").parquet(out)
        seconds = time.perf_counter() - t0
        verified = _verify_lists(spark, model, out, n, modes, verify)
        del ids
        return {
            "n": n, "modes": list(modes), "members": model.n_members, "seconds": round(seconds, 2),
            "verified_members": verified, "created_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "engine": "spark", "source": source.describe(), "version": opened.version,
        }
    finally:
        opened.close()


def _list_array(values: np.ndarray) -> pa.ListArray:
    """A ``(rows, n)`` array as an Arrow list column of ``n`` entries per row."""
    rows, width = values.shape
    offsets = np.arange(0, rows * width + 1, width, dtype=np.int32) if rows else np.zeros(1, np.int32)
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(values.reshape(-1)))


def _verify_lists(spark: SparkSession, model: Recommender, out: str, n: int, modes: tuple[str, ...],
                  count: int) -> int:
    if count <= 0 or model.n_members == 0:
        return 0
    from pyspark.sql import functions as F

    sample = np.unique(np.linspace(0, model.n_members - 1, num=min(count, model.n_members)).astype(np.int64))
    got = (spark.read.parquet(out).where(F.col("member_row").isin([int(s) for s in sample]))
           .orderBy("member_row").toArrow())
    if got.num_rows != len(sample):
        raise PreRankError(f"{out}: {got.num_rows} of the {len(sample)} sampled members have lists")
    for mode in modes:
        want_i, want_s = model.recommend(sample, n, mode=mode)  # type: ignore[arg-type]
        got_i = np.asarray(got.column(f"{mode}_products").to_pylist(), dtype=np.int64)
        got_s = np.asarray(got.column(f"{mode}_scores").to_pylist(), dtype=np.float32)
        for j, member in enumerate(sample.tolist()):
            if not same_list(want_i[j], want_s[j], got_i[j], got_s[j]):
                raise PreRankError(
                    f"Spark's pre-ranked {mode} list of member row {member} differs from model.recommend; "
                    "the lists would not match live scoring"
                )
    return len(sample)


def attach_pre_ranked(bundle_dir: Path | str, lists_dir: Path | str, meta: dict[str, Any]) -> Path:
    """Make the lists Spark wrote (a local Parquet folder) the bundle's pre-ranked lists: moved
    into the bundle as ``pre_ranked.parquet`` and named in ``bundle.json``, replacing any lists
    it had. They are checked against the model's shape first."""
    bundle_dir, lists_dir = Path(bundle_dir), Path(lists_dir)
    meta_path = bundle_dir / "bundle.json"
    doc = json.loads(meta_path.read_text())
    lists = PreRanked.from_parquet(lists_dir, meta)
    lists.check(int(doc["n_members"]), int(doc["n_products"]))
    target = bundle_dir / PRE_RANKED_PARQUET
    if lists_dir.resolve() != target.resolve():
        if target.exists():
            shutil.rmtree(target)
        shutil.copytree(lists_dir, target, ignore=shutil.ignore_patterns("_SUCCESS", ".*.crc"))
    old = doc.get("pre_ranked") or {}
    if old.get("file") and old["file"] != PRE_RANKED_PARQUET:
        (bundle_dir / old["file"]).unlink(missing_ok=True)
    doc["pre_ranked"] = {**meta, "file": PRE_RANKED_PARQUET, "n": lists.n, "modes": list(lists.modes)}
    tmp = meta_path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(doc, indent=1, default=str))
    tmp.replace(meta_path)
    return target


# --------------------------------------------------------------------------- shared by the others
def _member_mask(bundle: Bundle, where: dict[str, list[str]] | None) -> np.ndarray | None:
    """Members whose tags match every ``tag -> allowed values`` of ``where`` (None: all)."""
    if not where:
        return None
    tags = bundle.member_tags(tuple(where))
    mask = np.ones(len(bundle.members), dtype=bool)
    for tag, values in where.items():
        if tag not in tags:
            raise InputError(f"unknown member tag {tag!r}; tags: {', '.join(sorted(bundle.member_tags())) or 'none'}")
        unknown = [v for v in values if tags[tag].code(v) < 0]
        if unknown:
            raise InputError(f"unknown {tag} value(s) {', '.join(map(repr, unknown))}; values: "
                             f"{', '.join(tags[tag].labels)}")
        mask &= tags[tag].mask(values)
    return mask


def member_vectors_of(model: Recommender) -> np.ndarray | None:
    """The model's member vectors when it scores by vectors (it declares
    :attr:`~recsys.models.base.Capability.VECTORS`); None otherwise."""
    if not model.has(Capability.VECTORS):
        return None
    users, items = model.factor_vectors()
    if isinstance(users, np.ndarray) and isinstance(items, np.ndarray) and users.ndim == 2 \
            and users.shape == (model.n_members, items.shape[1]):
        return users
    return None


def _product_rows(bundle: Bundle, products: list[str] | None, categories: list[str] | None) -> np.ndarray:
    """Product rows named by id and / or by category (every product when neither is given)."""
    if not products and not categories:
        return np.arange(len(bundle.products), dtype=np.int64)
    rows: list[np.ndarray] = []
    if products:
        got = bundle.products.to_index(products, missing="ignore")
        unknown = [p for p, r in zip(products, got.tolist(), strict=True) if r < 0]
        if unknown:
            raise InputError(f"unknown product(s) {', '.join(map(repr, unknown[:10]))}: not in the model's catalogue")
        rows.append(got.astype(np.int64))
    if categories:
        rows.append(np.flatnonzero(_category_tag(bundle).mask(_known_categories(bundle, categories))))
    return np.unique(np.concatenate(rows))


def _category_tag(bundle: Bundle) -> Any:
    from recsys.models.base import Tag

    col = bundle.product_table.column(Col.CATEGORY).to_numpy(zero_copy_only=False) \
        if Col.CATEGORY in bundle.product_table.column_names else np.full(len(bundle.products), None)
    return Tag.from_values(col)


def _known_categories(bundle: Bundle, categories: list[str]) -> list[str]:
    tag = _category_tag(bundle)
    unknown = [c for c in categories if tag.code(c) < 0]
    if unknown:
        raise InputError(f"unknown category {', '.join(map(repr, unknown))}; categories: {', '.join(tag.labels[:30])}")
    return categories


def _write(frame: DataFrame, out: str) -> None:
    frame.write.mode("overwrite").parquet(out)


# --------------------------------------------------------------------------- member vectors
def member_vectors(spark: SparkSession, source: ModelSource, out: str, *, partitions: int | None = None) -> dict[str, Any]:
    """The model's member vectors (what the server's member index searches for audiences) as
    Parquet: ``member_row, member_id, vector``."""
    t0 = time.perf_counter()
    opened = _open(spark, source)
    try:
        model = opened.bundle.model
        vecs = member_vectors_of(model)
        if vecs is None:
            raise RecsysError(f"model {model.name!r} has no member vectors (only vector models such as als, bpr, spark_als do)")
        dim = vecs.shape[1]
        shipped = opened.shipped

        def job(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
            bundle = _worker_bundle(shipped)
            users = member_vectors_of(bundle.model)
            assert users is not None
            ids = bundle.members.external_ids
            for rb in batches:
                rows = rb.column(0).to_numpy().astype(np.int64)
                yield pa.RecordBatch.from_pydict({
                    "member_row": pa.array(rows.astype(np.int32)), "member_id": pa.array(ids[rows].astype(str)),
                    "vector": _list_array(np.ascontiguousarray(users[rows], dtype=np.float32)),
                })

        _write(_member_frame(spark, model.n_members, partitions).mapInArrow(
            job, "member_row int, member_id string, vector array<float>"), out)
        return {"members": model.n_members, "dim": dim, "seconds": round(time.perf_counter() - t0, 2),
                "source": source.describe(), "version": opened.version}
    finally:
        opened.close()


# --------------------------------------------------------------------------- audiences
def audience_export(
    spark: SparkSession, source: ModelSource, out: str, *, n: int = 1000, products: list[str] | None = None,
    categories: list[str] | None = None, where: dict[str, list[str]] | None = None,
    partitions: int | None = None, product_batch: int = 64,
) -> dict[str, Any]:
    """The top-``n`` members of each product (``products`` by id and / or every product of
    ``categories``; all products when neither), among members whose tags match ``where``, as
    Parquet ``product_id, rank, member_id, score`` (rank 1 = best).

    Each member partition scores its members against every product and keeps its own top-``n``
    per product, in the order :meth:`Recommender.audience` breaks ties (score, then the model's
    member activity, then the lower row); the top-``n`` of those candidates is the audience."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    t0 = time.perf_counter()
    opened = _open(spark, source)
    try:
        bundle = opened.bundle
        targets = _product_rows(bundle, products, categories)
        mask = _member_mask(bundle, where)
        shipped = opened.shipped

        def job(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
            from recsys.models.base import TieOrder, topk_rows

            worker = _worker_bundle(shipped)
            model = worker.model
            activity = model.activity
            users = member_vectors_of(model)
            items = model.factor_vectors()[1] if users is not None else None
            for rb in batches:
                rows = rb.column(0).to_numpy().astype(np.int64)
                if mask is not None:
                    rows = rows[mask[rows]]
                if not len(rows):
                    continue
                tie = None if activity is None else TieOrder(np.asarray(activity)[rows])
                for start in range(0, len(targets), product_batch):
                    prods = targets[start : start + product_batch]
                    if items is not None:
                        scores = np.asarray(items[prods] @ users[rows].T, dtype=np.float32)
                    else:  # the contract scores every member; this partition keeps its own
                        scores = np.asarray(model.member_scores(prods), dtype=np.float32)[:, rows]
                    idx, sc = topk_rows(scores, n, tiebreak=tie)
                    keep = idx >= 0
                    prod_col = np.repeat(prods, idx.shape[1]).reshape(idx.shape)[keep]
                    member = rows[idx[keep]]
                    yield pa.RecordBatch.from_pydict({
                        "product_row": pa.array(prod_col.astype(np.int32)),
                        "member_row": pa.array(member.astype(np.int32)),
                        "score": pa.array(sc[keep].astype(np.float32)),
                        "activity": pa.array((np.zeros(len(member)) if activity is None
                                              else np.asarray(activity)[member]).astype(np.float64)),
                    })

        cands = _member_frame(spark, bundle.model.n_members, partitions).mapInArrow(
            job, "product_row int, member_row int, score float, activity double")
        order = Window.partitionBy("product_row").orderBy(F.col("score").desc(), F.col("activity").desc(),
                                                          F.col("member_row").asc())
        top = cands.withColumn(RANK, F.row_number().over(order)).where(F.col(RANK) <= n)
        ids = _id_frames(spark, bundle)
        result = (top.join(F.broadcast(ids["products"]), "product_row").join(ids["members"], "member_row")
                  .select(Col.PRODUCT, RANK, Col.MEMBER, SCORE, "product_row", "member_row"))
        _write(result.repartition("product_row").sortWithinPartitions("product_row", RANK), out)
        return {"products": int(len(targets)), "n": n, "where": where or {},
                "members_eligible": int(len(bundle.members) if mask is None else mask.sum()),
                "seconds": round(time.perf_counter() - t0, 2), "source": source.describe(), "version": opened.version}
    finally:
        opened.close()


def _id_frames(spark: SparkSession, bundle: Bundle) -> dict[str, DataFrame]:
    """Row -> external id tables for joining ids onto a job's rows."""
    return {
        "products": spark.createDataFrame(pa.table({
            "product_row": pa.array(np.arange(len(bundle.products), dtype=np.int32)),
            Col.PRODUCT: pa.array(bundle.products.external_ids.astype(str))})),
        "members": spark.createDataFrame(pa.table({
            "member_row": pa.array(np.arange(len(bundle.members), dtype=np.int32)),
            Col.MEMBER: pa.array(bundle.members.external_ids.astype(str))})),
    }


# --------------------------------------------------------------------------- push lists
def push_lists(
    spark: SparkSession, source: ModelSource, out: str, *, k: int = 10, mode: str = "discover",
    where: dict[str, list[str]] | None = None, categories: list[str] | None = None,
    exclude: list[str] | None = None, partitions: int | None = None,
) -> dict[str, Any]:
    """A campaign's picks: the top-``k`` products for every member whose tags match ``where``
    (every member when empty), in ``mode``, only from ``categories`` and never ``exclude`` --
    :meth:`Recommender.recommend` with those filters -- as Parquet ``member_id, rank, product_id,
    score, bought_before``."""
    if mode not in MODES:
        raise InputError(f"mode must be one of {', '.join(MODES)}; got {mode!r}")
    t0 = time.perf_counter()
    opened = _open(spark, source)
    try:
        bundle = opened.bundle
        mask = _member_mask(bundle, where)
        include = np.flatnonzero(_category_tag(bundle).mask(_known_categories(bundle, categories))) \
            if categories else None
        excl = bundle.products.to_index(exclude, missing="ignore") if exclude else None
        excl = excl[excl >= 0] if excl is not None else None
        shipped = opened.shipped

        def job(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
            worker = _worker_bundle(shipped)
            model = worker.model
            size = _block_size(model)
            member_ids, product_ids = worker.members.external_ids, worker.products.external_ids
            for rb in batches:
                rows = rb.column(0).to_numpy().astype(np.int64)
                if mask is not None:
                    rows = rows[mask[rows]]
                for start in range(0, len(rows), size):
                    block = rows[start : start + size]
                    idx, sc = model.recommend(block, k, mode=mode, include=include, exclude=excl)  # type: ignore[arg-type]
                    keep = idx >= 0
                    member = np.repeat(block, k).reshape(idx.shape)[keep]
                    rank = np.tile(np.arange(1, k + 1, dtype=np.int32), (len(block), 1))[keep]
                    prod = idx[keep]
                    bought = np.asarray(model.history[member, prod]).ravel() > 0 if len(prod) else np.zeros(0, bool)
                    yield pa.RecordBatch.from_pydict({
                        Col.MEMBER: pa.array(member_ids[member].astype(str)), RANK: pa.array(rank),
                        Col.PRODUCT: pa.array(product_ids[prod].astype(str)),
                        SCORE: pa.array(sc[keep].astype(np.float32)), BOUGHT: pa.array(bought),
                    })

        schema = f"{Col.MEMBER} string, {RANK} int, {Col.PRODUCT} string, {SCORE} float, {BOUGHT} boolean"
        _write(_member_frame(spark, bundle.model.n_members, partitions).mapInArrow(job, schema), out)
        return {"members": int(len(bundle.members) if mask is None else mask.sum()), "k": k, "mode": mode,
                "where": where or {}, "categories": categories or [], "excluded": int(0 if excl is None else len(excl)),
                "seconds": round(time.perf_counter() - t0, 2), "source": source.describe(), "version": opened.version}
    finally:
        opened.close()
