"""Answering picks from the bundle's pre-ranked lists (:mod:`recsys.precompute`), and the per-pick
reasons both the lists and live scoring use.

A bundle may carry, per known member and mode, the model's top-N products ranked offline. At load
:func:`build_pick_lists` adds what a response needs that does not change while the member buys
nothing new: each entry's reason (bought it N times / the bought product it is most similar to).
A request then costs a filter over at most N entries (:meth:`PickLists.answer`):

* the stored list, filtered by the request's allowed products (active, category, exclusions),
  first ``k`` -- identical to live scoring when ``k`` entries survive or the list is complete (it
  holds every product the model can score for the member);
* otherwise ``None``: the caller scores live. Also ``None`` for modes the bundle has no lists for.

A member's live purchase makes their stored lists stale: the events path invalidates them
(:meth:`PickLists.invalidate`), folds the purchases into a vector model's member vector, and
schedules the member (:meth:`PickLists.schedule`); a background thread then ranks their lists
again, once, with the scorer that live scoring uses (:meth:`PickLists.rerank`: the top-``n`` of
every product in both modes, with their reasons from what the member has bought by now), a few
members at a time under the state's lock. Requests are then answered from those lists exactly as
from the bundle's, at the same speed; until then (milliseconds per member) the member is scored
live -- the same answer, so an event post never waits for the ranking.

Discover lists leave out what the model's history says each member bought; they are used only
when that is what the server calls "bought" too (the same products per member), else dropped at
load with a warning and discover requests are scored live.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import scipy.sparse as sp

from recsys.precompute import PreRanked

if TYPE_CHECKING:
    from serving.scorer import Scorer
    from serving.state import ServingState

log = logging.getLogger("serving.picklists")

# a bought product this similar (cosine) to a pick is named as its reason
REASON_MIN_SIMILARITY = 0.1


def reason_parts(scorer: Scorer, bought: dict[int, float], rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each product in ``rows``: how many times the member bought it (0: never; at least 1
    when bought), and for the others the bought product most similar to it when the cosine is at
    least :data:`REASON_MIN_SIMILARITY` (-1: none). ``bought`` maps product -> occasions, in the
    order ties are broken (the first most similar bought product wins)."""
    return _reason_parts(
        scorer, np.fromiter(bought.keys(), dtype=np.int64, count=len(bought)),
        np.fromiter(bought.values(), dtype=np.float64, count=len(bought)), rows,
    )


