"""The web console at /console in a real browser: Debian's Chromium driven by Playwright, against a
real uvicorn server over the ``dated`` test bundle (see tests/conftest.py; it has purchase
probabilities and purchase dates, so expected buyers, lift and last purchase all show).

Every number the page shows is checked against the API's own answer to the same request.
Screenshots go to test-artifacts/console/*.png (gitignored) for a person to look at.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import KEYS, STAFF_KEYS, auth, uvicorn_server

from serving.app import create_app
from serving.keys import hash_key
from serving.settings import ApiKeySpec, ServingSettings

CHROMIUM = Path("/usr/bin/chromium")
pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists(), reason="Debian's chromium is not installed at /usr/bin/chromium (run `make browser`)"
)
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts" / "console"
LAUNCH_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run",
]
TIMEOUT_MS = 10_000


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, serving_bundles: dict[str, Path]) -> Iterator[str]:
    root = tmp_path_factory.mktemp("console-server")
    settings = ServingSettings(
        bundle=serving_bundles["dated"],
        api_keys=[ApiKeySpec(id=f"{r}-key", role=r, sha256=hash_key(s)) for r, s in KEYS.items()]  # type: ignore[arg-type]
        + [ApiKeySpec(id=k, role="staff", sha256=hash_key(s), scope=scope) for k, (s, scope) in STAFF_KEYS.items()],
        events_dir=root / "events",
        events_poll_seconds=0,
        load_in_background=False,
        campaign_db=f"sqlite:///{root / 'campaigns.db'}",
    )
    with uvicorn_server(create_app(settings)) as base:
        yield base


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=LAUNCH_ARGS)
        yield b
        b.close()


@pytest.fixture
def page(browser: Any, server: str) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1366, "height": 900}, accept_downloads=True, base_url=server)
    context.set_default_timeout(TIMEOUT_MS)
    pg = context.new_page()
    errors: list[str] = []
    pg.on("pageerror", lambda exc: errors.append(str(exc)))
    # self-contained: the page must never reach beyond the server it came from
    outside: list[str] = []
    pg.on("request", lambda req: None if req.url.startswith((server, "blob:", "data:")) else outside.append(req.url))
    # ... a request the page's Content-Security-Policy stopped in the browser never left it
    pg.on("requestfailed", lambda req: outside.remove(req.url) if req.failure == "csp" and req.url in outside else None)
    yield pg
    context.close()
    assert not errors, f"JavaScript errors on the page: {errors}"
    assert not outside, f"the page fetched from outside the server: {outside}"


def shot(page: Any, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def sign_in(page: Any, role: str) -> None:
    page.goto("/console/")
    page.fill("#api-key", auth(role)["X-API-Key"])
    page.click("#signin-form button[type=submit]")
    page.wait_for_selector("[data-testid=role]")


def api(server: str, method: str, path: str, role: str = "merchandiser", **kw: Any) -> Any:
    r = httpx.request(method, f"{server}{path}", headers=auth(role), timeout=10, **kw)
    assert r.status_code == 200, r.text
    return r


def nav_pages(page: Any) -> list[str]:
    return page.eval_on_selector_all("#nav a", "els => els.map(e => e.dataset.page)")


def bars(page: Any, selector: str) -> dict[str, float]:
    return {
        k: float(v)
        for k, v in page.eval_on_selector_all(
            f"{selector} g.bar", "els => els.map(e => [e.dataset.key, e.dataset.value])"
        )
    }


def kpi(page: Any, testid: str) -> float | None:
    value = page.get_attribute(f"[data-testid={testid}]", "data-value")
    return float(value) if value else None


def check_result_matches(page: Any, body: dict[str, Any]) -> None:
    """The numbers on the page are the API's numbers for the same request."""
    p = body["profile"]
    assert kpi(page, "kpi-size") == p["size"]
    assert kpi(page, "kpi-expected") == pytest.approx(p["expected_buyers"], rel=1e-12)
    assert kpi(page, "kpi-lift-random") == pytest.approx(p["lift_vs_random"], rel=1e-12)
    assert kpi(page, "kpi-lift-active") == pytest.approx(p["lift_vs_most_active"], rel=1e-12)
    assert bars(page, "[data-testid=compare-chart]") == pytest.approx({
        "audience": p["expected_buyers"], "random": p["random"]["expected_buyers"],
        "most_active": p["most_active"]["expected_buyers"],
    }, rel=1e-12)
    for tag, counts in p["counts"].items():
        assert bars(page, f"[data-testid=profile-{tag}]") == {k: float(v) for k, v in counts.items()}, tag
    shown = page.eval_on_selector_all("[data-testid=audience-members] tbody tr td:nth-child(2)",
                                      "els => els.map(e => e.textContent)")
    assert shown == [m["member_id"] for m in body["members"]][:15]
    # merchandisers see each member's purchase probability, not the raw model score
    assert "购买概率" in page.inner_text("[data-testid=audience-members] thead")
    values = page.eval_on_selector_all("[data-testid=audience-members] tbody tr td:nth-child(3)",
                                       "els => els.map(e => [e.dataset.value, e.textContent])")
    members = body["members"][:15]
    assert [float(v) for v, _ in values] == pytest.approx([m["probability"] for m in members], rel=1e-12)
    assert all(text.endswith("%") for _, text in values)


