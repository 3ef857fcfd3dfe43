// The console shell: sign-in, the role's pages, routing by #hash, the error banner.
import * as api from "./api.js";
import { loadTags, tagLabel, tagName } from "./labels.js";
import { h, clear } from "./ui.js";
import * as audience from "./audience.js";
import * as campaigns from "./campaigns.js";
import * as exportsView from "./exports.js";
import * as member from "./member.js";
import * as modelView from "./model.js";

const PAGES = [
  { id: "audience", title: "人群包 Audience", needs: "audiences", view: audience },
  { id: "campaigns", title: "营销活动 Campaigns", needs: "campaigns", view: campaigns },
  { id: "exports", title: "导出记录 Exports", needs: "audiences", view: exportsView },
  { id: "member", title: "会员 Member", needs: "picks", view: member },
  { id: "model", title: "模型 Model", needs: "model", view: modelView },
];

const ROLE_NAMES = {
  app: "门店应用 app", staff: "门店导购 staff", merchandiser: "商品运营 merchandiser", admin: "管理员 admin",
};

const $ = (id) => document.getElementById(id);
let who = null;

function allowed() {
  return PAGES.filter((p) => who && who.permissions.includes(p.needs));
}

export function showBanner(message, kind = "error") {
  const b = $("banner");
  b.textContent = message;
  b.className = `banner ${kind}`;
  b.hidden = false;
}

export function hideBanner() {
  $("banner").hidden = true;
}

window.addEventListener("api-error", (ev) => {
  const err = ev.detail;
  if (err.status === 401 && who) {
    signOut("密钥无效或已失效，请重新登录 The key is no longer valid; sign in again.");
    return;
  }
  const prefix = err.status === 403 ? "无权限 Not allowed" : err.status === 404 ? "未找到 Not found"
    : err.status === 422 ? "请求有误 Invalid request" : "出错 Error";
  showBanner(`${prefix} (${err.status}): ${err.detail}`);
});

function signOut(message) {
  api.session.key = null;
  who = null;
  render();
  if (message) showBanner(message);
}

async function signIn(key) {
  const errEl = $("signin-error");
  errEl.hidden = true;
  try {
    const me = await api.whoami(key);
    api.session.key = key;
    who = me;
    // the tag names and labels every page shows; without a model loaded yet the pages say why
    try { await loadTags(); } catch { /* the banner says why */ }
    hideBanner();
    const first = allowed()[0];
    if (!allowed().some((p) => `#${p.id}` === location.hash) && first) location.hash = first.id;
    render();
  } catch (e) {
    if (e.status === 401) api.session.key = null;
    who = null;
    render();
    hideBanner();
    errEl.textContent = e.status === 401 ? `密钥无效 Invalid API key (${e.detail})` : e.message;
    errEl.hidden = false;
  }
}

function render() {
  const nav = $("nav");
  const whoEl = $("who");
  const view = $("view");
  if (!who) {
    nav.hidden = true;
    whoEl.hidden = true;
    clear(view);
    $("signin").hidden = false;
    $("api-key").focus();
    return;
  }
  $("signin").hidden = true;
  const pages = allowed();
  const current = location.hash.replace(/^#/, "").split("?")[0] || (pages[0] && pages[0].id);
  clear(nav).append(...pages.map((p) =>
    h("a", { href: `#${p.id}`, class: p.id === current ? "active" : null, "data-page": p.id }, p.title)));
  nav.hidden = false;
  const scope = who.scope
    ? h("span", { class: "pill scope", "data-testid": "scope",
      title: "只显示范围内的会员 Only members in this scope" },
    "范围 Scope: ", Object.entries(who.scope).map(([t, vs]) => `${tagName(t)} ${vs.map((v) => tagLabel(t, v)).join(" / ")}`)
      .join("; "))
    : null;
  clear(whoEl).append(...[
    h("span", { class: "role", "data-testid": "role" }, ROLE_NAMES[who.role] || who.role),
    scope,
    h("span", { class: "muted key-id" }, who.key_id),
    h("button", { type: "button", class: "link", id: "sign-out", onclick: () => signOut() }, "退出 Sign out"),
  ].filter(Boolean));
  whoEl.hidden = false;
  clear(view);
  const page = PAGES.find((p) => p.id === current);
  if (!page) {
    view.append(h("div", { class: "card" }, "未知页面 Unknown page"));
  } else if (!pages.includes(page)) {
    view.append(h("div", { class: "card notice", "data-testid": "not-allowed" },
      h("h2", {}, "无权访问 Not available"),
      h("p", {}, `当前角色（${who.role}）不能使用「${page.title}」。`),
      h("p", {}, `Your role (${who.role}) may not use ${page.title}; ask for a merchandiser key.`)));
  } else {
    page.view.render(view, { who, banner: { show: showBanner, hide: hideBanner } });
  }
}

window.addEventListener("hashchange", () => { hideBanner(); render(); });

$("signin-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  signIn($("api-key").value.trim());
});

// a key from earlier in this tab: check it is still good (and its role) before showing anything
if (api.session.key) signIn(api.session.key);
else render();
