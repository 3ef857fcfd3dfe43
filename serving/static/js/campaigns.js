// 营销活动 Campaigns: create one from an audience (the builder's "create a campaign" button), the list
// with its status, and each campaign's results: conversion per group, the uplift with its 95 % interval,
// ROI and the cumulative conversion plot (plain SVG).
import * as api from "./api.js";
import { tagLabel, tagName } from "./labels.js";
import { clear, fmt, h, kpi } from "./ui.js";

const SVG = "http://www.w3.org/2000/svg";
const COLORS = { treated: "#2563eb", holdout: "#94a3b8", champion: "#2563eb", challenger: "#f97316",
  holdout_challenger: "#cbd5e1" };
const STATUS = { scheduled: "待发送 scheduled", measuring: "测量中 measuring", closed: "已结束 closed" };

const pct = (x, d = 2) => (x === null || x === undefined ? "—" : `${(100 * x).toFixed(d)}%`);

function s(tag, attrs = {}, ...children) {
  const el = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) if (v !== undefined && v !== null) el.setAttribute(k, v);
  for (const c of children) el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return el;
}

export async function render(root) {
  const draft = JSON.parse(sessionStorage.getItem("recsys.campaignDraft") || "null");
  const list = h("div", {}, h("p", { class: "muted" }, "加载中 Loading…"));
  const results = h("div", { "data-testid": "campaign-results" });
  root.append(draft ? createForm(draft, list, results) : h("div", { class: "card muted small", "data-testid": "no-draft" },
    "在「人群包 Audience」页生成人群后点击「创建营销活动」。 Build an audience on the Audience page, then choose “Create a campaign”."),
  h("div", { class: "card" },
    h("div", { class: "result-head" }, h("h2", {}, "营销活动 Campaigns"),
      h("button", { type: "button", id: "campaigns-refresh", onclick: () => load(list, results) }, "刷新 Refresh")),
    list), results);
  await load(list, results);
}

function describeTarget(t) {
  if (!t) return "—";
  if (t.type === "product") return `商品 ${t.product_id}`;
  if (t.type === "attributes") return `新品 ${t.category}${t.brand ? ` · ${t.brand}` : ""}`;
  if (t.type === "picks") return `个性化推荐 top ${t.k} picks (${t.mode})`;
  return `导入 imported ${(t.product_ids || []).join(", ")}${t.category ? ` ${t.category}` : ""}`;
}

function describeFilters(f) {
  return Object.entries(f || {}).map(([t, vs]) => `${tagName(t)}: ${vs.map((v) => tagLabel(t, v)).join(" / ")}`)
    .join("；") || "全部会员 everyone";
}

function createForm(draft, list, results) {
  const today = new Date().toISOString().slice(0, 10);
  const form = h("form", { class: "card", id: "campaign-form", "data-testid": "campaign-form" },
    h("h2", {}, "创建营销活动 New campaign"),
    h("p", { class: "target-desc", "data-testid": "campaign-draft" },
      `${draft.product_id ? `商品 ${draft.product_id}` : `新品 ${draft.attributes.category}`} · ${describeFilters(draft.filters)}`),
    h("div", { class: "grid-form" },
      h("label", {}, "名称 Name", h("input", { id: "c-name", required: true, value: `活动 ${draft.product_id || draft.attributes.category}` })),
      h("label", {}, "人数（含对照） Size (incl. holdout)", h("input", { id: "c-size", type: "number", min: 1, value: draft.size || 1000 })),
      h("label", {}, "对照组比例 Holdout share", h("input", { id: "c-holdout", type: "number", step: "0.01", min: "0.01", max: "0.5", value: "0.1" })),
      h("label", {}, "发送日期 Send date", h("input", { id: "c-send", type: "date", value: today })),
      h("label", {}, "测量天数 Window (days)", h("input", { id: "c-window", type: "number", min: 1, max: 365, value: 30 }))),
    h("div", { class: "actions" }, h("button", { type: "submit", class: "primary", id: "c-create" }, "创建 Create")));
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const body = {
      name: form.querySelector("#c-name").value, size: Number(form.querySelector("#c-size").value),
      holdout_share: Number(form.querySelector("#c-holdout").value), send_date: form.querySelector("#c-send").value,
      window_days: Number(form.querySelector("#c-window").value), filters: draft.filters || {},
    };
    if (draft.product_id) body.product_id = draft.product_id; else body.attributes = draft.attributes;
    if (draft.exclude_bought_within_days !== undefined) body.exclude_bought_within_days = draft.exclude_bought_within_days;
    try {
      const c = await api.createCampaign(body);
      sessionStorage.removeItem("recsys.campaignDraft");
      const b = document.getElementById("banner");
      const removed = Object.entries(c.policy).filter(([k, v]) => typeof v === "number" && v > 0)
        .map(([k, v]) => `${k} ${v}`).join(", ");
      b.textContent = `已创建 Created campaign ${c.id}: 发送 treated ${c.treated}, 对照 holdout ${c.holdout}`
        + (removed ? `; 触达规则排除 removed by the contact policy: ${removed}` : "");
      b.className = "banner ok";
      b.hidden = false;
      form.remove();
      await load(list, results);
    } catch { /* the banner says why */ }
  });
  return form;
}

