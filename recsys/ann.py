"""FAISS inner-product indexes over a bundle's vectors: chosen by size, built once, saved, loaded
memory-mapped.

Which index
    Up to a configurable size (``exact_max_members`` / ``exact_max_products``) vectors are
    searched exactly (``IndexFlatIP``, built at load: adding vectors to a flat index is a copy).
    Above it, an inverted-file index (``IndexIVFFlat``): k-means cells over the vectors, and a
    search that scans only the ``nprobe`` cells nearest the query. Inner products are searched as
    distances in a space of one more dimension (:func:`mips_to_l2`), where cells hold the
    vectors of large inner product together. It stores the vectors themselves (no quantisation),
    so whatever it finds is scored exactly and recall depends only on ``nprobe``. An HNSW graph (``approximate = "hnsw"``) stays
    available; it cannot be memory-mapped and its recall falls with k (0.77 at k=1,000 on 1M
    members), so IVF is the default.

``nprobe`` from a measured recall
    :func:`calibrate` searches a sample of queries (product vectors for the member index: what
    audiences ask) exactly and with the IVF index at increasing ``nprobe``, and keeps, for each
    ``k`` of ``calibration_ks``, the smallest ``nprobe`` whose mean recall against exact search
    reaches ``calibration_recall`` (0.96: the 0.95 target with a margin for queries outside the
    sample) -- recall counted by score, so a member tied with the k-th is as good a find as any
    other (:func:`recall_vs_exact`). :func:`ivf_nprobe` reads that table for a search, interpolating between calibrated
    ``k``: a request for ``k`` results among a share ``s`` of the rows (a tag filter) is read as
    a search for ``k / s`` unfiltered results, since the kept rows are spread over the cells.
    Where reaching the recall takes more than ``ivf_max_probe_share`` of the cells (and above
    the largest calibrated ``k``) an exact scan is cheaper: the table says ``None`` and the
    caller searches exactly.

Built once
    :func:`build_indexes` builds the indexes a bundle's vectors need (only the approximate ones:
    a flat index costs nothing to build at load) when the bundle is made -- by ``recsys train``,
    or ``recsys bundle index DIR`` for an existing bundle -- and :mod:`recsys.bundle` saves them
    as the optional ``indexes/`` part. :func:`load_index` reads one with
    ``IO_FLAG_MMAP | IO_FLAG_READ_ONLY``: an IVF index's cells stay in the file and are paged in
    by searches (shared by every server process on the machine), so a server is ready without
    building or reading ten million vectors.

Examples
--------
>>> import numpy as np
>>> v = np.random.default_rng(0).standard_normal((4000, 8)).astype(np.float32)
>>> ann = build_index(v, "ivf", IndexSettings(ivf_nlist=16), queries=v[:50])
>>> ann.kind, ann.meta["nlist"], ann.meta["recall"]["10"] >= 0.96
('ivf', 16, True)
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from recsys.models.base import Capability, Recommender

IndexKind = Literal["flat", "ivf", "hnsw"]
INDEX_DIR = "indexes"
INDEX_NAMES = ("members", "products", "similar")


class IndexSettings(BaseModel):
    """Which index searches a set of vectors, and how the approximate ones are built and searched.

    The same settings serve the bundle build (training, ``recsys bundle index``) and the server
    (``RECSYS_INDEX__...``): a server uses the bundle's index when it is of the kind these
    settings choose for its size, and builds one at load otherwise."""

    model_config = ConfigDict(extra="forbid")

    # exact inner-product search (IndexFlatIP) up to this many vectors; approximate above it.
    # Measured (bench_serving.py): an exact audience of 10,000 out of 1M members is ~30 ms p50,
    # 51 ms p99 on one core; out of 10M it would be ten times that
    exact_max_members: int = Field(200_000, ge=1)
    exact_max_products: int = Field(200_000, ge=1)
    approximate: Literal["ivf", "hnsw"] = "ivf"
    # ---- IVF: cells (0: about sqrt(n), a power of two between 64 and 65,536), k-means sample
    ivf_nlist: int = Field(0, ge=0)
    ivf_train_per_list: int = Field(64, ge=8)  # k-means learns from nlist x this many vectors
    # nprobe for each k is the smallest that reaches this mean recall against exact search on
    # the calibration queries (the 0.95 target plus a margin for other queries)
    calibration_recall: float = Field(0.96, gt=0.0, le=1.0)
    calibration_queries: int = Field(300, ge=5)
    # dense above 1,000: a filter keeping a fifth of the rows reads the table at 5 k (an audience
    # of 10,000 in a 20 % segment at 50,000), and where IVF stops paying (more than
    # ivf_max_probe_share of the cells) must be found close to where it is
    calibration_ks: tuple[int, ...] = (10, 100, 1000, 3000, 10_000, 20_000, 50_000, 100_000)
    # a search that would probe more than this share of the cells is answered exactly instead
    ivf_max_probe_share: float = Field(0.5, gt=0.0, le=1.0)
    # ---- HNSW (approximate = "hnsw")
    hnsw_m: int = Field(32, ge=4, le=128)
    hnsw_ef_construction: int = Field(200, ge=8)
    hnsw_ef_search: int = Field(256, ge=8)
    # ... at least this many candidates per result wanted: efSearch = max(hnsw_ef_search, 10 k)
    hnsw_ef_per_k: int = Field(10, ge=1)
    # the graph answers requests for at most this many results; larger requests (big audiences)
    # are searched exactly: HNSW's recall falls with k (0.77 at k=1,000 on 1M members)
    hnsw_max_k: int = Field(100, ge=1)
    # ... and only filters that keep at least this share of the rows: a restrictive filter (a tag)
    # leaves HNSW walking neighbours it must skip (recall 0.41 at k=1,000 for a 10 % segment of 1M
    # members); the kept rows are scanned exactly instead
    hnsw_min_filter_share: float = Field(0.9, ge=0.0, le=1.0)
    # ---- threads
    # threads FAISS may use while building indexes (0: all cores)
    build_threads: int = Field(0, ge=0)
    # threads one search may use: 1, because the server's own concurrency (workers, thread pool)
    # already fills the cores; measured: an OpenMP flat search of 20k products took 10 ms with 2
    # threads and 0.3 ms with 1
    search_threads: int = Field(1, ge=1)

    def kind_for(self, n: int, exact_max: int) -> IndexKind:
        return "flat" if n <= exact_max else self.approximate


def mips_to_l2(vectors: np.ndarray, max_norm: float | None = None) -> np.ndarray:
    """``vectors`` with one more coordinate, ``sqrt(max_norm**2 - |x|**2)``: every row then has
    norm ``max_norm``, and for a query ``(q, 0)`` the squared distance is
    ``|q|**2 + max_norm**2 - 2 q.x`` -- the nearest rows are those of largest inner product. A
    query gets a 0 (``max_norm=None``).

    Why: k-means cells over raw vectors group members by position, but the largest inner products
    belong to members of large norm wherever they lie, so an inner-product IVF index must probe
    most cells (measured on ALS vectors of 790k synthetic members: recall@1,000 0.83 with 256 of
    1,024 cells). In the augmented space the same 256 cells hold 0.98 of them, in a fifth of the
    time (Bachrach et al., RecSys 2014)."""
    x = np.asarray(vectors, dtype=np.float32)
    if max_norm is None:
        extra = np.zeros((len(x), 1), np.float32)
    else:
        sq = (x.astype(np.float64) ** 2).sum(axis=1)
        extra = np.sqrt(np.maximum(max_norm * max_norm - sq, 0.0)).astype(np.float32)[:, None]
    return np.ascontiguousarray(np.hstack([x, extra]))


@dataclass
class AnnIndex:
    """A FAISS index over ``meta["n"]`` vectors of ``meta["dim"]`` dimensions (row ``i`` of the
    vectors is id ``i``) and what is known about it: its kind, cells, calibrated ``nprobe`` and
    measured recall per ``k``, how long it took to build."""

    index: Any  # faiss.Index
    kind: IndexKind
    meta: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None  # the file it was loaded from (a memory-mapped index reads it)

    @property
    def n(self) -> int:
        return int(self.meta["n"])

    @property
    def dim(self) -> int:
        return int(self.meta["dim"])

    def search(self, queries: np.ndarray, k: int, *, nprobe: int | None = None, ef_search: int | None = None,
               selector: Any = None) -> tuple[np.ndarray, np.ndarray]:
        """FAISS's answer: ``(scores, ids)`` of the top-``k`` rows per query, -1 padding. For an
        IVF index the queries are mapped into its space and the scores are inner products derived
        from its distances (equal to ``q.x`` up to float rounding; recompute them exactly where
        that matters)."""
        import faiss

        q = np.ascontiguousarray(queries, dtype=np.float32)
        if self.kind == "ivf":
            params = faiss.SearchParametersIVF(sel=selector, nprobe=int(nprobe or 1))
            # each query scaled to the rows' norm (which leaves the order of q.x alone): cells are
            # chosen by |q - c|, and a short query (a product few bought) against long rows would
            # have its cells chosen by the centroids' norms instead of their directions (measured:
            # recall@10 0.15 at 64 of 1,024 cells on 1M synthetic ALS members, product vectors
            # of norm ~0.01 against members of norm ~1)
            m = float(self.meta["max_norm"])
            qn = np.sqrt((q.astype(np.float64) ** 2).sum(axis=1))
            scale = np.where(qn > 0, m / np.where(qn > 0, qn, 1.0), 1.0)
            qs = (q * scale[:, None]).astype(np.float32)
            dist, ids = self.index.search(mips_to_l2(qs), k, params=params)
            scores = ((qn * scale)[:, None] ** 2 + m * m - dist) / (2.0 * scale[:, None])
            # -1 padding (fewer rows in the probed cells) comes with FAISS's largest distance
            scores = np.where(ids >= 0, scores, -np.inf)
            return scores.astype(np.float32), ids
        if self.kind == "hnsw":
            params = faiss.SearchParametersHNSW(sel=selector, efSearch=int(ef_search or self.index.hnsw.efSearch))
        else:
            params = faiss.SearchParameters(sel=selector) if selector is not None else None
        return self.index.search(q, k, params=params)


def default_nlist(n: int) -> int:
    """About sqrt(n) cells, a power of two in [64, 65,536], and never more than n / 39 (FAISS
    wants ~39 training vectors per centroid): 1,024 for 1M vectors, 4,096 for 10M."""
    if n < 64 * 39:
        return max(1, n // 39)
    target = 2 ** round(math.log2(math.sqrt(n)))
    return int(min(max(64, target), 65_536, max(1, n // 39)))


class _Threads:
    """FAISS's OpenMP thread count for a block (restored after)."""

    def __init__(self, n: int):
        self.n = n or os.cpu_count() or 1

    def __enter__(self) -> None:
        import faiss

        self.previous = faiss.omp_get_max_threads()
        faiss.omp_set_num_threads(self.n)

    def __exit__(self, *exc: object) -> None:
        import faiss

        faiss.omp_set_num_threads(self.previous)