def test_merchandiser_builds_an_audience_downloads_it_and_sees_the_export(page: Any, server: str) -> None:
    sign_in(page, "merchandiser")
    assert nav_pages(page) == ["audience", "campaigns", "exports", "member", "model"]
    assert "商品运营" in page.inner_text("[data-testid=role]")
    assert page.query_selector("[data-testid=scope]") is None and "null" not in page.inner_text("#who")

    # find the product by name, choose it, size 3, lifecycle active or lost
    page.fill("#product-q", "牛")
    page.click("#product-search")
    page.click("button[data-product-id=p0]")
    assert "p0" in page.inner_text("#selected-product")
    page.fill("#size", "3")
    page.check("input[name=filter-lifecycle][value=active]")
    page.check("input[name=filter-lifecycle][value=lost]")
    labels = page.inner_text("fieldset[data-tag=lifecycle]")
    assert "活跃 active" in labels and "流失 lost" in labels and "生命周期 Lifecycle" in labels
    page.click("#build")
    page.wait_for_selector("[data-testid=kpi-expected]")

    request = {"product_id": "p0", "size": 3, "filters": {"lifecycle": ["active", "lost"]}}
    body = api(server, "POST", "/v1/audiences", json=request).json()
    assert [m["member_id"] for m in body["members"]] == ["m0", "m4", "m5"]
    check_result_matches(page, body)
    assert page.inner_text("[data-testid=kpi-lift-random] .kpi-value") == f"{body['profile']['lift_vs_random']:.2f}×"
    shot(page, "audience-product")

    # the CSV download: the same members as the API's answer, in order
    with page.expect_download() as info:
        page.click("#download")
    download = info.value
    assert download.suggested_filename == "audience-p0.csv"
    rows = list(csv.reader(io.StringIO(Path(download.path()).read_text(encoding="utf-8"))))
    assert rows[0] == ["member_id", "score", "rank"]
    assert [r[0] for r in rows[1:]] == ["m0", "m4", "m5"] and [r[2] for r in rows[1:]] == ["1", "2", "3"]
    page.wait_for_selector(".banner.ok")

    # the export is in the audit trail, shown on the exports page
    page.click("#nav a[data-page=exports]")
    page.wait_for_selector("[data-testid=exports-table] tbody tr")
    first = page.inner_text("[data-testid=exports-table] tbody tr:first-child")
    assert "merchandiser-key" in first and "p0" in first and "活跃 active" in first
    assert len(api(server, "GET", "/v1/audiences/exports").json()["exports"]) >= 1
    shot(page, "exports")


