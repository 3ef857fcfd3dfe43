"""Pre-ranked pick lists: every known member's top-N products, ranked once, offline.

Scoring a member live costs what the model costs (the hybrid model's LightGBM ranker: ~4 ms a
member), which a web server answering thousands of requests a second cannot pay per request.
:func:`pre_rank` ranks every member's products in both modes ahead of time -- in batches, each
scored once for both modes (:meth:`~recsys.models.base.Recommender.recommend_modes`, which ranks
the way ``Recommender.recommend`` ranks) -- and :class:`PreRanked` travels in the serving bundle
(:mod:`recsys.bundle`, file ``pre_ranked.npz``).

What a list holds, per member and mode, is exactly the head of ``model.recommend(members, N,
mode=mode)`` without filters: products best first, ties broken by the lower index, ``-1`` /
``-inf`` once the member has no more scorable products. So:

* a filtered request (active products, categories, exclusions) answered from a list is the head of
  the same filter applied to the member's full ranking -- identical to scoring live -- as long as
  at least ``k`` products survive the filter, or the list is *complete* (it ended in padding, so it
  holds every product the model can score for that member);
* otherwise (fewer than ``k`` survive a truncated list, ``k > N``, live purchases since), the
  server scores live.

:func:`pre_rank` checks its own answers against ``model.recommend`` for a sample of members before
returning (:class:`PreRankError` if they differ), so a model whose ``recommend`` means something
else than its scoring hook can never ship lists that disagree with live scoring.

Lists of millions of members are written to disk as they are ranked (``pre_rank(..., out=DIR)``,
:class:`ListWriter`): the ranking process then holds one batch, not ``members x N x 2 modes``
entries (1.6 GB at a million members), and reads the lists back memory-mapped.

Examples
--------
>>> from recsys.precompute import pre_rank
>>> lists = pre_rank(model, n=100)                      # doctest: +SKIP
>>> lists.indices["discover"].shape                     # doctest: +SKIP
(32266, 100)
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from recsys.models.base import NEG_INF, Recommender

MODES: tuple[str, ...] = ("replenish", "discover")
DEFAULT_N = 100
# dense (members x products) float32 scores per batch: at most this many entries (~256 MB)
MAX_BATCH_ENTRIES = 1 << 26
VERIFY_MEMBERS = 16
FILE_NAME = "pre_ranked.npz"


class PreRankError(ValueError):
    """The pre-ranked lists disagree with the model's own ``recommend`` (they would be wrong)."""