async function load(list, results) {
  let r;
  try { r = await api.campaigns(); } catch { clear(list).append(h("p", { class: "muted" }, "无法加载 Unavailable")); return; }
  clear(list);
  if (!r.campaigns.length) { list.append(h("p", { class: "muted", "data-testid": "no-campaigns" }, "还没有营销活动 No campaigns yet")); return; }
  list.append(h("table", { class: "table", "data-testid": "campaigns-table" },
    h("thead", {}, h("tr", {}, ...["#", "名称 Name", "目标 Target", "筛选 Filters", "状态 Status", "发送 Send", "结束 Ends",
      "发送人数 Treated", "对照 Holdout", "", ""].map((t) => h("th", {}, t)))),
    h("tbody", {}, ...r.campaigns.map((c) => h("tr", { "data-campaign-id": c.id },
      h("td", { class: "num" }, c.id), h("td", {}, c.name), h("td", { class: "small" }, describeTarget(c.target)),
      h("td", { class: "small" }, describeFilters(c.filters)),
      h("td", { "data-testid": "status" }, STATUS[c.status] || c.status, c.observational ? h("div", { class: "small muted" }, "观察性 observational") : null),
      h("td", {}, c.send_date), h("td", {}, c.window_end),
      h("td", { class: "num" }, fmt(c.treated, 0)), h("td", { class: "num" }, fmt(c.holdout, 0)),
      h("td", {}, c.kind === "imported" ? null : h("button", { type: "button", class: "link", "data-export": c.id,
        onclick: () => download(c.id) }, "导出 Export")),
      h("td", {}, h("button", { type: "button", class: "link", "data-results": c.id,
        onclick: () => showResults(results, c.id) }, "效果 Results")))))));
}

async function download(id) {
  try {
    const name = await api.exportCampaign(id);
    const b = document.getElementById("banner");
    b.textContent = `已下载 Downloaded ${name}（仅发送组，已记入导出记录 treated members only, recorded in the export log）`;
    b.className = "banner ok";
    b.hidden = false;
  } catch { /* the banner says why */ }
}

async function showResults(box, id, params = {}) {
  let r;
  try { r = await api.campaignResults(id, params); } catch { return; }
  clear(box);
  const comp = r.comparisons[0];
  const u = comp && comp.uplift;
  const roiForm = h("form", { class: "inline-form", id: "roi-form" },
    h("label", {}, "单次触达成本 Cost per contact", h("input", { id: "roi-cost", type: "number", step: "0.01", min: 0, value: params.cost_per_contact ?? r.cost_per_contact ?? "" })),
    h("label", {}, "毛利率 Margin", h("input", { id: "roi-margin", type: "number", step: "0.01", min: 0, max: 1, value: params.margin ?? r.margin ?? "" })),
    h("button", { type: "submit" }, "计算 ROI"));
  roiForm.addEventListener("submit", (ev) => {
    ev.preventDefault();
    showResults(box, id, { cost_per_contact: roiForm.querySelector("#roi-cost").value, margin: roiForm.querySelector("#roi-margin").value });
  });
  const groups = Object.entries(r.groups);
  box.append(h("div", { class: "card", "data-testid": "results-card", "data-campaign-id": id },
    h("div", { class: "result-head" }, h("h2", {}, `效果 Results · ${r.name}`),
      r.partial ? h("span", { class: "pill warn", "data-testid": "partial" }, `未结束 partial (to ${r.read_until})`) : null),
    h("div", { class: "kpis" },
      kpi("kpi-uplift", "提升 Uplift", u ? u.estimate : null, u ? `${u.estimate >= 0 ? "+" : ""}${pct(u.estimate)}` : "—",
        u ? `95% CI ${pct(u.low)} … ${pct(u.high)}${u.significant ? " 显著 significant" : " 不显著 not significant"}` : null),
      kpi("kpi-incremental", "增量销售额 Incremental revenue", comp && comp.incremental_revenue ? comp.incremental_revenue.estimate : null,
        comp && comp.incremental_revenue ? fmt(comp.incremental_revenue.estimate, 2) : "—"),
      kpi("kpi-roi", "投资回报 ROI", comp && comp.roi ? comp.roi.roi : null, comp && comp.roi ? pct(comp.roi.roi, 1) : "—",
        comp && comp.roi ? `成本 cost ${fmt(comp.roi.cost, 2)}` : "输入成本与毛利 give cost and margin")),
    u ? intervalBar(u) : null,
    h("table", { class: "table compact", "data-testid": "groups-table" },
      h("thead", {}, h("tr", {}, ...["组 Group", "人数 Members", "购买 Buyers", "转化率 Conversion", "预计 Expected", "销售额 Revenue"].map((t) => h("th", {}, t)))),
      h("tbody", {}, ...groups.map(([name, g]) => h("tr", { "data-group": name },
        h("td", {}, name), h("td", { class: "num" }, fmt(g.members, 0)), h("td", { class: "num" }, fmt(g.buyers, 0)),
        h("td", { class: "num", "data-value": g.conversion }, pct(g.conversion)),
        h("td", { class: "num" }, g.expected_buyers === null ? "—" : fmt(g.expected_buyers, 1)),
        h("td", { class: "num" }, fmt(g.revenue, 2)))))),
    h("div", { "data-testid": "cumulative-plot" }, cumulativePlot(r)),
    roiForm,
    r.notes.length ? h("ul", { class: "notes" }, ...r.notes.map((n) => h("li", {}, n))) : null));
}