def test_the_filter_form_is_built_from_the_bundles_tags(page: Any, server: str) -> None:
    sign_in(page, "merchandiser")
    page.wait_for_selector("fieldset.filter")
    options = api(server, "GET", "/v1/audiences/options").json()
    form = page.eval_on_selector_all(
        "fieldset.filter",
        """els => els.map(f => [f.dataset.tag, f.dataset.multi, f.querySelector('legend').textContent,
            [...f.querySelectorAll('input')].map(i => i.value),
            [...f.querySelectorAll('label.chip')].map(l => l.textContent)])""")
    # one fieldset per member tag of the options, in their order, with their labels and counts
    assert [f[0] for f in form] == [t["name"] for t in options["tags"]]
    for (name, multi, legend, values, chips), tag in zip(form, options["tags"], strict=True):
        assert multi == ("true" if tag["multi"] else "false") and legend.startswith(f"{tag['zh']} {tag['en']}")
        assert values == [v["value"] for v in tag["values"]], name
        for chip, v in zip(chips, tag["values"], strict=True):
            assert chip.startswith(v["zh"]) and chip.endswith(f" {v['members']}"), (name, chip)
    channel = next(f for f in form if f[0] == "channel")
    assert channel[4] == ["App app 2", "小程序 mini_program 1", "门店 store 4"] and "任一 any of" in channel[2]

    # a multi-valued filter: members who bought through the mini-program or the app, in store S02
    page.fill("#product-q", "p1")
    page.click("#product-search")
    page.click("button[data-product-id=p1]")
    page.fill("#size", "10")
    for tag, value in (("channel", "app"), ("channel", "mini_program"), ("store", "S02")):
        page.check(f"input[name=filter-{tag}][value={value}]")
    page.click("#build")
    page.wait_for_selector("[data-testid=kpi-expected]")
    request = {"product_id": "p1", "size": 10, "filters": {"channel": ["app", "mini_program"], "store": ["S02"]}}
    body = api(server, "POST", "/v1/audiences", json=request).json()
    assert sorted(m["member_id"] for m in body["members"]) == ["m1", "m4"]
    check_result_matches(page, body)
    assert bars(page, "[data-testid=profile-channel]") == {"app": 1.0, "mini_program": 1.0, "store": 1.0}
    shot(page, "audience-generated-filters")


def test_staff_see_their_scope_and_only_its_members(page: Any, server: str) -> None:
    sign_in(page, "staff-s01")
    assert nav_pages(page) == ["member"]
    assert "门店导购" in page.inner_text("[data-testid=role]")
    assert page.inner_text("[data-testid=scope]") == "范围 Scope: 常去门店 Home store S01"
    page.fill("#member-id", "m2")  # home store S01
    page.click("#member-go")
    page.wait_for_selector("[data-testid=picks]")
    assert page.get_attribute("[data-testid=tag-store]", "data-value") == "S01"
    page.fill("#member-id", "m1")  # store S02: not theirs
    page.click("#member-go")
    page.wait_for_selector("#banner:not([hidden])")
    banner = page.inner_text("#banner")
    assert "404" in banner and "未找到" in banner and "scope (store: S01)" in banner
    assert page.query_selector("[data-testid=member-profile]") is None  # m2's data does not stay on screen
    shot(page, "staff-out-of-scope")


def test_merchandiser_builds_an_audience_for_a_new_product(page: Any, server: str) -> None:
    sign_in(page, "merchandiser")
    page.click("#target-new")
    page.select_option("#new-category", "dairy")
    page.fill("#new-price", "11")
    page.fill("#new-brand", "光明")
    page.fill("#size", "4")
    page.click("#build")
    page.wait_for_selector("[data-testid=kpi-expected]")
    request = {"attributes": {"category": "dairy", "price": 11, "brand": "光明"}, "size": 4, "filters": {}}
    body = api(server, "POST", "/v1/audiences", json=request).json()
    check_result_matches(page, body)
    desc = page.inner_text("[data-testid=target-desc]")
    assert "新品" in desc and "dairy" in desc and ", ".join(body["reference_products"]) in desc
    shot(page, "audience-new-product")


