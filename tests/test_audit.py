"""The audit trail is one table of the shared database (serving.audit), on SQLite and a real
PostgreSQL: what one server instance audits every other lists, an entry is committed before the
member list leaves, and when it cannot be the request is a 503 that carries no member."""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from conftest import audit_trail, auth
from typer.testing import CliRunner

from recsys.errors import InputError

M = auth("merchandiser")


def _two(serving_client: Callable[..., Any], url: str) -> tuple[Any, Any]:
    """Two server instances (two apps, two engines, two pools) on one database: two replicas."""
    return serving_client("dated", campaign_db=url), serving_client("dated", campaign_db=url)


def test_what_one_replica_audits_the_other_lists(serving_client: Callable[..., Any], campaign_db_url: str) -> None:
    a, b = _two(serving_client, campaign_db_url)
    with a, b:
        r = a.post("/v1/audiences/export", json={"product_id": "p0", "size": 3}, headers=M)
        assert r.status_code == 200 and len(r.text.strip().splitlines()) == 4
        r = b.post("/v1/audiences", json={"product_id": "p1", "size": 2, "filters": {"lifecycle": ["active"]}},
                   headers=auth("admin"))
        assert r.status_code == 200
        b_rows = len(r.json()["members"])
        assert b.post("/v1/picks:batch", json={"member_ids": ["m0", "m1"], "k": 2}, headers=auth("app")).status_code == 200
        for replica in (a, b):  # each lists both audiences, newest first, whichever answered
            listed = replica.get("/v1/audiences/exports", headers=M).json()["exports"]
            assert [(e["route"], e["key_id"], e["product_id"], e["rows"]) for e in listed] == [
                ("/v1/audiences", "admin-key", "p1", b_rows), ("/v1/audiences/export", "merchandiser-key", "p0", 3)]
            mine = replica.get("/v1/audiences/exports?mine=true", headers=M).json()["exports"]
            assert [e["product_id"] for e in mine] == ["p0"]
        origins = {e["origin"] for e in listed}
        assert len(origins) == 1 and next(iter(origins)).endswith(f":{os.getpid()}")
    trail = audit_trail(campaign_db_url)  # every route in one trail, oldest first
    assert [(e["route"], e["format"], e["rows"]) for e in trail] == [
        ("/v1/audiences/export", "csv", 3), ("/v1/audiences", "json", b_rows), ("/v1/picks:batch", "json", 2)]
    assert trail[1]["filters"] == {"lifecycle": ["active"]} and trail[2]["k"] == 2
    assert trail[0]["time"] <= trail[1]["time"] <= trail[2]["time"] and trail[0]["time"].endswith("+00:00")


def _break_audit_table(url: str) -> None:
    """The write fails for real: the table is gone (the migrations still say head)."""
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.execute(sa.text("DROP TABLE audit_entries"))
    engine.dispose()


def test_a_failed_audit_write_is_a_503_and_no_member_leaves(serving_client: Callable[..., Any],
                                                            campaign_db_url: str) -> None:
    with serving_client("dated", campaign_db=campaign_db_url) as api:
        c = api.post("/v1/campaigns", json={"name": "launch", "product_id": "p1", "holdout_share": 0.2, "seed": 1},
                     headers=M)
        assert c.status_code == 200, c.text
        assert api.post("/v1/audiences", json={"product_id": "p0", "size": 3}, headers=M).status_code == 200
        _break_audit_table(campaign_db_url)
        for method, url, body, key in [
            ("POST", "/v1/audiences", {"product_id": "p0", "size": 3}, M),
            ("POST", "/v1/audiences/export", {"product_id": "p0", "size": 3}, M),
            ("POST", "/v1/picks:batch", {"member_ids": ["m0", "m1"], "k": 2}, auth("app")),
            ("GET", f"/v1/campaigns/{c.json()['id']}/export", None, M),
        ]:
            r = api.request(method, url, json=body, headers=key)
            assert r.status_code == 503, (url, r.status_code, r.text)
            assert r.headers["content-type"] == "application/json" and r.headers["retry-after"] == "5"
            detail = r.json()["detail"]
            assert set(r.json()) == {"detail"} and "the member list was not sent" in detail and "audit_entries" in detail
            assert not any(f"m{i}" in r.text for i in range(6)), r.text  # not one member id
        # a single member's picks are no list: they keep serving
        assert api.get("/v1/members/m0/picks", headers=auth("app")).status_code == 200
        # the table back: lists leave again, audited
        from serving.db import AuditEntry

        engine = sa.create_engine(campaign_db_url)
        AuditEntry.__table__.create(engine)
        engine.dispose()
        assert api.post("/v1/audiences", json={"product_id": "p0", "size": 3}, headers=M).status_code == 200
    assert [e["route"] for e in audit_trail(campaign_db_url)] == ["/v1/audiences"]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_an_unreachable_database_is_a_503_naming_it(serving_client: Callable[..., Any]) -> None:
    url = f"postgresql+psycopg://recsys:secret@127.0.0.1:{_free_port()}/nowhere"
    with serving_client("dated", campaign_db=url) as api:
        r = api.post("/v1/audiences", json={"product_id": "p0", "size": 3}, headers=M)
        assert r.status_code == 503 and "members" not in r.json()
        assert "127.0.0.1" in r.json()["detail"] and "secret" not in r.json()["detail"]  # named, password hidden
        assert api.get("/v1/members/m0/picks", headers=auth("app")).status_code == 200