def _reason_parts(
    scorer: Scorer, bought_rows: np.ndarray, counts: np.ndarray, rows: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    rows = np.asarray(rows, dtype=np.int64)
    times = np.zeros(len(rows), dtype=np.int32)
    anchors = np.full(len(rows), -1, dtype=np.int32)
    if not len(bought_rows) or not len(rows):
        return times, anchors
    order = np.argsort(bought_rows, kind="stable")
    pos = np.minimum(np.searchsorted(bought_rows[order], rows), len(order) - 1)
    hit = bought_rows[order[pos]] == rows
    times[hit] = np.maximum(counts[order[pos[hit]]].astype(np.int64), 1)
    rest = np.flatnonzero(~hit)
    if len(rest):
        sims = scorer.item_similarity(rows[rest], bought_rows)
        best = np.argmax(sims, axis=1)
        ok = sims[np.arange(len(rest)), best] >= REASON_MIN_SIMILARITY
        anchors[rest[ok]] = bought_rows[best[ok]]
    return times, anchors


# members ranked again per scorer call after live purchases
RERANK_BATCH = 256
# ... and per hold of the state's lock by the background thread (live scoring waits for the lock)
RERANK_CHUNK = 32


@dataclass
class Answer:
    """Picks taken from a stored list: products, scores and their reasons' parts; ``re_ranked``
    when the list was ranked again after the member's live purchases."""

    rows: np.ndarray
    scores: np.ndarray
    times: np.ndarray
    anchors: np.ndarray
    re_ranked: bool = False


@dataclass(frozen=True)
class MemberLists:
    """One member's lists ranked again after live purchases: per mode, the entries (no padding)
    and whether the list holds every product the model can score for them."""

    rows: dict[str, np.ndarray]
    scores: dict[str, np.ndarray]
    times: dict[str, np.ndarray]
    anchors: dict[str, np.ndarray]
    complete: dict[str, bool]


@dataclass
class PickLists:
    """The pre-ranked lists of the loaded bundle, with each entry's reason (see the module
    docstring). Arrays are ``(members, n)`` per mode; ``length`` counts each row's entries."""

    n: int
    rows: dict[str, np.ndarray]
    scores: dict[str, np.ndarray]
    length: dict[str, np.ndarray]
    complete: dict[str, np.ndarray]
    times: dict[str, np.ndarray]
    anchors: dict[str, np.ndarray]
    valid: np.ndarray  # False once a member has bought something live: the bundle's list is stale
    seconds: float = 0.0
    # members whose lists were ranked again after live purchases (new members included)
    re_ranked: dict[int, MemberLists] = field(default_factory=dict)
    rerank_seconds: float = 0.0
    reranks: int = 0
    # members waiting to be ranked again (insertion-ordered), and the thread ranking them
    pending: dict[int, None] = field(default_factory=dict)
    _pending_lock: threading.Lock = field(default_factory=threading.Lock)
    _worker: threading.Thread | None = None
    _idle: threading.Event = field(default_factory=threading.Event)

    @property
    def modes(self) -> tuple[str, ...]:
        return tuple(self.rows)

    def invalidate(self, member: int) -> None:
        """``member`` bought something: no list answers for them until :meth:`rerank`."""
        if 0 <= member < len(self.valid):
            self.valid[member] = False
        self.re_ranked.pop(member, None)

    def answer(self, member: int, mode: str, k: int, allowed: np.ndarray | None) -> Answer | None:
        """The first ``k`` entries of ``member``'s ``mode`` list that ``allowed`` keeps (None:
        keep all), or None when live scoring must answer (see the module docstring)."""
        if mode not in self.rows:
            return None
        own = self.re_ranked.get(member)  # one read: a concurrent rerank replaces the whole entry
        if own is not None:
            rows, scores, times, anchors = own.rows[mode], own.scores[mode], own.times[mode], own.anchors[mode]
            length, complete = len(rows), own.complete[mode]
        elif 0 <= member < len(self.valid) and self.valid[member]:
            length = int(self.length[mode][member])
            rows, scores = self.rows[mode][member, :length], self.scores[mode][member]
            times, anchors = self.times[mode][member], self.anchors[mode][member]
            complete = bool(self.complete[mode][member])
        else:
            return None
        take: slice | np.ndarray
        if allowed is None:
            take = slice(0, min(k, length))
            found = take.stop
        else:
            take = np.flatnonzero(allowed[rows])[:k]
            found = len(take)
        if found < k and not complete:
            return None  # the head of a truncated list cannot say what comes after it
        return Answer(rows[take], scores[take], times[take], anchors[take], own is not None)

    def schedule(self, state: ServingState, members: list[int]) -> None:
        """Rank ``members``' lists again in the background (called under the state's lock, once
        their purchases are applied); a thread is started when none is running."""
        if not members:
            return
        with self._pending_lock:
            self.pending.update(dict.fromkeys(members))
            self._idle.clear()
            if self._worker is None:
                self._worker = threading.Thread(target=self._drain, args=(state,), name="picklists-rerank",
                                                daemon=True)
                self._worker.start()

    def _drain(self, state: ServingState) -> None:
        while True:
            with self._pending_lock:
                if not self.pending:
                    self._worker = None
                    self._idle.set()
                    return
                chunk = list(self.pending)[:RERANK_CHUNK]
                for member in chunk:
                    del self.pending[member]
            try:
                with state.lock:  # what they bought and their vectors stay put while they are ranked
                    self.rerank(state, chunk)
            except Exception:  # noqa: BLE001 - those members stay scored live (same answers)
                log.exception("ranking %d members' pick lists again failed; they are scored live", len(chunk))

    def settle(self, timeout: float | None = None) -> bool:
        """Wait until every scheduled member is ranked again (for tests and benchmarks)."""
        with self._pending_lock:
            if self._worker is None and not self.pending:
                return True
        return self._idle.wait(timeout)

    def rerank(self, state: ServingState, members: list[int]) -> None:
        """Rank ``members``' lists again from what the scorer and ``state`` know now (after their
        live purchases were applied): the same call live scoring makes, without a product filter,
        for the list length ``n``; called under the state's lock. A member scheduled again since
        (a newer purchase) is ranked again once more."""
        if not members:
            return
        t0 = time.perf_counter()
        scorer = state.scorer
        for start in range(0, len(members), RERANK_BATCH):
            chunk = members[start : start + RERANK_BATCH]
            bought = [state.bought(m) for m in chunk]
            keys = [np.fromiter(b.keys(), dtype=np.int64, count=len(b)) for b in bought]
            ranked = {
                mode: scorer.picks(np.asarray(chunk, dtype=np.int64), self.n, None,
                                   keys if mode == "discover" else [np.empty(0, np.int64)] * len(chunk))
                for mode in self.modes
            }
            for j, member in enumerate(chunk):
                rows: dict[str, np.ndarray] = {}
                scores: dict[str, np.ndarray] = {}
                for mode, (idx, sc) in ranked.items():
                    ok = idx[j] >= 0
                    rows[mode] = idx[j][ok].astype(np.int32)
                    scores[mode] = sc[j][ok].astype(np.float32)
                counts = np.fromiter(bought[j].values(), dtype=np.float64, count=len(bought[j]))
                t, a = _reason_parts(scorer, keys[j], counts, np.concatenate([rows[m] for m in self.modes]))
                times: dict[str, np.ndarray] = {}
                anchors: dict[str, np.ndarray] = {}
                at = 0
                for mode in self.modes:
                    times[mode], anchors[mode] = t[at : at + len(rows[mode])], a[at : at + len(rows[mode])]
                    at += len(rows[mode])
                self.re_ranked[member] = MemberLists(rows, scores, times, anchors,
                                                     {m: len(rows[m]) < self.n for m in self.modes})
        self.reranks += len(members)
        self.rerank_seconds += time.perf_counter() - t0

    def describe(self) -> dict[str, object]:
        return {
            "n": self.n, "modes": list(self.modes), "members": int(len(self.valid)),
            "invalidated": int((~self.valid).sum()),
            "re_ranked": len(self.re_ranked), "reranks": self.reranks, "pending_rerank": len(self.pending),
            "rerank_seconds": round(self.rerank_seconds, 3),
            "complete_share": {m: round(float(self.complete[m].mean()), 4) if len(self.valid) else 1.0
                               for m in self.modes},
            "build_seconds": round(self.seconds, 2),
        }


def _same_products(a: sp.spmatrix, b: sp.spmatrix) -> bool:
    a, b = sp.csr_matrix(a), sp.csr_matrix(b)
    return a.shape == b.shape and ((a != 0) != (b != 0)).nnz == 0


def build_pick_lists(state: ServingState, lists: PreRanked) -> PickLists:
    """Make the bundle's lists servable for ``state`` (before any live event is applied)."""
    t0 = time.perf_counter()
    n_members = lists.n_members
    rows = {m: lists.indices[m] for m in lists.modes}
    if "discover" in rows and not _same_products(state.bundle.model.history, state.purchase_counts):
        log.warning("pre-ranked discover lists dropped: the model's history and the bundle's purchase counts "
                    "name different products; discover picks are scored live")
        rows.pop("discover")
    modes = tuple(rows)
    length = {m: (rows[m] >= 0).sum(axis=1).astype(np.int32) for m in modes}
    times = {m: np.zeros(rows[m].shape, dtype=np.int32) for m in modes}
    anchors = {m: np.full(rows[m].shape, -1, dtype=np.int32) for m in modes}
    # what each member bought, as ServingState.bought lists it (no live purchase is applied yet)
    counts = sp.csr_matrix(state.purchase_counts)
    indptr, indices, data = counts.indptr, counts.indices.astype(np.int64), counts.data
    for member in range(n_members):
        lo, hi = indptr[member], indptr[member + 1]
        if lo == hi:
            continue
        bought_rows, bought_counts = indices[lo:hi], data[lo:hi]
        if (bought_counts <= 0).any():
            keep = bought_counts > 0
            bought_rows, bought_counts = bought_rows[keep], bought_counts[keep]
        parts = [rows[m][member, : length[m][member]] for m in modes]
        # one similarity product for both modes
        t, a = _reason_parts(state.scorer, bought_rows, bought_counts, np.concatenate(parts))
        start = 0
        for m, part in zip(modes, parts, strict=True):
            times[m][member, : len(part)] = t[start : start + len(part)]
            anchors[m][member, : len(part)] = a[start : start + len(part)]
            start += len(part)
    out = PickLists(
        n=lists.n, rows=rows, scores={m: lists.scores[m] for m in modes}, length=length,
        complete={m: length[m] < lists.n for m in modes}, times=times, anchors=anchors,
        valid=np.ones(n_members, dtype=bool),
    )
    out.seconds = time.perf_counter() - t0
    return out