def test_member_view_shows_tags_and_picks_with_reasons(page: Any, server: str) -> None:
    sign_in(page, "merchandiser")
    page.click("#nav a[data-page=member]")
    page.fill("#member-id", "m0")
    page.click("#member-go")
    page.wait_for_selector("[data-testid=picks][data-mode=discover]")
    profile = api(server, "GET", "/v1/members/m0/profile").json()
    # a row per member tag of the bundle, in its registry's order; channel holds two values
    rows = page.eval_on_selector_all("[data-testid^=tag-]", "els => els.map(e => e.dataset.testid)")
    assert rows == [f"tag-{t['name']}" for t in api(server, "GET", "/v1/tags").json()["tags"]
                    if t["entity"] == "member"]
    for tag, value in profile["tags"].items():
        shown = ",".join(value) if isinstance(value, list) else value
        assert page.get_attribute(f"[data-testid=tag-{tag}]", "data-value") == shown
    assert "活跃 active" in page.inner_text("[data-testid=tag-lifecycle]")
    assert page.eval_on_selector_all("[data-testid=tag-channel] .pill", "els => els.map(e => e.textContent)") == [
        "App app", "门店 store"]
    last = profile["last_purchase"]
    assert last is not None and last["product_id"] == "p0"
    assert f"{last['name']}（p0）" in page.inner_text("[data-testid=last-purchase]")
    # days counted from the model's data as-of date, and the page says so
    assert f"数据截至 {last['counted_from']} 前 {last['days_ago']} 天" in page.inner_text("[data-testid=last-purchase]")
    assert "模型数据截止日" in page.inner_text("[data-testid=last-purchase]")
    assert bars(page, "[data-testid=top-categories]") == {"dairy": 4.0}

    for mode in ("discover", "replenish"):
        if mode == "replenish":
            page.click("#mode-replenish")
            page.wait_for_selector("[data-testid=picks][data-mode=replenish]")
        picks = api(server, "GET", "/v1/members/m0/picks", params={"mode": mode, "k": 10}).json()["picks"]
        items = page.query_selector_all("[data-testid=picks] li")
        assert [i.get_attribute("data-product-id") for i in items] == [p["product_id"] for p in picks]
        for item, pick in zip(items, picks, strict=True):
            assert item.query_selector(".reason-zh").inner_text() == pick["reason"]
            assert item.get_attribute("data-reason-code") == pick["reason_code"]
        shot(page, f"member-{mode}")
    assert picks[0]["reason"] == "您经常购买「鲜牛奶」（3次）"  # replenish: the member's regulars first


def test_app_key_gets_no_audience_builder_and_export_is_refused(page: Any, server: str) -> None:
    sign_in(page, "app")
    assert nav_pages(page) == ["member", "model"]
    assert page.query_selector("#build") is None

    # the model page: what GET /v1/model says
    page.click("#nav a[data-page=model]")
    page.wait_for_selector("[data-testid=model-info]")
    model = api(server, "GET", "/v1/model", role="app").json()
    assert page.inner_text("[data-field=model_version]") == model["model_version"]
    assert page.inner_text("[data-field=trained_on]") == model["trained_on"]
    assert page.inner_text("[data-metric='recall@10'] td.num") == "0.25"
    shot(page, "model")

    # typing the builder's address: the page says the role may not use it
    page.goto("/console/#audience")
    page.wait_for_selector("[data-testid=not-allowed]")
    assert page.query_selector("#build") is None
    # and the server refuses the export the page would send; the page shows the 403
    status = page.evaluate(
        """async () => {
            const api = await import('/console/js/api.js');
            try { await api.exportAudience({product_id: 'p0', size: 3}); return 200; }
            catch (e) { return e.status; }
        }"""
    )
    assert status == 403
    banner = page.inner_text("#banner")
    assert "403" in banner and "may not use audiences" in banner and "无权限" in banner
    shot(page, "app-export-refused")


def test_a_wrong_key_is_refused_at_sign_in(page: Any) -> None:
    page.goto("/console")
    page.fill("#api-key", "not-a-key")
    page.click("#signin-form button[type=submit]")
    page.wait_for_selector("#signin-error:not([hidden])")
    assert "Invalid API key" in page.inner_text("#signin-error")
    assert page.evaluate("sessionStorage.getItem('recsys.apiKey')") is None
    shot(page, "sign-in-refused")


