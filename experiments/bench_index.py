"""Benchmark the member index in process: build it with the bundle, then recall and latency.

On bench_serving's synthetic bundle (an ALS model over purchases drawn by the synthetic retailer
generator; ``--members``, cached in the work folder), ``recsys bundle index`` builds the member
index once (timed, peak memory of its process); then, in this process, the index is memory-mapped
(``recsys.ann.load_index``) and searched the way the server searches it (``serving.index.
VectorIndex``: IVF at its calibrated nprobe, exact where it routes), one query at a time on one
thread, for audiences of several sizes with and without a random 20 % member filter (a tag),
queried by product vectors of products with sales that the calibration did not choose from
(another seed). Recall against exact search counts a member tied with the k-th exact score as
found (``recsys.ann.recall_vs_exact``). Figures go to ``experiments/results/index.json``.

Usage (from the repository root)::

    .venv/bin/python experiments/bench_index.py --members 1000000
    .venv/bin/python experiments/bench_index.py --members 10000000
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_serving import index_bundle, synthetic_bundle  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--members", type=int, default=1_000_000)
    ap.add_argument("--products", type=int, default=20_000)
    ap.add_argument("--factors", type=int, default=64)
    ap.add_argument("--queries", type=int, default=100)
    ap.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "recsys-bench-serving")
    ap.add_argument("--json", type=Path, default=REPO / "experiments" / "results" / "index.json")
    args = ap.parse_args(argv)

    from recsys.ann import IndexSettings, load_index
    from recsys.models.base import Recommender
    from serving.index import VectorIndex, recall_at_k

    workdir = args.workdir.resolve()
    (workdir / "logs").mkdir(parents=True, exist_ok=True)
    bundle = synthetic_bundle(workdir / f"synth-als-{args.members}x{args.products}", args.members, args.products,
                              args.factors, vectors="als")
    build = index_bundle(bundle, workdir, args)
    meta = json.loads((bundle / "bundle.json").read_text())["indexes"]["members"]
    model = Recommender.load(bundle / "model")
    users, items = model.user_factors, model.item_factors
    t0 = time.perf_counter()
    ann = load_index(bundle / meta["file"], meta)
    mapped_s = time.perf_counter() - t0
    settings = IndexSettings()
    index = VectorIndex(users, exact_max=settings.exact_max_members, settings=settings, prebuilt=ann)
    exact = VectorIndex(users, exact_max=len(users), settings=settings)
    rng = np.random.default_rng(12345)
    sold = np.flatnonzero(np.diff(model.history.tocsc().indptr) > 0)
    queries = items[rng.choice(sold, size=min(args.queries, len(sold)), replace=False)]
    segment = rng.random(len(users)) < 0.2
    rows = []
    for k, mask, label in ((10, None, "-"), (1000, None, "-"), (10_000, None, "-"), (1000, segment, "20 %"),
                           (10_000, segment, "20 %")):
        took = []
        for q in queries:
            t0 = time.perf_counter()
            index.search(q[None, :], k, mask)
            took.append(time.perf_counter() - t0)
        exact_took = []
        for q in queries[:20]:
            t0 = time.perf_counter()
            exact.search(q[None, :], k, mask)
            exact_took.append(time.perf_counter() - t0)
        row = {"k": k, "filter": label, "route": "exact" if index.exact_for(k, mask) else "ivf",
               "nprobe": index.nprobe(k, mask), "recall": round(recall_at_k(index, queries, k, mask), 4),
               "p50_ms": round(1e3 * float(np.median(took)), 2), "p99_ms": round(1e3 * float(np.percentile(took, 99)), 2),
               "exact_p50_ms": round(1e3 * float(np.median(exact_took)), 2)}
        rows.append(row)
        print(row, flush=True)
    out = {"members": args.members, "products": args.products, "build": build, "mapped_s": round(mapped_s, 4),
           "index": {k: v for k, v in meta.items() if k != "file"}, "searches": rows,
           "note": "one query at a time, one thread, in process (no HTTP); load average at the time in 'load'",
           "load": list(__import__("os").getloadavg())}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(out, indent=1, default=str))
    print(f"index over {args.members:,} members: built in {build['wall_s']:.0f} s (peak "
          f"{build['peak_rss_bytes'] / 2**30:.2f} GB), mapped in {mapped_s * 1e3:.0f} ms -> {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
