"""Keys scoped by tags: store staff (导购) see the members of their scope only, server-side.

Two staff keys share one bundle (tests/conftest.py): ``staff-s01`` (home store S01: m0, m2, m5)
and ``staff-beijing`` (region 北京: m1, m4); m3 (store S02, 广州) is in neither.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import KEYS, STAFF_KEYS, audit_trail, auth

from serving.keys import hash_key, main, read_keys_file
from serving.settings import ApiKeySpec

SCOPES = {"staff-s01": {"m0", "m2", "m5"}, "staff-beijing": {"m1", "m4"}}
MEMBERS = [f"m{i}" for i in range(6)]


def test_whoami_shows_the_scope_and_the_staff_permissions(client: Any) -> None:
    body = client.get("/v1/whoami", headers=auth("staff-s01")).json()
    assert body == {"key_id": "staff-s01", "role": "staff", "permissions": ["picks", "similar"],
                    "scope": {"store": ["S01"]}}
    assert client.get("/v1/whoami", headers=auth("app")).json()["scope"] is None


@pytest.mark.parametrize("key", sorted(SCOPES))
def test_picks_and_profiles_only_inside_the_scope(client: Any, key: str) -> None:
    for member in MEMBERS:
        picks = client.get(f"/v1/members/{member}/picks", headers=auth(key))
        profile = client.get(f"/v1/members/{member}/profile", headers=auth(key))
        if member in SCOPES[key]:
            assert picks.status_code == 200 and picks.json()["fallback"] is False, (key, member)
            assert profile.status_code == 200 and profile.json()["known"] is True
            # the same picks an unscoped key gets
            assert picks.json() == client.get(f"/v1/members/{member}/picks", headers=auth("app")).json()
        else:
            for r in (picks, profile):
                assert r.status_code == 404, (key, member, r.text)
                assert r.json()["detail"] == (
                    f"unknown member(s) '{member}' among the members of this key's scope "
                    f"({next(f'{t}: {v[0]}' for t, v in STAFF_KEYS[key][1].items())})"
                )


def test_a_member_unknown_or_only_live_is_outside_every_scope(client: Any) -> None:
    # an unscoped key gets the popular fallback for an unknown member; a scoped key cannot tell
    # whether they are its members, and 404s exactly as for a member of another store
    assert client.get("/v1/members/ghost/picks", headers=auth("app")).json()["fallback"] is True
    r = client.get("/v1/members/ghost/picks", headers=auth("staff-s01"))
    assert r.status_code == 404 and "unknown member(s) 'ghost' among the members" in r.json()["detail"]
    assert client.post("/v1/events", json=[{"member_id": "newbie", "product_id": "p0"}],
                       headers=auth("admin")).status_code == 200
    assert client.get("/v1/members/newbie/profile", headers=auth("app")).json()["purchases"] == 1
    assert client.get("/v1/members/newbie/profile", headers=auth("staff-s01")).status_code == 404


def test_batch_picks_refuse_any_member_outside_the_scope(client: Any) -> None:
    ok = client.post("/v1/picks:batch", json={"member_ids": ["m0", "m5"], "k": 2}, headers=auth("staff-s01"))
    assert ok.status_code == 200 and [r["member_id"] for r in ok.json()["results"]] == ["m0", "m5"]
    r = client.post("/v1/picks:batch", json={"member_ids": ["m0", "m1", "m4"], "k": 2}, headers=auth("staff-s01"))
    assert r.status_code == 404 and "'m1', 'm4'" in r.json()["detail"] and "'m0'" not in r.json()["detail"]


def test_staff_may_see_similar_products_but_no_audience(client: Any) -> None:
    assert client.get("/v1/products/p0/similar", headers=auth("staff-beijing")).status_code == 200
    for path in ("/v1/audiences", "/v1/audiences/export"):
        r = client.post(path, json={"product_id": "p0"}, headers=auth("staff-beijing"))
        assert r.status_code == 403 and "role staff" in r.json()["detail"]
    assert client.get("/v1/model", headers=auth("staff-s01")).status_code == 403


@pytest.fixture
def regional(serving_client: Callable[..., Any], tmp_path: Path) -> Any:
    """A merchandiser key scoped to region 上海 (m0, m2, m5) beside an unscoped one."""
    keys = [ApiKeySpec(id="merch-sh", role="merchandiser", sha256=hash_key("sh-secret"), scope={"region": ["上海"]}),
            ApiKeySpec(id="merch", role="merchandiser", sha256=hash_key(KEYS["merchandiser"])),
            ApiKeySpec(id="odd", role="merchandiser", sha256=hash_key("odd-secret"), scope={"shoe_size": ["42"]})]
    with serving_client("dated", api_keys=keys) as c:
        yield c


def test_a_scoped_audience_is_drawn_from_the_scope_and_audited_with_it(regional: Any) -> None:
    sh = {"X-API-Key": "sh-secret"}
    body = {"product_id": "p0", "size": 10}
    everyone = regional.post("/v1/audiences", json=body, headers=auth("merchandiser")).json()
    scoped = regional.post("/v1/audiences", json=body, headers=sh).json()
    assert {m["member_id"] for m in scoped["members"]} <= {"m0", "m2", "m5"}
    # the scope's members in the unscoped ranking's order: the scope filters, it does not re-rank
    assert [m["member_id"] for m in scoped["members"]] == [
        m["member_id"] for m in everyone["members"] if m["member_id"] in {"m0", "m2", "m5"}]
    assert scoped["profile"]["eligible"] == 3 and scoped["profile"]["counts"]["region"] == {"上海": 3}
    # filters narrow within the scope; they never widen it
    narrowed = regional.post("/v1/audiences", json={**body, "filters": {"region": ["北京"]}}, headers=sh).json()
    assert narrowed["members"] == [] and narrowed["profile"]["eligible"] == 0
    r = regional.post("/v1/audiences/export", json={**body, "filters": {"lifecycle": ["active"]}}, headers=sh)
    assert r.status_code == 200
    rows = r.text.strip().splitlines()[1:]
    assert {line.split(",")[0] for line in rows} == {"m0"}  # active and in 上海
    line = audit_trail(regional.app.state.settings)[-1]
    assert (line["key_id"], line["scope"], line["filters"], line["rows"]) == (
        "merch-sh", {"region": ["上海"]}, {"lifecycle": ["active"]}, 1)
    exports = regional.get("/v1/audiences/exports", headers=sh).json()["exports"]
    assert exports[0]["scope"] == {"region": ["上海"]}


def test_options_of_a_scoped_key_count_its_members(regional: Any) -> None:
    body = regional.get("/v1/audiences/options", headers={"X-API-Key": "sh-secret"}).json()
    assert body["scope"] == {"region": ["上海"]}
    tags = {t["name"]: t for t in body["tags"]}
    assert tags["region"]["values"] == [{"value": "上海", "zh": "上海", "en": "上海", "members": 3}]
    assert {v["value"]: v["members"] for v in tags["store"]["values"]} == {"S01": 3, "S02": 0}


def test_a_scope_the_model_cannot_check_is_a_403_saying_so(regional: Any) -> None:
    r = regional.post("/v1/audiences", json={"product_id": "p0"}, headers={"X-API-Key": "odd-secret"})
    assert r.status_code == 403
    assert "scope names tag(s) 'shoe_size', which the model being served" in r.json()["detail"]
    assert "fix the key's scope" in r.json()["detail"]


def test_keys_file_scopes_and_staff_needs_one(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "keys.toml"
    assert main(["new", "store-s01", "staff", "store=S01", "region=上海,北京"]) == 0
    path.write_text(capsys.readouterr().out, encoding="utf-8")
    (spec,) = read_keys_file(path)
    assert (spec.role, spec.scope) == ("staff", {"store": ["S01"], "region": ["上海", "北京"]})
    path.write_text(f'[[keys]]\nid = "s"\nrole = "staff"\nsha256 = "{hash_key("x")}"\n', encoding="utf-8")
    with pytest.raises(Exception, match="a staff key needs a scope"):
        read_keys_file(path)
    assert main(["new", "s", "staff"]) == 2 and "needs a scope" in capsys.readouterr().err
    assert main(["new", "s", "staff", "store"]) == 2 and "write tag=value" in capsys.readouterr().err
    # the demo's keys: one per role, and a staff key when its scope is given
    assert main(["demo", str(tmp_path / "demo" / "keys.toml"), "region=上海"]) == 0
    specs = {k.role: k for k in read_keys_file(tmp_path / "demo" / "keys.toml")}
    assert set(specs) == {"app", "merchandiser", "admin", "staff"} and specs["staff"].scope == {"region": ["上海"]}
    secrets = dict(line.split()[:2] for line in (tmp_path / "demo" / "keys.secrets").read_text().splitlines())
    assert hash_key(secrets["staff"]) == specs["staff"].sha256