def build_index(
    vectors: np.ndarray, kind: IndexKind, settings: IndexSettings, *, queries: np.ndarray | None = None,
    seed: int = 0, calibrate_ivf: bool = True,
) -> AnnIndex:
    """A FAISS inner-product index of ``kind`` over ``vectors`` (row i = id i).

    ``queries``: what searches will look like, for the IVF calibration (default: a sample of the
    vectors themselves). Timings (``train_s``, ``add_s``, ``calibrate_s``) go to ``meta``."""
    import faiss

    vecs = np.ascontiguousarray(vectors, dtype=np.float32)
    n, d = vecs.shape
    meta: dict[str, Any] = {"kind": kind, "n": int(n), "dim": int(d), "faiss": faiss.__version__}
    t0 = time.perf_counter()
    with _Threads(settings.build_threads):
        if kind == "flat":
            index: Any = faiss.IndexFlatIP(d)
            index.add(vecs)
        elif kind == "hnsw":
            index = faiss.IndexHNSWFlat(d, settings.hnsw_m, faiss.METRIC_INNER_PRODUCT)
            index.hnsw.efConstruction = settings.hnsw_ef_construction
            index.hnsw.efSearch = settings.hnsw_ef_search
            index.add(vecs)
            meta |= {"M": settings.hnsw_m, "ef_construction": settings.hnsw_ef_construction}
        elif kind == "ivf":
            nlist = max(1, min(settings.ivf_nlist or default_nlist(n), n))
            max_norm = float(np.sqrt((vecs.astype(np.float64) ** 2).sum(axis=1).max(initial=0.0)))
            index = faiss.IndexIVFFlat(faiss.IndexFlatL2(d + 1), d + 1, nlist, faiss.METRIC_L2)
            index.cp.seed = seed
            rng = np.random.default_rng(seed)
            m = min(n, nlist * settings.ivf_train_per_list)
            sample = vecs if m == n else vecs[np.sort(rng.choice(n, size=m, replace=False))]
            index.train(mips_to_l2(sample, max_norm))
            meta["train_s"] = round(time.perf_counter() - t0, 3)
            t1 = time.perf_counter()
            for start in range(0, n, 500_000):  # bounded temporaries: one augmented chunk at a time
                index.add(mips_to_l2(vecs[start : start + 500_000], max_norm))
            meta |= {"nlist": int(nlist), "train_vectors": int(m), "max_norm": max_norm,
                     "transform": "mips-to-l2", "add_s": round(time.perf_counter() - t1, 3)}
        else:
            raise ValueError(f"unknown index kind {kind!r}; kinds: flat, ivf, hnsw")
    meta["build_s"] = round(time.perf_counter() - t0, 3)
    ann = AnnIndex(index, kind, meta)
    if kind == "ivf" and calibrate_ivf:
        calibrate(ann, vecs, queries, settings, seed=seed)
    return ann


