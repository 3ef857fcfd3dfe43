"""Start the benchmark app with several workers the way ``recsys serve --workers N`` does
(:func:`serving.cli.run_workers`), for ``experiments/bench_serving.py``.

Usage: ``python -m experiments.bench_serving_launch PORT WORKERS [--no-access-log]``
"""

from __future__ import annotations

import sys

from serving.cli import run_workers

if __name__ == "__main__":
    port, workers = int(sys.argv[1]), int(sys.argv[2])
    run_workers("experiments.bench_serving_app:create_app", host="127.0.0.1", port=port, workers=workers,
                access_log="--no-access-log" not in sys.argv[3:])