function intervalBar(u) {
  const lo = Math.min(u.low, 0);
  const hi = Math.max(u.high, 0);
  const span = Math.max(hi - lo, 1e-9);
  const x = (v) => 20 + ((v - lo) / span) * 420;
  return h("div", { "data-testid": "uplift-interval", "data-low": u.low, "data-high": u.high, "data-estimate": u.estimate },
    s("svg", { viewBox: "0 0 460 40", width: "100%", class: "chart", role: "img", "aria-label": "uplift interval" },
      s("line", { x1: x(0), x2: x(0), y1: 4, y2: 36, stroke: "#64748b", "stroke-dasharray": "3 3" }),
      s("line", { x1: x(u.low), x2: x(u.high), y1: 20, y2: 20, stroke: "#2563eb", "stroke-width": 6, "stroke-linecap": "round" }),
      s("circle", { cx: x(u.estimate), cy: 20, r: 6, fill: "#1e3a8a" }),
      s("text", { x: x(0) + 4, y: 12, class: "bar-value" }, "0")));
}

function cumulativePlot(r) {
  const days = r.cumulative_days.length;
  const width = 520;
  const height = 220;
  const pad = 40;
  const series = Object.entries(r.groups);
  const max = Math.max(1e-6, ...series.flatMap(([, g]) => g.cumulative));
  const svg = s("svg", { viewBox: `0 0 ${width} ${height}`, width: "100%", class: "chart", role: "img",
    "aria-label": "cumulative conversion" });
  svg.append(s("line", { x1: pad, y1: height - pad, x2: width - 10, y2: height - pad, stroke: "#94a3b8" }),
    s("line", { x1: pad, y1: 10, x2: pad, y2: height - pad, stroke: "#94a3b8" }),
    s("text", { x: pad, y: height - 12, class: "bar-label" }, r.cumulative_days[0] || ""),
    s("text", { x: width - 90, y: height - 12, class: "bar-label" }, r.cumulative_days[days - 1] || ""),
    s("text", { x: 2, y: 16, class: "bar-label" }, pct(max, 1)));
  series.forEach(([name, g], i) => {
    const pts = g.cumulative.map((v, d) => {
      const px = pad + (days > 1 ? (d / (days - 1)) : 0) * (width - pad - 10);
      const py = height - pad - (v / max) * (height - pad - 10);
      return `${px.toFixed(1)},${py.toFixed(1)}`;
    }).join(" ");
    svg.append(s("polyline", { points: pts, fill: "none", stroke: COLORS[name] || "#0f172a", "stroke-width": 2,
      "data-series": name, "data-last": g.cumulative[g.cumulative.length - 1] ?? 0 }),
    s("text", { x: width - 160, y: 20 + 16 * i, fill: COLORS[name] || "#0f172a", class: "bar-label" }, `${name} ${pct(g.conversion)}`));
  });
  return svg;
}
