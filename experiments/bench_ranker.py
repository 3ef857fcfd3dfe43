"""The hybrid's picks ranker scored by LightGBM itself vs its trees compiled (lleaves), in one run.

Pre-ranking every member's lists scores ~110 candidates per member with the ranker: ~110M pairs at a
million members, where a py-spy sample of ``recsys train`` spent 45 % of the pre-rank in LightGBM's
``predict``. Two cases:

- ``trees``: a ranker of the hybrid's default shape (``n_estimators`` x ``num_leaves``) fitted on
  random pair features, both scorers on ``--rows`` rows, one thread each (as the model scores);
- ``pre-rank`` (with ``--bundle``): a trained hybrid bundle's lists for its first ``--members``
  members, batch by batch as :func:`recsys.precompute.pre_rank` ranks them, plain and with the
  ranker compiled (whatever the size), with the lists compared.

    .venv/bin/python experiments/bench_ranker.py
    .venv/bin/python experiments/bench_ranker.py --bundle /tmp/scale/m1000000/bundle --members 50000

Prints the seconds and writes them to ``experiments/results/ranker.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from recsys.models.hybrid.params import HybridParams  # noqa: E402
from recsys.models.hybrid.ranker import PAIR_FEATURES, fit_ranker  # noqa: E402


def trees_case(rows: int) -> dict[str, float | int | str]:
    import lightgbm

    rng = np.random.default_rng(0)
    p = HybridParams()
    X = rng.normal(size=(200_000, len(PAIR_FEATURES))).astype(np.float32)
    y = (X[:, 0] + X[:, 1] * X[:, 2] + rng.normal(size=len(X)) > 1).astype(int)
    ranker = fit_ranker(lightgbm, X, y, p)
    T = rng.normal(size=(rows, len(PAIR_FEATURES))).astype(np.float32)
    t0 = time.perf_counter()
    plain = ranker.predict_proba(T)
    plain_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    with ranker.compiled():
        compile_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        fast = ranker.predict_proba(T)
        compiled_s = time.perf_counter() - t0
    return {"case": "trees", "trees": p.n_estimators, "leaves": p.num_leaves, "rows": rows,
            "lightgbm_s": round(plain_s, 3), "compiled_s": round(compiled_s, 3), "compile_s": round(compile_s, 2),
            "speedup": round(plain_s / compiled_s, 2), "max_abs_diff": float(np.max(np.abs(plain - fast)))}


def pre_rank_case(bundle_dir: Path, members: int, batch: int) -> dict[str, float | int | str]:
    from recsys.bundle import load_bundle
    from recsys.precompute import DEFAULT_N, rank_members, same_list

    model = load_bundle(bundle_dir).model
    members = min(members, model.n_members)
    starts = range(0, members, batch)

    def rank_all() -> tuple[float, dict[str, list[tuple[np.ndarray, np.ndarray]]]]:
        out: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {}
        t0 = time.perf_counter()
        for lo in starts:
            for mode, lists in rank_members(model, np.arange(lo, min(lo + batch, members)), DEFAULT_N).items():
                out.setdefault(mode, []).append(lists)
        return time.perf_counter() - t0, out

    rank_members(model, np.arange(min(batch, members)), DEFAULT_N)  # the lazy index, before timing
    plain_s, plain = rank_all()
    t0 = time.perf_counter()
    with model.ranker.compiled():  # whatever the size (bulk_scoring compiles from COMPILE_MIN_PAIRS)
        compile_s = time.perf_counter() - t0
        compiled_s, fast = rank_all()
    differ = sum(not same_list(a_i[j], a_s[j], b_i[j], b_s[j])
                 for mode in plain for (a_i, a_s), (b_i, b_s) in zip(plain[mode], fast[mode], strict=True)
                 for j in range(len(a_i)))
    return {"case": "pre-rank", "bundle": str(bundle_dir), "members": members, "batch": batch,
            "lightgbm_s": round(plain_s, 2), "compiled_s": round(compiled_s, 2), "compile_s": round(compile_s, 2),
            "speedup": round(plain_s / compiled_s, 2), "lists_that_differ": int(differ)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--bundle", type=Path, help="a trained hybrid bundle folder (the pre-rank case)")
    ap.add_argument("--members", type=int, default=50_000)
    ap.add_argument("--batch", type=int, default=1024)
    ap.add_argument("--out", type=Path, default=REPO / "experiments" / "results" / "ranker.json")
    args = ap.parse_args()
    rows = [trees_case(args.rows)]
    if args.bundle is not None:
        rows.append(pre_rank_case(args.bundle, args.members, args.batch))
    load = os.getloadavg()
    for row in rows:
        row["load"] = [round(x, 2) for x in load]
        print(f"  {row['case']:<9} LightGBM {row['lightgbm_s']:8.2f} s   compiled {row['compiled_s']:8.2f} s "
              f"(+{row['compile_s']:.1f} s to compile)   {row['speedup']:.1f}x")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