@dataclass
class PreRanked:
    """Per mode, ``(n_members, n)`` product indices (int32, ``-1`` padding) and scores
    (float32, ``-inf`` padding), best first."""

    indices: dict[str, np.ndarray]
    scores: dict[str, np.ndarray]
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def modes(self) -> tuple[str, ...]:
        return tuple(self.indices)

    @property
    def n(self) -> int:
        return int(next(iter(self.indices.values())).shape[1])

    @property
    def n_members(self) -> int:
        return int(next(iter(self.indices.values())).shape[0])

    def complete(self, mode: str) -> np.ndarray:
        """Members whose ``mode`` list holds every product the model can score for them."""
        idx = self.indices[mode]
        return idx[:, -1] < 0 if idx.shape[1] else np.ones(len(idx), dtype=bool)

    def check(self, n_members: int, n_products: int) -> None:
        """Raise ValueError unless the lists fit a model of this shape."""
        for mode in self.modes:
            idx, sc = self.indices[mode], self.scores[mode]
            if mode not in MODES:
                raise ValueError(f"unknown pre-ranked mode {mode!r}; modes: {', '.join(MODES)}")
            if idx.ndim != 2 or idx.shape != sc.shape or idx.shape[0] != n_members:
                raise ValueError(
                    f"pre-ranked {mode} lists have shape {idx.shape} / {sc.shape}; the model has {n_members} members"
                )
            if idx.size and (idx.min() < -1 or idx.max() >= n_products):
                raise ValueError(f"pre-ranked {mode} lists name products outside 0..{n_products - 1}")

    def save(self, path: Path | str) -> Path:
        arrays: dict[str, np.ndarray] = {}
        for mode in self.modes:
            arrays[f"{mode}.indices"] = np.ascontiguousarray(self.indices[mode], dtype=np.int32)
            arrays[f"{mode}.scores"] = np.ascontiguousarray(self.scores[mode], dtype=np.float32)
        path = Path(path)
        np.savez(path, **arrays)
        return path

    @classmethod
    def load(cls, path: Path | str, meta: dict[str, Any] | None = None) -> PreRanked:
        """Lists saved by :meth:`save` (``.npz``), a :class:`ListWriter` folder (``.npy`` files,
        memory-mapped), or the Parquet folder / file the Spark batch job writes
        (:func:`recsys.spark.batch.pre_rank_lists`, read by :meth:`from_parquet`)."""
        if Path(path).is_dir() and any(Path(path).glob("*.npy")):  # a ListWriter folder: mapped, not read
            arrays = {f.name.removesuffix(".npy"): np.load(f, mmap_mode="r", allow_pickle=False)
                      for f in sorted(Path(path).glob("*.npy"))}
        elif Path(path).is_dir() or str(path).endswith(".parquet"):
            return cls.from_parquet(path, meta)
        else:
            with np.load(path, allow_pickle=False) as npz:
                arrays = {k: npz[k] for k in npz.files}
        modes = sorted({k.split(".", 1)[0] for k in arrays}, key=lambda m: MODES.index(m) if m in MODES else 99)
        return cls(
            indices={m: arrays[f"{m}.indices"].astype(np.int32, copy=False) for m in modes},
            scores={m: arrays[f"{m}.scores"].astype(np.float32, copy=False) for m in modes},
            meta=dict(meta or {}),
        )


    @classmethod
    def from_parquet(cls, path: Path | str, meta: dict[str, Any] | None = None) -> PreRanked:
        """Lists as Parquet rows ``member_row, <mode>_products, <mode>_scores`` (lists of ``n``
        entries, padded with -1 / -inf), one row per member in any order.

        Raises ValueError when the rows are not one per member ``0..rows-1`` or the lists are not
        all of one length."""
        import pyarrow.parquet as pq

        table = pq.read_table(str(path))
        modes = tuple(m for m in MODES if f"{m}_products" in table.column_names)
        if not modes or "member_row" not in table.column_names:
            raise ValueError(f"{path}: no member_row / <mode>_products columns (modes: {', '.join(MODES)})")
        rows = table.column("member_row").to_numpy().astype(np.int64)
        n_members = len(rows)
        if n_members and (rows.min() < 0 or rows.max() >= n_members or len(np.unique(rows)) != n_members):
            raise ValueError(f"{path}: member_row is not one row per member 0..{n_members - 1}")
        arrays: dict[str, dict[str, np.ndarray]] = {"products": {}, "scores": {}}
        for mode in modes:
            for kind, dtype in (("products", np.int32), ("scores", np.float32)):
                column = table.column(f"{mode}_{kind}").combine_chunks()
                flat = column.flatten().to_numpy(zero_copy_only=False).astype(dtype, copy=False)
                width = len(flat) // max(n_members, 1)
                if len(flat) != width * n_members or (n_members and len(column.value_lengths().unique()) != 1):
                    raise ValueError(f"{path}: {mode}_{kind} lists are not all of one length")
                block = np.empty((n_members, width), dtype=dtype)
                block[rows] = flat.reshape(n_members, width)
                arrays[kind][mode] = block
        return cls(indices=arrays["products"], scores=arrays["scores"], meta=dict(meta or {}))


