"""Progress of a training run, stage by stage: a bar with counts, elapsed time and the time left
on a terminal; timestamped log lines when the output is a file (CI, a scheduler, ``nohup``).

A run used to show a spinner with the stage's name on a terminal and nothing at all in a log
until the final table -- over 15 minutes at 500k members. Now each stage says when it starts and
how long it took, and the countable ones (members ranked, products evaluated) report their count
as they go: on a terminal as a live bar, in a log as a line at least every ``every_s`` seconds and
at every tenth of the work, each with the rate and an estimate of the time left.

Examples
--------
>>> from rich.console import Console
>>> with Reporter(Console(stderr=True)) as progress:  # doctest: +SKIP
...     with progress.stage("ranking members", total=1000, unit="members") as update:
...         for done in range(0, 1001, 100):
...             update(done)
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from types import TracebackType
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

Update = Callable[..., None]


def _duration(seconds: float) -> str:
    seconds = max(seconds, 0.0)
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(int(round(seconds)), 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


class Reporter:
    """Stages of a run (see the module docstring); a context manager around the run.

    ``live``: draw bars (default: when the console is a terminal); otherwise log lines.
    """

    def __init__(self, console: Console, *, live: bool | None = None, every_s: float = 30.0):
        self.console = console
        self.live = console.is_terminal if live is None else live
        self.every_s = every_s
        self._lock = threading.Lock()
        self._bars: Progress | None = None
        if self.live:
            self._bars = Progress(
                SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                TaskProgressColumn(), TextColumn("elapsed"), TimeElapsedColumn(), TextColumn("left"),
                TimeRemainingColumn(), console=console,
            )

    def __enter__(self) -> Reporter:
        if self._bars is not None:
            self._bars.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self._bars is not None:
            self._bars.stop()

    def log(self, message: str) -> None:
        """A timestamped line (above the bars on a terminal)."""
        with self._lock:
            self.console.print(f"{datetime.now():%Y-%m-%d %H:%M:%S} {message}", highlight=False, markup=False,
                               soft_wrap=True)

    @contextmanager
    def stage(self, name: str, total: int | None = None, unit: str = "") -> Iterator[Update]:
        """Report a stage; yields ``update(done, total=None)`` for countable work (callable from
        any thread). Logs the start, the counts as they go and the elapsed time at the end."""
        start = time.monotonic()
        state: dict[str, Any] = {"total": total, "last_log": start, "last_tenth": 0, "done": 0}
        task = None
        what = f"{total:,} {unit}".strip() if total else ""
        self.log(f"{name}{f' ({what})' if what else ''} ...")
        if self._bars is not None:
            task = self._bars.add_task(name, total=total)

        def update(done: int, total: int | None = None) -> None:
            now = time.monotonic()
            with self._lock:
                if total is not None:
                    state["total"] = total
                state["done"] = done
                n = state["total"]
                if self._bars is not None and task is not None:
                    self._bars.update(task, completed=done, total=n)
                    return
                tenth = int(10 * done / n) if n else 0
                if not (now - state["last_log"] >= self.every_s or tenth > state["last_tenth"]) or (n and done >= n):
                    return
                state["last_log"], state["last_tenth"] = now, tenth
            self.log(self._counts(name, done, n, unit, now - start))

        failed = True
        try:
            yield update
            failed = False
        finally:
            elapsed = time.monotonic() - start
            if self._bars is not None and task is not None:
                n = state["total"] or max(state["done"], 1)
                self._bars.update(task, completed=n if not failed else state["done"], total=n,
                                  description=f"{name} ({_duration(elapsed)})")
            done = state["done"]
            count = f"{done:,} {unit} " if unit and done else ""
            self.log(f"{name}: {'failed after' if failed else f'{count}done in'} {_duration(elapsed)}")

    @staticmethod
    def _counts(name: str, done: int, total: int | None, unit: str, elapsed: float) -> str:
        if not total:
            return f"{name}: {done:,} {unit} in {_duration(elapsed)}"
        rate = done / elapsed if elapsed > 0 else 0.0
        left = (total - done) / rate if rate > 0 else float("nan")
        eta = f", about {_duration(left)} left" if left == left else ""
        return (f"{name}: {done:,} / {total:,} {unit} ({100 * done / total:.0f} %), {_duration(elapsed)}, "
                f"{rate:,.0f} {unit}/s{eta}")
