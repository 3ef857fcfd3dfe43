// 导出记录 Past exports, from the server's audit trail (no member data in it).
import * as api from "./api.js";
import { tagLabel, tagName } from "./labels.js";
import { clear, fmt, h } from "./ui.js";

export async function render(root) {
  const body = h("div", {}, h("p", { class: "muted" }, "加载中 Loading…"));
  root.append(h("div", { class: "card" },
    h("div", { class: "result-head" }, h("h2", {}, "导出记录 Past exports"),
      h("button", { type: "button", id: "exports-refresh", onclick: () => load(body) }, "刷新 Refresh")),
    h("p", { class: "muted small" }, "每次下载 CSV 都会记入审计日志（最新在前）。 Every CSV download is written to the audit log (newest first)."),
    body));
  await load(body);
}

function target(e) {
  if (e.product_id) return e.product_id;
  const a = e.attributes || {};
  return `新品 New · ${a.category || "?"}${a.price ? ` · ¥${a.price}` : ""}${a.brand ? ` · ${a.brand}` : ""}`;
}

function filters(e) {
  const f = e.filters || {};
  const parts = Object.entries(f).map(([t, vs]) => `${tagName(t)}: ${vs.map((v) => tagLabel(t, v)).join(" / ")}`);
  if (e.exclude_bought_within_days !== null && e.exclude_bought_within_days !== undefined) {
    parts.push(`排除 ${e.exclude_bought_within_days} 天内已购 exclude ≤${e.exclude_bought_within_days}d`);
  }
  return parts.join("；") || "—";
}

function scopeText(scope) {
  return Object.entries(scope).map(([t, vs]) => `${tagName(t)}: ${vs.map((v) => tagLabel(t, v)).join(" / ")}`).join("；");
}

async function load(body) {
  let r;
  try { r = await api.pastExports(100); } catch { clear(body).append(h("p", { class: "muted" }, "无法加载 Unavailable")); return; }
  clear(body);
  if (!r.exports.length) { body.append(h("p", { class: "muted", "data-testid": "no-exports" }, "还没有导出 No exports yet")); return; }
  body.append(h("table", { class: "table", "data-testid": "exports-table" },
    h("thead", {}, h("tr", {}, ...["时间 Time (UTC)", "密钥 Key", "商品 Product", "筛选 Filters", "人数 Size", "行数 Rows", "模型 Model"].map((t) => h("th", {}, t)))),
    h("tbody", {}, ...r.exports.map((e) => h("tr", {},
      h("td", {}, (e.time || "").replace("T", " ").replace(/\+00:00$/, "")),
      h("td", {}, e.key_id || "", e.scope ? h("div", { class: "small muted" }, `范围 scope ${scopeText(e.scope)}`) : null),
      h("td", {}, target(e)), h("td", { class: "small" }, filters(e)),
      h("td", { class: "num" }, fmt(e.size, 0)), h("td", { class: "num" }, fmt(e.rows, 0)),
      h("td", { class: "small muted" }, e.model_version || ""))))));
}
