"""Two implicit ALS fits side by side, as the hybrid's fit runs them (the final state beside a
label window's): each with every core (``num_threads=0``: two OpenMP teams on the same cores)
against each with ``cores / 2`` threads, on a random power-law members x products matrix. The
factors are asserted equal (an ALS half-step solves each row on its own, whatever the thread).

    .venv/bin/python experiments/bench_als_threads.py                       # 200k x 20k, 8M pairs
    .venv/bin/python experiments/bench_als_threads.py --members 1000000 --products 100000 --pairs 35000000

Prints the times and writes them to ``experiments/results/als_threads.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import scipy.sparse as sp
from threadpoolctl import threadpool_limits

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def fit(matrix: sp.csr_matrix, threads: int, iterations: int, seed: int) -> np.ndarray:
    from implicit.cpu.als import AlternatingLeastSquares

    als = AlternatingLeastSquares(factors=64, iterations=iterations, regularization=0.01, random_state=seed,
                                  num_threads=threads)
    als.fit(matrix, show_progress=False)
    return np.asarray(als.item_factors)


def side_by_side(matrices: list[sp.csr_matrix], threads: int, iterations: int) -> tuple[float, list[np.ndarray]]:
    t0 = time.perf_counter()
    with threadpool_limits(1, "blas"), ThreadPoolExecutor(len(matrices)) as pool:
        out = list(pool.map(lambda m: fit(m, threads, iterations, 0), matrices))
    return time.perf_counter() - t0, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--members", type=int, default=200_000)
    ap.add_argument("--products", type=int, default=20_000)
    ap.add_argument("--pairs", type=int, default=8_000_000)
    ap.add_argument("--iterations", type=int, default=5)
    ap.add_argument("--out", type=Path, default=REPO / "experiments" / "results" / "als_threads.json")
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    cores = os.cpu_count() or 1
    # two matrices of the same shape, as the final state's and a label window's history
    matrices = []
    for share in (1.0, 0.8):
        n = int(args.pairs * share)
        products = np.minimum(rng.zipf(1.3, n) - 1, args.products - 1)
        m = sp.csr_matrix((rng.random(n).astype(np.float32) + 0.5,
                           (rng.integers(0, args.members, n), products)), shape=(args.members, args.products))
        m.sum_duplicates()
        matrices.append(m)
    rows = []
    results = {}
    for threads in (0, max(1, cores // 2)):
        seconds, factors = side_by_side(matrices, threads, args.iterations)
        results[threads] = factors
        rows.append({"threads_per_fit": threads or cores, "fits": len(matrices), "seconds": round(seconds, 2)})
        print(f"  two fits side by side, {threads or cores} thread(s) each: {seconds:7.1f} s")
    first, second = results.values()
    assert all(np.array_equal(a, b) for a, b in zip(first, second, strict=True)), "factors differ by thread count"
    out = {"members": args.members, "products": args.products, "pairs": [int(m.nnz) for m in matrices],
           "iterations": args.iterations, "cores": cores, "load": os.getloadavg(), "runs": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2) + "\n", encoding="utf-8")
    print(f"results: {args.out}")


if __name__ == "__main__":
    main()
