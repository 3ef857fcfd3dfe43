"""Reloading a model: refused bundles leave the old one serving; a good one swaps in whole."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import auth
from helpers_data import reseal

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
    (path / "model" / "arrays" / "user_factors.npy").write_bytes(b"truncated")
    return path


@pytest.fixture
def client(serving_client: Callable[..., Any], tmp_path: Path, serving_bundles: dict[str, Path]) -> Any:
    """The top_frequency bundle, reloads allowed from the test's folder and the saved bundles'."""
    with serving_client(bundle_roots=[tmp_path, serving_bundles["als"].parent]) as c:
        yield c


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
    reseal(path)
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


# ------------------------------------------------------------------ damaged files (issue 12, item 7)
def _truncate(file: Path) -> None:
    data = file.read_bytes()
    file.write_bytes(data[: len(data) // 2])


def _flip(file: Path) -> None:
    """64 bytes in the middle of the file inverted (the size stays)."""
    data = bytearray(file.read_bytes())
    mid = len(data) // 2
    data[mid : mid + 64] = bytes(b ^ 0xFF for b in data[mid : mid + 64])
    file.write_bytes(bytes(data))


@pytest.fixture(scope="module")
def listed_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The ALS serving bundle with pre-ranked lists, so every file a bundle can have is there."""
    from conftest import serving_bundle

    from recsys.bundle import save_bundle
    from recsys.precompute import pre_rank

    bundle = serving_bundle("als")
    bundle.pre_ranked = pre_rank(bundle.model, n=4)
    return save_bundle(tmp_path_factory.mktemp("listed") / "als-lists", bundle)


DAMAGE = [
    ("model/arrays/user_factors.npy", _truncate), ("model/arrays/user_factors.npy", _flip),
    ("model/arrays/history.indices.npy", _flip), ("model/model.json", _truncate),
    ("members.parquet", _truncate), ("products.parquet", _flip), ("pre_ranked.npz", _truncate),
    ("pre_ranked.npz", _flip),
]


@pytest.mark.parametrize("checksums", [True, False], ids=["with-checksums", "older-bundle"])
def test_a_damaged_file_is_refused_naming_it_and_counted(
    client: Any, tmp_path: Path, listed_bundle: Path, checksums: bool
) -> None:
    # a truncated arrays.npz raised BadZipFile and 64 flipped bytes "Bad CRC-32": both answered
    # 500 and were not counted as refused reloads. (The model's arrays are .npy files now: a
    # flipped byte in one is found by its checksum alone, a truncated one by its header too.)
    before = answers(client)
    cases = DAMAGE if checksums else [(f, d) for f, d in DAMAGE if f.endswith(".npz") or d is _truncate]
    for i, (name, damage) in enumerate(cases):
        path = tmp_path / f"damaged-{i}"
        shutil.copytree(listed_bundle, path)
        if not checksums:  # a bundle written before bundle.json listed its files
            meta = json.loads((path / "bundle.json").read_text())
            del meta["files"]
            (path / "bundle.json").write_text(json.dumps(meta))
        damage(path / name)
        r = client.post("/v1/admin/reload", json={"bundle": str(path)}, headers=auth("admin"))
        assert r.status_code == 422, (name, damage.__name__, r.text)
        assert name in r.json()["detail"] and "corrupt" in r.json()["detail"], r.text
        assert answers(client) == before
    metrics = client.get("/metrics").text
    assert f'recsys_reloads_total{{outcome="refused"}} {float(len(cases))}' in metrics
    # the undamaged bundle itself loads
    shutil.copytree(listed_bundle, tmp_path / "intact")
    r = client.post("/v1/admin/reload", json={"bundle": str(tmp_path / "intact")}, headers=auth("admin"))
    assert r.status_code == 200, r.text


# ------------------------------------------------------------------ bundle roots (issue 12, item 11)
def test_reload_reads_only_inside_the_bundle_roots(
    serving_client: Callable[..., Any], tmp_path: Path, serving_bundles: dict[str, Path]
) -> None:
    root = tmp_path / "bundles"
    shutil.copytree(serving_bundles["als"], root / "als")
    outside = tmp_path / "elsewhere"
    shutil.copytree(serving_bundles["als"], outside)
    (root / "escape").symlink_to(outside, target_is_directory=True)
    with serving_client(bundle_roots=[root]) as c:
        before = answers(c)
        for raw in ("../elsewhere", str(outside), "escape", "/etc", "als/../../elsewhere"):
            r = c.post("/v1/admin/reload", json={"bundle": raw}, headers=auth("admin"))
            assert r.status_code == 422, (raw, r.text)
            assert "outside the folders reloads may read" in r.json()["detail"]
            assert answers(c) == before
        for raw in ("als", str(root / "als")):  # relative to the root, or absolute inside it
            r = c.post("/v1/admin/reload", json={"bundle": raw}, headers=auth("admin"))
            assert r.status_code == 200, (raw, r.text)
            assert r.json()["model_version"].startswith("als:")


def test_reload_from_a_folder_is_off_without_roots_for_a_registry_model(serving_settings: Callable[..., Any]) -> None:
    settings = serving_settings()
    registry = settings.model_copy(update={"bundle": None, "registered_model": "recsys-x"})
    assert registry.reload_roots() == []
    assert settings.reload_roots() == [settings.bundle.resolve().parent]  # the served bundle's folder


# ------------------------------------------------------------------ memory (issue 12, item 1)
def test_a_replaced_state_is_freed_by_the_time_the_reload_answers(serving_client: Callable[..., Any]) -> None:
    # the events tail held the state it last applied events to after the swap, so the memory a
    # reload trimmed did not include the old model (arrays, FAISS indexes) yet
    import gc
    import time
    import weakref

    with serving_client("als", events_poll_seconds=1.0) as c:
        time.sleep(1.3)  # the tail follows the state it has, waiting up to a second for events
        old = weakref.ref(c.app.state.holder.state)
        assert c.post("/v1/admin/reload", headers=auth("admin")).status_code == 200
        # the reload answers once the tail has let go of the old state (and its memory is trimmed)
        gc.collect()
        assert c.app.state.holder.state is not None and old() is None


def test_release_memory_returns_freed_pages() -> None:
    import threading

    import numpy as np

    from serving.memory import release_memory

    def rss_mb() -> float:
        return int(next(x for x in open("/proc/self/status") if x.startswith("VmRSS")).split()[1]) / 1024

    # a worker thread's arena filled with mid-sized blocks (below glibc's mmap threshold), each
    # followed by a small one that stays, as a reload leaves it: the freed blocks sit below live
    # ones, so glibc keeps their pages until trimmed, as it kept a replaced model's
    blocks: list[np.ndarray] = []
    pin: list[np.ndarray] = []

    def fill() -> None:
        # each 32 KB block followed by a small live one: a freed block never lies at the top of
        # the heap, so glibc cannot give its pages back without the trim (256 MB in all)
        for _ in range(8_000):
            blocks.append(np.ones(4_000))
            pin.append(np.ones(16))

    release_memory()
    base = rss_mb()
    t = threading.Thread(target=fill)
    t.start()
    t.join()
    peak = rss_mb()
    blocks.clear()
    freed = rss_mb()  # glibc gives back only what lies at the top of a heap by itself
    assert release_memory() is True  # glibc
    after = rss_mb()
    # the trim handed pages back (glibc alone returned only what lay at the top of a heap), and
    # what the blocks took is mostly gone (the process's other memory moves a little meanwhile)
    assert after < freed - 20 and after - base < 0.5 * (peak - base), (base, peak, freed, after)
    assert len(pin) == 8_000  # the small blocks stay alive to the end