def test_the_audit_file_option_is_refused_saying_where_the_trail_is(tmp_path: Path) -> None:
    from serving.cli import serve
    from serving.settings import ServingSettings

    with pytest.raises(InputError, match="audit_entries table of the campaign database"):
        serve(tmp_path, audit_log=tmp_path / "audit.jsonl", auth_disabled=True)
    with pytest.raises(ValueError, match="recsys audit import FILE"):
        ServingSettings(bundle=tmp_path, auth_disabled=True, audit_log=tmp_path / "audit.jsonl")


def test_an_old_json_lines_trail_is_imported_once(serving_client: Callable[..., Any], campaign_db_url: str,
                                                  tmp_path: Path) -> None:
    from recsys.cli import app

    old = tmp_path / "audience_exports.jsonl"
    lines = [  # the file an older version wrote: an entry before `route` existed, one after, a damaged line
        {"time": "2026-01-05T09:00:00.000+00:00", "key_id": "merchandiser-key", "product_id": "p0", "size": 5,
         "rows": 5, "filters": None, "model_version": "recsys-tafeng/3"},
        {"time": "2026-01-06T10:30:00.250+00:00", "key_id": "admin-key", "scope": {"region": ["上海"]},
         "route": "/v1/audiences", "format": "json", "product_id": "p1", "size": 9, "rows": 2,
         "model_version": "recsys-tafeng/3"},
    ]
    old.write_text("\n".join([json.dumps(lines[0]), "{not json", json.dumps(lines[1])]) + "\n", encoding="utf-8")
    runner = CliRunner()
    with serving_client("dated", campaign_db=campaign_db_url) as api:
        api.post("/v1/audiences", json={"product_id": "p2", "size": 1}, headers=M)  # today's, through the server
        result = runner.invoke(app, ["audit", "import", str(old), "--db", campaign_db_url])
        assert result.exit_code == 0, result.output
        assert "2 entries imported, 0 already there, 1 unreadable lines (lines 2)" in result.output
        again = runner.invoke(app, ["audit", "import", str(old), "--db", campaign_db_url])
        assert "0 entries imported, 2 already there" in again.output
        listed = api.get("/v1/audiences/exports", headers=M).json()["exports"]
    # newest first by time, the imported entries after today's
    assert [(e["product_id"], e["route"], e["format"], e["rows"]) for e in listed] == [
        ("p2", "/v1/audiences", "json", 1), ("p1", "/v1/audiences", "json", 2), ("p0", "/v1/audiences/export", "csv", 5)]
    assert listed[1]["time"] == "2026-01-06T10:30:00.250+00:00" and listed[1]["scope"] == {"region": ["上海"]}
    assert listed[2]["origin"] == "file"
    out = runner.invoke(app, ["audit", "list", "--db", campaign_db_url, "--key", "admin-key"])
    assert out.exit_code == 0 and [json.loads(x)["product_id"] for x in out.stdout.splitlines()] == ["p1"]


def test_the_cli_campaign_export_is_audited_or_writes_no_file(serving_client: Callable[..., Any],
                                                              campaign_db_url: str, tmp_path: Path) -> None:
    from recsys.cli import app

    with serving_client("dated", campaign_db=campaign_db_url) as api:
        c = api.post("/v1/campaigns", json={"name": "launch", "product_id": "p1", "holdout_share": 0.2, "seed": 1},
                     headers=M).json()
    runner = CliRunner()
    out = tmp_path / "treated.csv"
    result = runner.invoke(app, ["campaign", "export", str(c["id"]), "--out", str(out), "--db", campaign_db_url])
    assert result.exit_code == 0, result.output
    [entry] = audit_trail(campaign_db_url)
    assert (entry["route"], entry["key_id"], entry["campaign_id"]) == ("recsys campaign export", "cli", c["id"])
    assert entry["rows"] == len(out.read_text(encoding="utf-8").splitlines()) - 1 == c["treated"]
    _break_audit_table(campaign_db_url)
    again = tmp_path / "again.csv"
    result = runner.invoke(app, ["campaign", "export", str(c["id"]), "--out", str(again), "--db", campaign_db_url])
    assert result.exit_code == 2 and "the member list was not sent" in result.output
    assert sorted(p.name for p in tmp_path.iterdir() if "csv" in p.name) == ["treated.csv"]  # no list, no partial file


def test_the_cli_campaign_create_writes_the_campaign_and_leaves_no_temporary_folder(
        serving_bundles: dict[str, Path], campaign_db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import tempfile

    from recsys.cli import app

    temp = tmp_path / "tmp"
    temp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temp))
    out = tmp_path / "treated.csv"
    result = CliRunner().invoke(app, ["campaign", "create", "--name", "launch", "--product", "p1", "--seed", "1",
                                      "--holdout-share", "0.2", "--bundle", str(serving_bundles["dated"]),
                                      "--db", campaign_db_url, "--export", str(out)])
    assert result.exit_code == 0, result.output
    [entry] = audit_trail(campaign_db_url)
    assert entry["route"] == "recsys campaign export"
    assert entry["rows"] == len(out.read_text(encoding="utf-8").splitlines()) - 1 > 0
    assert list(temp.iterdir()) == []  # the command's events folder is gone