class ListWriter:
    """Pre-ranked lists written to a folder a block of members at a time, read back memory-mapped.

    One ``.npy`` file per mode and kind -- ``<mode>.indices.npy`` (int32, ``-1`` padding) and
    ``<mode>.scores.npy`` (float32, ``-inf`` padding), each ``(n_members, n)`` -- created at full
    size up front; :meth:`write` puts the rows of members ``start .. start + len(rows)`` in place
    with ``os.pwrite`` at their offset. So blocks may come in any order, from several threads at
    once (each writes its own rows), and the writer holds nothing between them: what a batch job
    ranking member ranges side by side needs. :meth:`finish` checks every row of every mode was
    written and returns the lists as a :class:`PreRanked` over memory-mapped files.

    Examples
    --------
    >>> import tempfile
    >>> w = ListWriter(tempfile.mkdtemp(), n_members=3, n=2, modes=("replenish",))
    >>> w.write(1, "replenish", np.array([[4, 2], [7, -1]]), np.array([[.9, .5], [.3, -np.inf]]))
    >>> w.write(0, "replenish", np.array([[1, 0]]), np.array([[.8, .1]]))
    >>> w.finish().indices["replenish"].tolist()
    [[1, 0], [4, 2], [7, -1]]
    """

    KINDS = (("indices", np.int32), ("scores", np.float32))

    def __init__(self, folder: Path | str, n_members: int, n: int, modes: tuple[str, ...] = MODES):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.n_members, self.n, self.modes = int(n_members), int(n), tuple(modes)
        self._written = {m: np.zeros(self.n_members, dtype=bool) for m in self.modes}
        self._lock = threading.Lock()
        self._files: dict[tuple[str, str], tuple[int, int]] = {}  # (mode, kind) -> (fd, data offset)
        for mode in self.modes:
            for kind, dtype in self.KINDS:
                path = self.path(mode, kind)
                # the header (and a sparse file of the full size), written by NumPy's own format
                header = np.lib.format.open_memmap(path, mode="w+", dtype=dtype, shape=(self.n_members, self.n))
                offset = header.offset
                del header
                self._files[(mode, kind)] = (os.open(path, os.O_WRONLY), offset)

    def path(self, mode: str, kind: str) -> Path:
        return self.folder / f"{mode}.{kind}.npy"

    def write(self, start: int, mode: str, indices: np.ndarray, scores: np.ndarray) -> None:
        """Rows ``start .. start + len(indices)`` of ``mode``: product indices and their scores."""
        rows = len(indices)
        if indices.shape != (rows, self.n) or scores.shape != (rows, self.n):
            raise ValueError(f"a block of {rows} rows must be {rows} x {self.n}; got {indices.shape} / {scores.shape}")
        if start < 0 or start + rows > self.n_members:
            raise ValueError(f"rows {start}..{start + rows - 1} are outside 0..{self.n_members - 1}")
        for (kind, dtype), block in zip(self.KINDS, (indices, scores), strict=True):
            fd, offset = self._files[(mode, kind)]
            data = np.ascontiguousarray(block, dtype=dtype).tobytes()
            os.pwrite(fd, data, offset + start * self.n * np.dtype(dtype).itemsize)
        with self._lock:
            self._written[mode][start : start + rows] = True

    def finish(self, meta: dict[str, Any] | None = None) -> PreRanked:
        """Close the files and return the lists, memory-mapped (ValueError if a row is missing)."""
        for fd, _ in self._files.values():
            os.close(fd)
        self._files = {}
        for mode, done in self._written.items():
            if not done.all():
                raise ValueError(f"pre-ranked {mode} lists: {int((~done).sum())} member rows were never written")
        return PreRanked.load(self.folder, meta)


