"""Registry bundles on the server's disk: fetched for one load, or cached by version.

A state is built from a bundle entirely in memory (:func:`recsys.bundle.load_bundle` reads every
file; FAISS indexes and tables live in the process), so a downloaded folder is needed only while
it loads. Without a cache folder (``RECSYS_BUNDLE_CACHE_DIR``) each download goes to a temporary
folder that is removed as soon as the load has finished, whether it succeeded or not: nothing is
left behind by starts, reloads or a refused bundle. With a cache folder each version is kept as
``<name>-v<version>`` and reused by the next start or reload of that version (its files are
checked against their SHA-256 on every load); a download lands under a ``.partial-`` name and is
renamed into place only when complete, and only the ``bundle_cache_keep`` most recently used
versions are kept.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

log = logging.getLogger("serving.downloads")

TEMP_PREFIX = "recsys-bundle-"
PARTIAL_PREFIX = ".partial-"
_active: set[Path] = set()  # temporary folders of downloads in progress (see remove_in_progress)


def _download(name: str, version: str, uri: str, into: Path) -> Path:
    from recsys.pyfunc import download_bundle

    return download_bundle(name, version, uri, into)


@contextlib.contextmanager
def fetched(name: str, version: str, uri: str, cache_dir: Path | None = None, keep: int = 3) -> Iterator[Path]:
    """The bundle folder of ``name`` v``version`` for the duration of the ``with`` block.

    Without ``cache_dir`` it is downloaded to a temporary folder removed on exit; with it, the
    cached copy is used (downloaded first when missing) and stays.
    """
    if cache_dir is None:
        tmp = Path(tempfile.mkdtemp(prefix=TEMP_PREFIX))
        _active.add(tmp)
        try:
            yield _download(name, version, uri, tmp)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
            _active.discard(tmp)
        return
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    target = cache_dir / f"{name}-v{version}"
    if not (target / "bundle.json").is_file():
        partial = Path(tempfile.mkdtemp(prefix=PARTIAL_PREFIX, dir=cache_dir))
        _active.add(partial)
        try:
            local = _download(name, version, uri, partial)
            if target.exists():  # an incomplete copy left by a crash
                shutil.rmtree(target)
            os.replace(local, target)
        finally:
            shutil.rmtree(partial, ignore_errors=True)
            _active.discard(partial)
        log.info("cached %s v%s in %s", name, version, target)
    os.utime(target)  # most recently used: kept by the pruning below
    prune(cache_dir, keep, protect=target)
    yield target


def remove_in_progress() -> None:
    """Remove the folders of downloads still running: the server is stopping (a load in a
    worker thread cannot be interrupted, and the process will not wait for it)."""
    for path in list(_active):
        shutil.rmtree(path, ignore_errors=True)
        _active.discard(path)


def evict(path: Path) -> None:
    """Remove a cached copy that failed to load, so the next attempt downloads it again."""
    shutil.rmtree(path, ignore_errors=True)


def prune(cache_dir: Path, keep: int, protect: Path | None = None) -> list[Path]:
    """Remove all but the ``keep`` most recently used cached versions (and stale partial
    downloads); returns what was removed."""
    entries = [p for p in cache_dir.iterdir() if p.is_dir()]
    partial = [p for p in entries if p.name.startswith(PARTIAL_PREFIX)]
    cached = sorted((p for p in entries if not p.name.startswith(PARTIAL_PREFIX) and (p / "bundle.json").exists()),
                    key=lambda p: p.stat().st_mtime, reverse=True)
    removed = []
    for p in cached[keep:]:
        if protect is not None and p.resolve() == protect.resolve():
            continue
        shutil.rmtree(p, ignore_errors=True)
        removed.append(p)
    for p in partial:  # a download that never finished (a crash); a running one is seconds old
        with contextlib.suppress(OSError):
            if p.stat().st_mtime < _now() - 3600:
                shutil.rmtree(p, ignore_errors=True)
                removed.append(p)
    return removed


def _now() -> float:
    import time

    return time.time()
