"""A registry model on the server's disk: nothing left in the temporary folder by starts,
reloads, refused versions or shutdown; with a cache folder, one copy per version, reused."""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import auth, serving_bundle
from fastapi.testclient import TestClient

from recsys.bundle import save_bundle
from serving.app import create_app
from training.tracking import Tracker, log_bundle_model

pytestmark = [  # MLflow against SQLAlchemy 2.1 and pandas 3: noise from inside MLflow
    pytest.mark.filterwarnings("ignore:The ``noload`` loader strategy is deprecated"),
    pytest.mark.filterwarnings("ignore:Operation with range is deprecated"),
]
MODEL = "recsys-serving-test"


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*"))


@pytest.fixture
def registry(store: str, tmp_path: Path) -> str:
    """Two registered versions of the serving test bundle (v1 top_frequency = champion, v2 ALS)."""
    from mlflow import MlflowClient

    for name in ("top_frequency", "als"):
        path = save_bundle(tmp_path / f"bundle-{name}", serving_bundle(name))
        with Tracker("serving", name, tracking_uri=store) as run:
            log_bundle_model(run, path, MODEL, input_example=False)
    MlflowClient(tracking_uri=store).set_registered_model_alias(MODEL, "champion", "1")
    return store


@pytest.fixture
def private_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The process's temporary folder, pointed at an empty folder of this test."""
    folder = tmp_path / "tmp"
    folder.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    return folder


def test_starts_and_reloads_leave_nothing_in_the_temporary_folder(
    registry: str, private_tmp: Path, serving_settings: Callable[..., Any]
) -> None:
    # every start and registry reload left a recsys-bundle-* folder (the whole bundle) behind
    settings = serving_settings(bundle=None, registered_model=MODEL, mlflow_tracking_uri=registry)
    with TestClient(create_app(settings)) as c:
        assert c.get("/v1/model", headers=auth("admin")).json()["source"] == f"models:/{MODEL}/1"
        for alias in ("2", "champion", "2"):
            r = c.post("/v1/admin/reload", json={"alias": alias}, headers=auth("admin"))
            assert r.status_code == 200, r.text
            assert _files(private_tmp) == []  # the model is in memory; its download is gone
        assert c.get("/v1/model", headers=auth("admin")).json()["model"] == "als"
        r = c.post("/v1/admin/reload", json={"alias": "9"}, headers=auth("admin"))
        assert r.status_code == 422 and "no version 9" in r.json()["detail"]
        assert c.get("/v1/members/m0/picks", headers=auth("app")).status_code == 200
    assert _files(private_tmp) == []


def test_a_cache_folder_keeps_one_copy_per_version_and_reuses_it(
    registry: str, private_tmp: Path, tmp_path: Path, serving_settings: Callable[..., Any]
) -> None:
    cache = tmp_path / "cache"
    settings = serving_settings(bundle=None, registered_model=MODEL, mlflow_tracking_uri=registry,
                                bundle_cache_dir=cache, bundle_cache_keep=1)
    with TestClient(create_app(settings)) as c:
        assert sorted(p.name for p in cache.iterdir()) == [f"{MODEL}-v1"]
        stamp = (cache / f"{MODEL}-v1" / "bundle.json").stat().st_mtime_ns
        assert c.post("/v1/admin/reload", json={"alias": "1"}, headers=auth("admin")).status_code == 200
        assert (cache / f"{MODEL}-v1" / "bundle.json").stat().st_mtime_ns == stamp  # reused, not fetched again
        assert c.post("/v1/admin/reload", json={"alias": "2"}, headers=auth("admin")).status_code == 200
        assert sorted(p.name for p in cache.iterdir()) == [f"{MODEL}-v2"]  # keep=1: v1 pruned
        # a damaged cached copy is refused, removed, and downloaded again by the next reload
        arrays = cache / f"{MODEL}-v2" / "model" / "arrays" / "user_factors.npy"
        arrays.write_bytes(arrays.read_bytes()[:100])
        r = c.post("/v1/admin/reload", json={"alias": "2"}, headers=auth("admin"))
        assert r.status_code == 422 and "model/arrays/user_factors.npy" in r.json()["detail"]
        assert not (cache / f"{MODEL}-v2").exists()
        assert c.post("/v1/admin/reload", json={"alias": "2"}, headers=auth("admin")).status_code == 200
    assert _files(private_tmp) == []
