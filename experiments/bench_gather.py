"""The hybrid's pair lookups at a million members, each against what it replaced, in one run:
``gather`` (values of a sparse members x products matrix at (member, product) pairs, SciPy's element
indexing vs a global sorted-keys search) and ``knn_affinity`` for many members' pairs (every
member's row of ``counts_csc @ sim`` vs the members' own rows of ``counts``, block by block).

Every feature of the picks ranker and the audience models reads such pairs: at a million members
the purchase matrix holds ~40M entries, and a binary search over them in random order (the audience
models' sampled pairs) spends most of its time in cache misses, and building the keys costs a
pass over every entry per call.

    .venv/bin/python experiments/bench_gather.py                 # 1M x 100k, 40M entries
    .venv/bin/python experiments/bench_gather.py --members 100000

Prints the seconds per call (best of ``--repeats``; the kNN case once) and writes them to
``experiments/results/gather.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import scipy.sparse as sp

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from recsys.models.hybrid import state  # noqa: E402


def keys_gather(m: sp.csr_matrix, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """The implementation before (code 8722aa2): one sorted key per stored entry, searched."""
    uniq, inv = np.unique(rows, return_inverse=True)
    if len(uniq) * 8 < m.shape[0]:
        m, rows = m[uniq], inv
    n = m.shape[1]
    keys = np.repeat(np.arange(m.shape[0], dtype=np.int64), np.diff(m.indptr)) * n + m.indices
    q = rows.astype(np.int64) * n + cols.astype(np.int64)
    pos = np.minimum(np.searchsorted(keys, q), len(keys) - 1)
    return np.where(keys[pos] == q, m.data[pos], 0).astype(np.float32)


def best_of(repeats: int, fn, *args) -> tuple[float, np.ndarray]:  # type: ignore[no-untyped-def]
    times, out = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn(*args)
        times.append(time.perf_counter() - t0)
    return min(times), out  # type: ignore[return-value]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--members", type=int, default=1_000_000)
    ap.add_argument("--products", type=int, default=100_000)
    ap.add_argument("--per-member", type=int, default=40, help="stored entries per member")
    ap.add_argument("--pairs", type=int, default=5_000_000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--knn-members", type=int, default=500_000, help="members with pairs in the kNN case")
    ap.add_argument("--knn-products", type=int, default=600, help="products with pairs in the kNN case")
    ap.add_argument("--neighbours", type=int, default=100)
    ap.add_argument("--out", type=Path, default=REPO / "experiments" / "results" / "gather.json")
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    rows = np.repeat(np.arange(args.members), args.per_member)
    cols = rng.integers(0, args.products, len(rows))
    m = sp.csr_matrix((np.ones(len(rows), np.float32), (rows, cols)), shape=(args.members, args.products))
    m.sum_duplicates()
    # half the pairs stored entries, half anything
    coo_pick = rng.integers(0, m.nnz, args.pairs // 2)
    row_of = np.repeat(np.arange(args.members), np.diff(m.indptr))
    u = np.r_[row_of[coo_pick], rng.integers(0, args.members, args.pairs - len(coo_pick))]
    i = np.r_[m.indices[coo_pick], rng.integers(0, args.products, args.pairs - len(coo_pick))]
    shuffle = rng.permutation(args.pairs)
    cases = {"random order (audience examples)": (u[shuffle], i[shuffle])}
    key = np.lexsort((i, u))
    cases["member order (ranker candidates)"] = (u[key], i[key])
    results = []
    print(f"{args.members:,} x {args.products:,}, {m.nnz:,} entries; {args.pairs:,} pairs; best of {args.repeats}")
    for name, (qu, qi) in cases.items():
        new_s, a = best_of(args.repeats, state.gather, m, qu, qi)
        old_s, b = best_of(args.repeats, keys_gather, m, qu, qi)
        assert np.array_equal(a, b)
        row = {"case": name, "members": args.members, "products": args.products, "entries": int(m.nnz),
               "pairs": args.pairs, "scipy_indexing_s": round(new_s, 3), "sorted_keys_s": round(old_s, 3),
               "speedup": round(old_s / new_s, 2)}
        results.append(row)
        print(f"  {name:<36} SciPy indexing {new_s:6.2f} s   sorted keys (before) {old_s:6.2f} s   "
              f"({row['speedup']:.1f}x)")
    # kNN affinities of sampled pairs (the audience models' examples): knn_members members, each
    # paired with ~10 of knn_products products
    import types

    sim_rows = rng.integers(0, args.products, args.products * args.neighbours)
    sim_cols = np.repeat(np.arange(args.products), args.neighbours)
    sim = sp.csc_matrix((rng.random(len(sim_rows)).astype(np.float32), (sim_rows, sim_cols)),
                        shape=(args.products, args.products))
    s = types.SimpleNamespace(counts=m, counts_csc=m.tocsc(), n_members=args.members, csc=lambda name: sim)
    ku = np.repeat(rng.choice(args.members, args.knn_members, replace=False), 10)
    ki = rng.choice(args.products, args.knn_products, replace=False)[rng.integers(0, args.knn_products, len(ku))]
    timed = {}
    for path in ("every member", "own rows"):  # forced either way
        t0 = time.perf_counter()
        timed[path] = (state.knn_affinity(s, ku, ki, product=path), time.perf_counter() - t0)
    (a, full_s), (b, own_s) = timed["every member"], timed["own rows"]
    assert np.array_equal(a, b)
    row = {"case": "knn_affinity of sampled pairs", "members": args.members, "products": args.products,
           "entries": int(m.nnz), "neighbours": args.neighbours, "pair_members": args.knn_members,
           "pair_products": args.knn_products, "pairs": int(len(ku)), "full_product_s": round(full_s, 3),
           "own_rows_s": round(own_s, 3), "speedup": round(own_s / full_s, 2)}
    results.append(row)
    print(f"  knn_affinity, {len(ku):,} pairs of {args.knn_members:,} members x {args.knn_products:,} products: "
          f"every member's product {full_s:6.2f} s   their own rows (before) {own_s:6.2f} s   ({row['speedup']:.1f}x)")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