@pytest.mark.parametrize(("path", "title"), [("/docs", ".swagger-ui .info .title"), ("/redoc", "h1")])
def test_api_docs_render_from_the_server_alone(page: Any, path: str, title: str) -> None:
    # /docs and /redoc loaded Swagger UI and ReDoc from a CDN: blank on an intranet (the page
    # fixture fails the test for any request beyond the server)
    page.goto(path)
    heading = page.locator(title).first
    heading.wait_for()
    assert "recsys serving" in heading.inner_text()
    page.get_by_text("/v1/audiences").first.wait_for()  # the operations are listed from /openapi.json
    shot(page, f"docs-{path.strip('/')}")


def test_merchandiser_creates_a_campaign_from_an_audience_and_reads_its_results(page: Any, server: str) -> None:
    sign_in(page, "merchandiser")
    page.fill("#product-q", "p0")
    page.click("#product-search")
    page.click("button[data-product-id=p0]")
    page.fill("#size", "6")
    page.check("input[name=filter-lifecycle][value=active]")
    page.click("#build")
    page.wait_for_selector("#create-campaign")
    page.click("#create-campaign")
    page.wait_for_selector("[data-testid=campaign-form]")
    assert "p0" in page.inner_text("[data-testid=campaign-draft]") and "活跃 active" in page.inner_text("[data-testid=campaign-draft]")
    page.fill("#c-name", "会员日 p0")
    page.fill("#c-holdout", "0.34")
    page.click("#c-create")
    page.wait_for_selector(".banner.ok")
    assert "Created campaign" in page.inner_text("#banner")
    listed = api(server, "GET", "/v1/campaigns").json()["campaigns"]
    mine = next(c for c in listed if c["name"] == "会员日 p0")
    # m0, m1, m4 are the active members: one held out (round(3 x 0.34)), two contacted
    assert (mine["eligible"], mine["treated"], mine["holdout"], mine["filters"]) == (3, 2, 1, {"lifecycle": ["active"]})
    row = f"[data-testid=campaigns-table] tr[data-campaign-id='{mine['id']}']"
    page.wait_for_selector(row)
    assert "测量中 measuring" in page.inner_text(f"{row} [data-testid=status]")
    shot(page, "campaigns-list")

    page.click(f"{row} button[data-results]")
    page.wait_for_selector("[data-testid=results-card]")
    res = api(server, "GET", f"/v1/campaigns/{mine['id']}/results").json()
    u = res["comparisons"][0]["uplift"]
    assert kpi(page, "kpi-uplift") == pytest.approx(u["estimate"])
    bar = page.query_selector("[data-testid=uplift-interval]")
    assert float(bar.get_attribute("data-low")) == pytest.approx(u["low"])
    assert float(bar.get_attribute("data-high")) == pytest.approx(u["high"])
    assert page.query_selector("[data-testid=partial]") is not None and res["partial"]
    for name, g in res["groups"].items():
        cell = page.query_selector(f"[data-testid=groups-table] tr[data-group={name}] td:nth-child(2)")
        assert cell.inner_text() == str(g["members"])
        line = page.query_selector(f"[data-testid=cumulative-plot] polyline[data-series={name}]")
        assert float(line.get_attribute("data-last")) == pytest.approx(g["cumulative"][-1])
    # the ROI from a cost per contact and a margin
    page.fill("#roi-cost", "0.5")
    page.fill("#roi-margin", "0.3")
    page.click("#roi-form button[type=submit]")
    page.wait_for_function("document.querySelector('[data-testid=kpi-roi]').dataset.value !== ''")
    with_roi = api(server, "GET", f"/v1/campaigns/{mine['id']}/results",
                   params={"cost_per_contact": 0.5, "margin": 0.3}).json()
    assert kpi(page, "kpi-roi") == pytest.approx(with_roi["comparisons"][0]["roi"]["roi"])
    shot(page, "campaign-results")

    # the treated list downloads; never the holdout
    with page.expect_download() as info:
        page.click(f"{row} button[data-export]")
    rows = list(csv.reader(io.StringIO(Path(info.value.path()).read_text(encoding="utf-8"))))
    assert rows[0] == ["member_id", "rank", "score"] and len(rows) - 1 == mine["treated"]
    assert {r[0] for r in rows[1:]} <= {"m0", "m1", "m4"}
