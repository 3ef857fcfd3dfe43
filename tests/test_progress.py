"""Training progress: timestamped log lines with counts, rate and time left when the output is a
file; bars on a terminal (issue 12, operator experience)."""

from __future__ import annotations

import io
import re
import threading

from rich.console import Console

from training.progress import Reporter

STAMP = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d "


def test_a_log_gets_timestamped_lines_with_counts_and_time_left() -> None:
    out = io.StringIO()
    with Reporter(Console(file=out, width=200), every_s=3600) as progress:
        assert not progress.live  # a file is not a terminal
        with progress.stage("ranking members", total=1000, unit="members") as update:
            for done in range(0, 1001, 50):
                update(done)
        with progress.stage("loading the split"):
            pass
    lines = out.getvalue().splitlines()
    assert all(re.match(STAMP, line) for line in lines), lines
    text = [line[20:] for line in lines]
    assert text[0] == "ranking members (1,000 members) ..."
    # one line per tenth of the work (every_s is an hour here), each with the rate and time left
    counts = [t for t in text if t.startswith("ranking members: ") and "/" in t]
    assert [int(re.search(r"\((\d+) %\)", t).group(1)) for t in counts] == [10, 20, 30, 40, 50, 60, 70, 80, 90]
    assert all("members/s" in t and "left" in t for t in counts)
    assert re.fullmatch(r"ranking members: 1,000 members done in \d+\.\d s", text[len(counts) + 1])
    assert text[-2] == "loading the split ..." and re.fullmatch(r"loading the split: done in \d+\.\d s", text[-1])


def test_updates_from_several_threads_and_a_failed_stage() -> None:
    out = io.StringIO()
    with Reporter(Console(file=out, width=200), every_s=0) as progress:
        with progress.stage("evaluating audiences", unit="products") as update:
            threads = [threading.Thread(target=update, args=(i, 4)) for i in range(1, 4)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
        try:
            with progress.stage("fitting"):
                raise RuntimeError("boom")
        except RuntimeError:
            pass
    text = out.getvalue()
    assert re.search(r"evaluating audiences: [123] products done in \d+\.\d s", text), text
    assert re.search(r"fitting: failed after \d+\.\d s", text)


def test_a_terminal_gets_bars() -> None:
    out = io.StringIO()
    console = Console(file=out, force_terminal=True, width=120)
    with Reporter(console) as progress:
        assert progress.live
        with progress.stage("ranking members", total=10, unit="members") as update:
            update(10)
    assert "ranking members" in out.getvalue() and "10/10" in out.getvalue()