def pre_rank(
    model: Recommender,
    n: int = DEFAULT_N,
    *,
    modes: tuple[str, ...] = MODES,
    batch_size: int | None = None,
    verify: int = VERIFY_MEMBERS,
    progress: Callable[[int, int], None] | None = None,
    workers: int | None = None,
    out: Path | str | None = None,
) -> PreRanked:
    """Rank every member's top-``n`` products in each of ``modes`` (see the module docstring).

    Parameters
    ----------
    model : a fitted recommender
    n : list length per member and mode
    batch_size : members scored at once (default: as many as keep a dense score block under
        ~256 MB, at most 1,024)
    verify : members (spread over the index) whose lists are compared with ``model.recommend``
    progress : called with (members done, members) after each batch
    workers : threads ranking batches side by side (default: one per core). Scoring is NumPy,
        SciPy, FAISS and LightGBM calls that release the GIL, each batch writes its own rows, and
        a model's scoring hooks only read the fitted model.
    out : a folder to write the lists into as they are ranked (:class:`ListWriter`); the lists
        returned are then memory-mapped from it. Default: built in memory.

    Raises
    ------
    PreRankError
        When a verified member's list differs from ``model.recommend``.
    """
    model.check_fitted()
    for mode in modes:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}; got {mode!r}")
    t0 = time.perf_counter()
    n_members, n_products = model.n_members, model.n_products
    if batch_size is None:
        batch_size = int(max(1, min(1024, MAX_BATCH_ENTRIES // max(n_products, 1))))
    writer = ListWriter(out, n_members, n, modes) if out is not None else None
    if writer is None:
        indices = {m: np.full((n_members, n), -1, dtype=np.int32) for m in modes}
        scores = {m: np.full((n_members, n), NEG_INF, dtype=np.float32) for m in modes}

    def rank(start: int) -> int:
        batch = np.arange(start, min(n_members, start + batch_size), dtype=np.int64)
        sl = slice(start, start + len(batch))
        for mode, (idx, sc) in rank_members(model, batch, n, modes).items():
            if writer is not None:
                writer.write(start, mode, idx, sc)
            else:
                indices[mode][sl], scores[mode][sl] = idx, sc
        return len(batch)

    starts = range(0, n_members, batch_size)
    with model.bulk_scoring(n_members):  # the verification too: the same scorer as the lists
        if n_members:
            rank(starts[0])  # first on its own: a model may build a lazy cache (an index) on first use
        done = min(batch_size, n_members)
        if progress is not None and n_members:
            progress(done, n_members)
        with ThreadPoolExecutor(workers or os.cpu_count() or 1) as pool:
            for size in pool.map(rank, starts[1:]):
                done += size
                if progress is not None:
                    progress(done, n_members)
        seconds = time.perf_counter() - t0
        if writer is not None:
            written = writer.finish()
            indices, scores = written.indices, written.scores
        verified = _verify(model, indices, scores, n, verify)
    meta = {
        "n": n, "modes": list(modes), "members": n_members, "seconds": round(seconds, 2),
        "verified_members": verified, "created_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "complete_share": {m: float(np.mean(indices[m][:, -1] < 0)) if n else 1.0 for m in modes},
    }
    return PreRanked(indices, scores, meta)


def rank_members(
    model: Recommender, batch: np.ndarray, n: int, modes: tuple[str, ...] = MODES
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """One block of members' top-``n`` lists in each of ``modes``, as :func:`pre_rank` ranks every
    block: ``mode -> (int32 product indices, float32 scores)``, each ``(len(batch), n)``. The
    model scores the block once for both modes (:meth:`~recsys.models.base.Recommender.recommend_modes`;
    the batch jobs on Spark call this too)."""
    ranked = model.recommend_modes(np.asarray(batch, dtype=np.int64), n, modes)
    return {mode: (idx.astype(np.int32), sc) for mode, (idx, sc) in ranked.items()}


# scores computed in another process or batch shape may differ in the last bits (BLAS kernels
# block a matrix product by its shape and threads). A dot product's rounding error scales with its
# terms, not with its sum, so the tolerance is relative to the list's largest score: a score near
# zero (a member's 100th pick) may differ by far more than its own size, and two products whose
# scores are that close may swap places, or one may take the other's place at the end of the list.
SCORE_RTOL = 1e-6


def same_list(want_i: np.ndarray, want_s: np.ndarray, got_i: np.ndarray, got_s: np.ndarray) -> bool:
    """Whether a pre-ranked list (products, scores) is the one ``model.recommend`` gives: the
    same scores rank by rank to :data:`SCORE_RTOL` of the largest, and every product that is not
    at its own rank scored within that tolerance of the product at its rank there (a near tie)."""
    if want_i.shape != got_i.shape:
        return False
    finite = np.isfinite(want_s)
    tol = SCORE_RTOL * (float(np.max(np.abs(want_s[finite]))) if finite.any() else 0.0)
    if not np.allclose(got_s, want_s, rtol=0.0, atol=tol, equal_nan=True):
        return False
    moved = np.flatnonzero(want_i != got_i)
    if not len(moved):
        return True
    rank_in_want = {int(p): r for r, p in enumerate(want_i.tolist()) if p >= 0}
    last = float(want_s[finite][-1]) if finite.any() else -np.inf
    for r in moved.tolist():
        product = int(got_i[r])
        if product < 0:
            return False
        there = rank_in_want.get(product)
        own = float(want_s[there]) if there is not None else last  # not in want: tied with its end
        if abs(own - float(got_s[r])) > tol:
            return False
    return True


def _verify(model: Recommender, indices: dict[str, np.ndarray], scores: dict[str, np.ndarray], n: int,
            count: int) -> int:
    """Compare the lists of ``count`` members (spread over the index) with ``model.recommend``."""
    if count <= 0 or model.n_members == 0:
        return 0
    sample = np.unique(np.linspace(0, model.n_members - 1, num=min(count, model.n_members)).astype(np.int64))
    for mode in indices:
        want_i, want_s = model.recommend(sample, n, mode=mode)  # type: ignore[arg-type]
        got_i, got_s = indices[mode][sample], scores[mode][sample]
        for j, member in enumerate(sample.tolist()):
            if not same_list(want_i[j], want_s[j], got_i[j], got_s[j]):
                diff = int(np.flatnonzero(want_i[j] != got_i[j])[0]) if not np.array_equal(want_i[j], got_i[j]) else -1
                raise PreRankError(
                    f"pre-ranked {mode} list of member row {member} differs from model.recommend "
                    f"(first difference at rank {diff}); the lists would not match live scoring"
                )
    return len(sample)
