"""Where a server's load of a bundle goes: ``serving.state.build_state`` in process, timed and profiled.

Loads a bundle the way a server starts (and reloads) it -- ``load_bundle`` (checksums, tables,
id maps, the model's arrays, the indexes), then the rest of ``build_state`` (scorer, tag index,
popularity orders, ...) -- ``--repeats`` times, and prints the wall time of each and, with
``--profile``, the functions that took the most time under cProfile (cumulative and own time).
The bundle is bench_serving's synthetic one (``--members``, cached in the work folder, built with
its indexes by ``recsys bundle index`` the first time) or any bundle folder (``--bundle``).
The HTTP figures (time to ready after start, a reload) are bench_serving's; this is for finding
what to make faster.

Usage (from the repository root)::

    .venv/bin/python experiments/bench_load.py --members 1000000 --profile
    .venv/bin/python experiments/bench_load.py --bundle path/to/bundle --repeats 3
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import pstats
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bundle", type=Path, help="a bundle folder (default: bench_serving's synthetic bundle)")
    ap.add_argument("--members", type=int, default=1_000_000)
    ap.add_argument("--products", type=int, default=20_000)
    ap.add_argument("--factors", type=int, default=64)
    ap.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "recsys-bench-serving")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--profile", action="store_true", help="cProfile the last repeat; print the top functions")
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--json", type=Path, help="write the figures to this JSON file")
    args = ap.parse_args(argv)

    import numpy as np  # noqa: F401  (imported before timing, as a server has)

    from recsys.bundle import load_bundle
    from serving.settings import ServingSettings
    from serving.state import build_state

    if args.bundle is not None:
        bundle = args.bundle.resolve()
    else:
        from bench_serving import index_bundle, synthetic_bundle

        workdir = args.workdir.resolve()
        (workdir / "logs").mkdir(parents=True, exist_ok=True)
        bundle = synthetic_bundle(workdir / f"synth-als-{args.members}x{args.products}", args.members,
                                  args.products, args.factors, vectors="als")
        index_bundle(bundle, workdir, args)
    events = Path(tempfile.mkdtemp(prefix="recsys-bench-load-"))
    settings = ServingSettings(bundle=bundle, events_dir=events)
    out: dict[str, object] = {"bundle": str(bundle), "runs": []}
    profile_text = ""
    try:
        for i in range(args.repeats):
            prof = cProfile.Profile() if args.profile and i == args.repeats - 1 else None
            t0 = time.perf_counter()
            loaded = load_bundle(bundle)
            load_s = time.perf_counter() - t0
            del loaded
            if prof is not None:
                prof.enable()
            t1 = time.perf_counter()
            state = build_state(settings, bundle)
            state_s = time.perf_counter() - t1
            if prof is not None:
                prof.disable()
            del state
            run = {"load_bundle_s": round(load_s, 3), "build_state_s": round(state_s, 3)}
            out["runs"].append(run)  # type: ignore[attr-defined]
            print(f"repeat {i + 1}: load_bundle {load_s:.2f} s, build_state (load_bundle included) {state_s:.2f} s",
                  flush=True)
            if prof is not None:
                for key in ("cumulative", "tottime"):
                    buf = io.StringIO()
                    pstats.Stats(prof, stream=buf).strip_dirs().sort_stats(key).print_stats(args.top)
                    profile_text += f"--- build_state by {key} time ---\n{buf.getvalue()}"
                print(profile_text)
    finally:
        import shutil

        shutil.rmtree(events, ignore_errors=True)
    if args.json:
        out["profile"] = profile_text
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
