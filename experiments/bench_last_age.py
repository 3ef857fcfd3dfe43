"""``Interactions.last_age`` at a million members: the three-key lexsort it replaced (code 1028ad9)
vs the library's one sorted int64 key per occasion, on random occasions; the same matrix asserted.

    .venv/bin/python experiments/bench_last_age.py                    # 40M occasions, 1M x 100k
    .venv/bin/python experiments/bench_last_age.py --occasions 4000000

Prints both times and writes them to ``experiments/results/last_age.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from datetime import date
from pathlib import Path

import numpy as np
import scipy.sparse as sp

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from recsys.idmap import IdMap  # noqa: E402
from recsys.interactions import Interactions  # noqa: E402


def lexsort_last_age(x: Interactions) -> sp.csr_matrix:
    """The implementation before."""
    coo = sp.coo_matrix((x.age_days, (x.member, x.product)), shape=x.shape)
    order = np.lexsort((coo.data, coo.col, coo.row))
    r, c, d = coo.row[order], coo.col[order], coo.data[order]
    first = np.ones(len(r), dtype=bool)
    first[1:] = (r[1:] != r[:-1]) | (c[1:] != c[:-1])
    return sp.csr_matrix((d[first].astype(np.float32), (r[first], c[first])), shape=x.shape)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--members", type=int, default=1_000_000)
    ap.add_argument("--products", type=int, default=100_000)
    ap.add_argument("--occasions", type=int, default=40_000_000)
    ap.add_argument("--out", type=Path, default=REPO / "experiments" / "results" / "last_age.json")
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    n = args.occasions
    x = Interactions(
        IdMap(np.arange(args.members).astype(str)), IdMap(np.arange(args.products).astype(str)),
        np.sort(rng.integers(0, args.members, n)).astype(np.int32), rng.integers(0, args.products, n).astype(np.int32),
        rng.integers(1, 180, n).astype(np.int32), np.ones(n, np.float32), np.ones(n, np.float32), date(2024, 6, 1))
    t0 = time.perf_counter()
    before = lexsort_last_age(x)
    lexsort_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    now = x.last_age()
    key_s = time.perf_counter() - t0
    assert (before != now).nnz == 0
    row = {"members": args.members, "products": args.products, "occasions": n, "pairs": int(now.nnz),
           "lexsort_s": round(lexsort_s, 2), "int64_key_s": round(key_s, 2), "speedup": round(lexsort_s / key_s, 1),
           "load": [round(v, 2) for v in os.getloadavg()]}
    print(f"last_age of {n:,} occasions: lexsort (before) {lexsort_s:.2f} s, one int64 key {key_s:.2f} s "
          f"({row['speedup']}x)")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(row, indent=1) + "\n")


if __name__ == "__main__":
    main()
