"""Reloading a model: refused bundles leave the old one serving; a good one swaps in whole."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import auth

from recsys.bundle import FORMAT_VERSION


def answers(c: Any) -> tuple[Any, ...]:
    h = auth("admin")
    return (
        c.get("/v1/members/m0/picks?k=4", headers=h).json(),
        c.post("/v1/audiences", json={"product_id": "p0", "size": 4}, headers=h).json(),
        c.get("/v1/model", headers=h).json()["model_version"],
    )


@pytest.fixture
def wrong_version(tmp_path: Path, serving_bundles: dict[str, Path]) -> Path:
    path = tmp_path / "old-format"
    shutil.copytree(serving_bundles["als"], path)
    meta = json.loads((path / "bundle.json").read_text())
    meta["format_version"] = FORMAT_VERSION + 1
    (path / "bundle.json").write_text(json.dumps(meta))
    return path


@pytest.fixture
def broken(tmp_path: Path, serving_bundles: dict[str, Path]) -> Path:
    path = tmp_path / "broken"
    shutil.copytree(serving_bundles["als"], path)
    (path / "model" / "arrays.npz").write_bytes(b"truncated")
    return path


def test_refused_reloads_leave_answers_unchanged(
    client: Any, tmp_path: Path, wrong_version: Path, broken: Path
) -> None:
    before = answers(client)
    cases = [
        (tmp_path / "missing", "no bundle.json"),
        (wrong_version, f"bundle format version {FORMAT_VERSION + 1}"),
        (broken, "incomplete or corrupt"),
    ]
    for path, fragment in cases:
        r = client.post("/v1/admin/reload", json={"bundle": str(path)}, headers=auth("admin"))
        assert r.status_code == 422, r.text
        assert fragment in r.json()["detail"]
        assert answers(client) == before
    metrics = client.get("/metrics").text
    assert 'recsys_reloads_total{outcome="refused"} 3.0' in metrics


def test_reload_swaps_to_the_new_model_and_keeps_live_events(
    client: Any, serving_bundles: dict[str, Path]
) -> None:
    client.post("/v1/events", json=[{"member_id": "fresh", "product_id": "p1"}], headers=auth("admin"))
    old = answers(client)[2]
    r = client.post("/v1/admin/reload", json={"bundle": str(serving_bundles["als"])}, headers=auth("admin"))
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["previous_version"] == old and body["model_version"].startswith("als:run-als")
    info = client.get("/v1/model", headers=auth("app")).json()
    assert info["model"] == "als" and info["scorer"]["kind"] == "vectors"
    assert info["live_members_added"] == 1  # the event was replayed into the new state
    fresh = client.get("/v1/members/fresh/picks?mode=discover", headers=auth("app")).json()
    assert fresh["fallback"] is False and "p1" not in [p["product_id"] for p in fresh["picks"]]
    assert f'version="{body["model_version"]}"' in client.get("/metrics").text


def test_reload_without_a_body_reloads_the_configured_bundle(client: Any) -> None:
    before = answers(client)
    r = client.post("/v1/admin/reload", headers=auth("admin"))
    assert r.status_code == 200 and r.json()["model_version"] == before[2]
    assert answers(client) == before


def test_reload_body_is_validated_and_admin_only(client: Any, serving_bundles: dict[str, Path]) -> None:
    r = client.post("/v1/admin/reload", json={"bundle": "x", "alias": "champion"}, headers=auth("admin"))
    assert r.status_code == 422 and "not both" in r.json()["detail"]
    r = client.post("/v1/admin/reload", json={"bundle": str(serving_bundles["als"])}, headers=auth("merchandiser"))
    assert r.status_code == 403


def test_alias_reload_without_a_registered_model_is_refused(client: Any) -> None:
    before = answers(client)
    r = client.post("/v1/admin/reload", json={"alias": "champion"}, headers=auth("admin"))
    assert r.status_code == 422 and "no registered model configured" in r.json()["detail"]
    assert answers(client) == before


def test_incompatible_bundle_is_refused(client: Any, tmp_path: Path, serving_bundles: dict[str, Path]) -> None:
    import pyarrow.parquet as pq

    path = tmp_path / "short-ids"
    shutil.copytree(serving_bundles["top_frequency"], path)
    table = pq.read_table(path / "members.parquet").slice(0, 3)
    pq.write_table(table, path / "members.parquet")
    before = answers(client)
    r = client.post("/v1/admin/reload", json={"bundle": str(path)}, headers=auth("admin"))
    assert r.status_code == 422 and "do not match the model" in r.json()["detail"]
    assert answers(client) == before


def test_background_start_up_load_becomes_ready(serving_client: Callable[..., Any]) -> None:
    import time

    with serving_client(load_in_background=True) as c:
        deadline = time.monotonic() + 30
        while c.get("/health/ready").status_code != 200:
            assert time.monotonic() < deadline, "the model never became ready"
            time.sleep(0.02)
        assert c.get("/v1/members/m0/picks", headers=auth("app")).status_code == 200