def exact_top(vectors: np.ndarray, queries: np.ndarray, k: int, threads: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``(scores, ids)`` of the exact top-``k`` inner products of each query (FAISS's blocked flat
    search; -1 ids where there are fewer rows)."""
    import faiss

    with _Threads(threads):
        scores, ids = faiss.knn(np.ascontiguousarray(queries, np.float32), np.ascontiguousarray(vectors, np.float32),
                                k, metric=faiss.METRIC_INNER_PRODUCT)
    return scores, ids


def recall_vs_exact(found: np.ndarray, exact_scores: np.ndarray, exact_ids: np.ndarray, vectors: np.ndarray,
                    queries: np.ndarray) -> float:
    """Mean share of each query's exact top-k that ``found`` (row ids, -1 padding) matches, ties
    included: a found row counts when its inner product reaches the k-th exact score. Members
    often share a vector (all who bought just the same one product), and exact search keeps
    whichever of a tied group has the lowest index: counting ids alone would call an equally good
    answer a miss (measured: every nprobe "missed" recall 0.96 at k = 10 on 1M synthetic ALS
    members with 4 products each)."""
    hits = []
    for f, es, ei, q in zip(found, exact_scores, exact_ids, queries, strict=True):
        want = int((ei >= 0).sum())
        if want == 0:
            hits.append(1.0)
            continue
        kth = float(es[want - 1])
        rows = f[f >= 0]
        sc = vectors[rows] @ q
        hits.append(min(want, int((sc >= kth - 1e-5 * max(1.0, abs(kth))).sum())) / want)
    return float(np.mean(hits)) if hits else 1.0


def calibrate(
    ann: AnnIndex, vectors: np.ndarray, queries: np.ndarray | None, settings: IndexSettings, seed: int = 0,
) -> None:
    """Set ``ann.meta["nprobe"]`` (k -> smallest nprobe reaching ``settings.calibration_recall``)
    and ``ann.meta["recall"]`` (k -> the recall measured at that nprobe); see the module docstring."""

    t0 = time.perf_counter()
    rng = np.random.default_rng([seed, 7])
    n = ann.n
    if queries is None or len(queries) == 0:
        queries = vectors
    take = min(settings.calibration_queries, len(queries))
    q = np.ascontiguousarray(queries[np.sort(rng.choice(len(queries), size=take, replace=False))], np.float32)
    ks = sorted({min(int(k), n) for k in settings.calibration_ks if k >= 1})
    exact_s, exact_i = exact_top(vectors, q, ks[-1], settings.build_threads)
    nlist = int(ann.meta["nlist"])
    nprobe: dict[str, int | None] = {}
    recall: dict[str, float | None] = {}

    def measure(k: int, probes: int) -> float:
        with _Threads(settings.build_threads):
            _, ids = ann.search(q, k, nprobe=probes)
        return recall_vs_exact(ids, exact_s[:, :k], exact_i[:, :k], vectors, q)

    lo, limit = 1, max(1, int(settings.ivf_max_probe_share * nlist))
    for k in ks:
        # the smallest nprobe >= the previous k's (recall falls with k at a fixed nprobe):
        # doubling, then bisection between the last miss and the first hit; past ``limit`` an
        # exact scan is cheaper, and so for every larger k
        probes, got = lo, measure(k, lo)
        miss = lo - 1
        while got < settings.calibration_recall and probes < limit:
            miss, probes = probes, min(limit, probes * 2)
            got = measure(k, probes)
        if got < settings.calibration_recall:
            for rest in ks[ks.index(k):]:
                nprobe[str(rest)], recall[str(rest)] = None, None
            break
        while probes - miss > 1:
            mid = (miss + probes) // 2
            r = measure(k, mid)
            if r >= settings.calibration_recall:
                probes, got = mid, r
            else:
                miss = mid
        nprobe[str(k)], recall[str(k)] = int(probes), round(got, 4)
        lo = probes
    ann.meta |= {"nprobe": nprobe, "recall": recall, "calibration_queries": int(take),
                 "calibration_recall": settings.calibration_recall,
                 "calibrate_s": round(time.perf_counter() - t0, 3)}


def ivf_nprobe(meta: dict[str, Any], k: int, share: float = 1.0) -> int | None:
    """The calibrated ``nprobe`` for ``k`` results among a ``share`` of the rows (see the module
    docstring): interpolated between calibrated ``k`` on log scales; ``None`` when the calibration
    found no ``nprobe`` worth searching with for that many (search exactly)."""
    table = sorted((int(kk), None if p is None else int(p)) for kk, p in (meta.get("nprobe") or {}).items())
    if not table:
        return None
    want = max(1.0, k / max(share, 1e-9))
    prev: tuple[int, int] | None = None
    for kk, p in table:
        if want <= kk:
            if p is None:
                return None
            if prev is None or kk == prev[0]:
                return p
            frac = (math.log(want) - math.log(prev[0])) / (math.log(kk) - math.log(prev[0]))
            return int(math.ceil(math.exp(math.log(prev[1]) + frac * (math.log(p) - math.log(prev[1])))))
        if p is None:
            return None
        prev = (kk, p)
    return None  # more than the largest calibrated k (or than every row): exact


# ------------------------------------------------------------------------------ saving / loading
def save_index(ann: AnnIndex, path: Path | str) -> dict[str, Any]:
    """Write the index to ``path`` (FAISS's own format); returns its ``meta`` plus the file size.

    An index loaded from a file is copied from it: a memory-mapped IVF index written by FAISS
    would name the file it maps instead of holding its cells."""
    import shutil

    import faiss

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if ann.path is not None and Path(ann.path).resolve() == path.resolve():
        return {**ann.meta, "bytes": path.stat().st_size}
    # written beside and renamed over: a server may have the old file mapped (truncating it
    # under the mapping would crash that server; a rename leaves its pages alone)
    tmp = path.with_name(path.name + ".tmp")
    if ann.path is not None:
        shutil.copyfile(ann.path, tmp)
    else:
        faiss.write_index(ann.index, str(tmp))
    os.replace(tmp, path)
    return {**ann.meta, "bytes": path.stat().st_size}


def load_index(path: Path | str, meta: dict[str, Any], *, mmap: bool = True) -> AnnIndex:
    """Read an index written by :func:`save_index`; ``mmap``: IVF cells (``IO_FLAG_MMAP |
    IO_FLAG_READ_ONLY``) and flat vectors (``IO_FLAG_MMAP_IFC``) stay in the file, paged in by
    searches; an HNSW graph is read.

    Raises ValueError when the file does not hold what ``meta`` describes."""
    import faiss

    kind = meta.get("kind")
    if kind not in ("flat", "ivf", "hnsw"):
        raise ValueError(f"{path}: unknown index kind {kind!r}")
    flags = 0
    if mmap and kind == "ivf":  # the cells as OnDiskInvertedLists over the file
        flags = faiss.IO_FLAG_MMAP | faiss.IO_FLAG_READ_ONLY
    elif mmap and kind == "flat":  # (IO_FLAG_MMAP_IFC with IO_FLAG_MMAP fails on an IVF file)
        flags = faiss.IO_FLAG_MMAP_IFC
    try:
        index = faiss.read_index(str(path), flags)
    except RuntimeError as exc:
        raise ValueError(f"{path}: not a readable FAISS index ({str(exc).splitlines()[0][:200]})") from None
    expected, metric, dim = {
        "flat": (faiss.IndexFlatIP, faiss.METRIC_INNER_PRODUCT, int(meta.get("dim", -1))),
        "hnsw": (faiss.IndexHNSWFlat, faiss.METRIC_INNER_PRODUCT, int(meta.get("dim", -1))),
        "ivf": (faiss.IndexIVFFlat, faiss.METRIC_L2, int(meta.get("dim", -1)) + 1),  # see mips_to_l2
    }[kind]
    if not isinstance(index, expected) or index.metric_type != metric:
        raise ValueError(f"{path}: a {type(index).__name__} (metric {index.metric_type}); expected a "
                         f"{expected.__name__} of metric {metric}")
    if index.ntotal != int(meta.get("n", -1)) or index.d != dim:
        raise ValueError(f"{path}: holds {index.ntotal} vectors of {index.d} dimensions; bundle.json says "
                         f"{meta.get('n')} x {dim}")
    if kind == "ivf" and ("max_norm" not in meta or not meta.get("nprobe")):
        raise ValueError(f"{path}: bundle.json gives no max_norm / calibrated nprobe for this IVF index")
    return AnnIndex(index, kind, {k: v for k, v in meta.items() if k not in ("file", "bytes")}, Path(path))


def model_vectors(model: Recommender) -> tuple[np.ndarray, np.ndarray] | None:
    """The member and product vectors a vector model is searched with, as float32 (the model's
    :attr:`~recsys.models.base.Capability.VECTORS`), or None for a model that declares none."""
    if not model.has(Capability.VECTORS):
        return None
    users, items = model.factor_vectors()
    if not isinstance(users, np.ndarray) or not isinstance(items, np.ndarray):
        return None
    if users.ndim != 2 or items.ndim != 2 or users.shape[1] != items.shape[1]:
        return None
    if users.shape[0] != model.n_members or items.shape[0] != model.n_products:
        return None
    return users.astype(np.float32, copy=False), items.astype(np.float32, copy=False)


def build_indexes(
    member_vectors: np.ndarray, product_vectors: np.ndarray, settings: IndexSettings, *, seed: int = 0,
    names: tuple[str, ...] = INDEX_NAMES, log: Any = None,
) -> dict[str, AnnIndex]:
    """The approximate indexes a vector model's bundle needs, by the rule of ``settings``: member
    vectors (queried by product vectors: audiences), product vectors (queried by member vectors:
    picks) and unit product vectors (similar products). Flat ones are left out: the server builds
    those at load in a copy's time."""
    users = np.ascontiguousarray(member_vectors, dtype=np.float32)
    items = np.ascontiguousarray(product_vectors, dtype=np.float32)
    unit = (items / (np.linalg.norm(items, axis=1, keepdims=True) + 1e-9)).astype(np.float32)
    plan = {
        "members": (users, items, settings.exact_max_members),
        "products": (items, users, settings.exact_max_products),
        "similar": (unit, unit, settings.exact_max_products),
    }
    out: dict[str, AnnIndex] = {}
    for name in names:
        vecs, queries, exact_max = plan[name]
        kind = settings.kind_for(len(vecs), exact_max)
        if kind == "flat":
            continue
        t0 = time.perf_counter()
        out[name] = build_index(vecs, kind, settings, queries=queries, seed=seed)
        if log is not None:
            log(f"{name} index: {kind} over {len(vecs):,} vectors in {time.perf_counter() - t0:.1f} s "
                f"({_describe(out[name].meta)})")
    return out


def _describe(meta: dict[str, Any]) -> str:
    if meta.get("kind") == "ivf":
        return f"nlist {meta['nlist']}, nprobe {meta.get('nprobe')}, recall {meta.get('recall')}"
    return ", ".join(f"{k} {v}" for k, v in meta.items() if k in ("M", "ef_construction"))
