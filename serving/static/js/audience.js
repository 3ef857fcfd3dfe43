// 人群包 Audience builder: a product (on sale, or described), size and tag filters in; the
// audience's profile, expected buyers and lift, the CSV download out.
import * as api from "./api.js";
import { tagLabel, tagName, valueLabel } from "./labels.js";
import { barChart, clear, fmt, fmtLift, h, kpi } from "./ui.js";

// kept while the user moves between pages of the console
const st = {
  options: null,
  target: "existing", // or "new"
  product: null, // a ProductInfo once chosen
  results: [],
  lastRequest: null,
  lastResponse: null,
  form: { q: "", searchCategory: "", category: "", price: "", brand: "", size: 100, excludeDays: "", filters: {} },
};

export async function render(root, ctx) {
  const form = h("div", { class: "card form-card" }, h("p", { class: "muted" }, "加载中 Loading…"));
  const result = h("div", { id: "audience-result", class: "result-col" });
  root.append(h("div", { class: "grid-builder" }, form, result));
  if (!st.options) {
    try { st.options = await api.audienceOptions(); } catch { clear(form).append(h("p", {}, "无法加载选项 Options unavailable")); return; }
  }
  renderForm(form, result, ctx);
  if (st.lastResponse) renderResult(result, st.lastRequest, st.lastResponse);
  else result.append(h("div", { class: "card empty" },
    h("h2", {}, "人群画像 Audience profile"),
    h("p", { class: "muted" }, "选择商品与条件后点击「生成人群包」。 Choose a product and filters, then Build audience.")));
}

function categoryOptions(selected, allLabel) {
  const opts = st.options.categories.map((c) => h("option", { value: c, selected: c === selected }, c));
  return allLabel ? [h("option", { value: "" }, allLabel), ...opts] : opts;
}

function renderForm(form, result, ctx) {
  clear(form);
  const f = st.form;
  const tabs = h("div", { class: "segmented", role: "tablist" },
    ...[["existing", "在售商品 Existing product"], ["new", "新品 New product"]].map(([id, label]) =>
      h("button", {
        type: "button", id: `target-${id}`, role: "tab", class: st.target === id ? "on" : null,
        "aria-selected": st.target === id ? "true" : "false",
        onclick: () => { st.target = id; renderForm(form, result, ctx); },
      }, label)));

  let targetBox;
  if (st.target === "existing") {
    const resultsBox = h("div", { id: "product-results", class: "product-results" });
    const doSearch = async () => {
      f.q = qInput.value.trim();
      f.searchCategory = catSel.value;
      try {
        const r = await api.searchProducts(f.q, f.searchCategory, 12);
        st.results = r.products;
        showResults(resultsBox, r.total, () => renderForm(form, result, ctx));
      } catch { /* the banner says why */ }
    };
    const qInput = h("input", { id: "product-q", type: "search", value: f.q, placeholder: "编号或名称 id or name",
      onkeydown: (e) => { if (e.key === "Enter") { e.preventDefault(); doSearch(); } } });
    const catSel = h("select", { id: "product-category", "aria-label": "类目 Category" },
      categoryOptions(f.searchCategory, "全部类目 All categories"));
    targetBox = h("div", { class: "target" },
      h("label", { for: "product-q" }, "查找商品 Find a product"),
      h("div", { class: "row" }, qInput, catSel,
        h("button", { type: "button", id: "product-search", onclick: doSearch }, "搜索 Search")),
      resultsBox,
      h("div", { class: "selected", id: "selected-product" },
        st.product
          ? [h("span", { class: "muted" }, "已选 Selected: "), h("b", {}, st.product.product_id), " ",
            st.product.name || "", h("span", { class: "muted" }, ` · ${st.product.category || ""}`)]
          : h("span", { class: "muted" }, "尚未选择商品 No product chosen")));
    if (st.results.length) showResults(resultsBox, null, () => renderForm(form, result, ctx));
  } else {
    targetBox = h("div", { class: "target" },
      h("p", { class: "muted small" }, "描述一款尚未销售的商品：模型按类目、价格带与品牌为其打分（不支持的模型按同类目参照商品打分）。"
        + " Describe a product not yet on sale; the model scores it from its category, price band and brand"
        + " (a model that cannot: from reference products of its category)."),
      h("div", { class: "fields-3" },
        h("label", {}, "类目 Category", h("select", { id: "new-category" }, categoryOptions(f.category || st.options.categories[0]))),
        h("label", {}, "价格 Price (¥)", h("input", { id: "new-price", type: "number", min: "0", step: "0.01", value: f.price })),
        h("label", {}, "品牌 Brand", h("input", { id: "new-brand", type: "text", list: "brand-list", value: f.brand })),
      ),
      h("datalist", { id: "brand-list" }, st.options.brands.map((b) => h("option", { value: b }))));
  }

  // one fieldset per member tag of the model being served (options, in registry order); a tag
  // nobody holds a value of has nothing to choose and is left out
  const filters = st.options.tags.filter((t) => t.values.some((v) => v.members > 0)).map((tag) =>
    h("fieldset", { class: "filter", "data-tag": tag.name, "data-multi": tag.multi ? "true" : "false" },
      h("legend", {}, tag.zh === tag.en ? tag.zh : `${tag.zh} ${tag.en}`,
        tag.multi ? h("span", { class: "muted small" }, " （任一 any of）") : null),
      ...tag.values.map((v) => h("label", { class: "chip", title: `${v.en}: ${fmt(v.members, 0)}` },
        h("input", { type: "checkbox", name: `filter-${tag.name}`, value: v.value,
          checked: (f.filters[tag.name] || []).includes(v.value) }),
        valueLabel(v), h("span", { class: "muted small count" }, ` ${fmt(v.members, 0)}`)))));

  form.append(
    h("h2", {}, "人群包 Audience builder"),
    tabs,
    targetBox,
    h("div", { class: "fields-2" },
      h("label", {}, "人数 Size", h("input", { id: "size", type: "number", min: "1", max: String(st.options.max_audience), value: f.size })),
      h("label", {}, "排除 N 天内已购 Exclude buyers within days",
        h("input", { id: "exclude-days", type: "number", min: "0", max: "3650", value: f.excludeDays, placeholder: "—" }))),
    h("div", { class: "filters" }, h("div", { class: "section-title" }, "标签筛选 Tag filters ",
      h("span", { class: "muted small" }, "（同一标签内为「或」，不同标签为「且」 OR within a tag, AND across tags）")), ...filters),
    h("div", { class: "actions" },
      h("button", { type: "button", id: "build", class: "primary", onclick: () => build(form, result) }, "生成人群包 Build audience"),
      h("button", { type: "button", id: "download", onclick: () => download(form) }, "下载 CSV Download CSV")),
  );
}

function showResults(box, total, onPick) {
  clear(box);
  if (!st.results.length) { box.append(h("p", { class: "muted" }, "没有匹配的商品 No matching product")); return; }
  box.append(h("table", { class: "table compact" },
    h("thead", {}, h("tr", {}, ...["编号 ID", "名称 Name", "类目 Category", "品牌 Brand", "价格 Price", "购买人数 Buyers", ""].map((t) => h("th", {}, t)))),
    h("tbody", {}, ...st.results.map((p) => h("tr", { class: st.product && st.product.product_id === p.product_id ? "chosen" : null },
      h("td", {}, p.product_id), h("td", {}, p.name || ""), h("td", {}, p.category || ""),
      h("td", {}, p.brand || ""), h("td", { class: "num" }, p.price == null ? "" : fmt(p.price)),
      h("td", { class: "num" }, p.buyers),
      h("td", {}, p.active
        ? h("button", { type: "button", class: "small", "data-product-id": p.product_id,
          onclick: () => { st.product = p; onPick(); } }, "选择 Select")
        : h("span", { class: "muted small" }, "已下架 delisted")))))));
  if (total !== null && total > st.results.length) box.append(h("p", { class: "muted small" }, `共 ${total} 个 ${total} matches; showing ${st.results.length}`));
}

function readForm(form) {
  const f = st.form;
  const val = (id) => { const el = form.querySelector(`#${id}`); return el ? el.value.trim() : ""; };
  f.size = val("size") || "100";
  f.excludeDays = val("exclude-days");
  if (st.target === "new") { f.category = val("new-category"); f.price = val("new-price"); f.brand = val("new-brand"); }
  f.filters = {};
  for (const fs of form.querySelectorAll("fieldset.filter")) {
    const on = [...fs.querySelectorAll("input:checked")].map((i) => i.value);
    if (on.length) f.filters[fs.dataset.tag] = on;
  }
  const body = { size: Number(f.size), filters: f.filters };
  if (f.excludeDays !== "") body.exclude_bought_within_days = Number(f.excludeDays);
  if (st.target === "existing") {
    if (!st.product) return { error: "请先选择商品 Choose a product first" };
    body.product_id = st.product.product_id;
  } else {
    const attributes = { category: f.category };
    if (f.price !== "") attributes.price = Number(f.price);
    if (f.brand !== "") attributes.brand = f.brand;
    body.attributes = attributes;
  }
  return { body };
}

async function build(form, result) {
  const { body, error } = readForm(form);
  if (error) { window.dispatchEvent(new CustomEvent("api-error", { detail: { status: 422, detail: error } })); return; }
  const btn = form.querySelector("#build");
  btn.disabled = true;
  try {
    const resp = await api.audience(body);
    st.lastRequest = body;
    st.lastResponse = resp;
    document.getElementById("banner").hidden = true;
    renderResult(result, body, resp);
  } catch { /* the banner says why */ } finally { btn.disabled = false; }
}

async function download(form) {
  const { body, error } = readForm(form);
  if (error) { window.dispatchEvent(new CustomEvent("api-error", { detail: { status: 422, detail: error } })); return; }
  try {
    const name = await api.exportAudience(body);
    const b = document.getElementById("banner");
    b.textContent = `已下载 Downloaded ${name}（已记入导出记录 recorded in the export log）`;
    b.className = "banner ok";
    b.hidden = false;
  } catch { /* the banner says why */ }
}

function describe(req, resp) {
  if (req.product_id) {
    const p = st.product && st.product.product_id === req.product_id ? st.product : null;
    return `${req.product_id}${p && p.name ? ` ${p.name}` : ""}`;
  }
  const a = req.attributes;
  return `新品 New product · ${a.category}${a.price ? ` · ¥${a.price}` : ""}${a.brand ? ` · ${a.brand}` : ""}`
    + (resp.reference_products.length
      ? ` (参照 reference: ${resp.reference_products.slice(0, 5).join(", ")}${resp.reference_products.length > 5 ? "…" : ""})`
      : " (按属性打分 scored from its attributes)");
}

export function renderResult(result, req, resp) {
  clear(result);
  const p = resp.profile;
  const hasProb = p.expected_buyers !== null && p.expected_buyers !== undefined;
  const kpis = h("div", { class: "kpis" },
    kpi("kpi-size", "人数 Audience size", p.size, fmt(p.size, 0), `可选 eligible ${fmt(p.eligible, 0)}`),
    kpi("kpi-expected", "预计购买人数 Expected buyers", p.expected_buyers, fmt(p.expected_buyers, 2),
      hasProb && p.size ? `转化率 rate ${fmt((100 * p.expected_buyers) / p.size, 1)}%` : "模型未提供概率 no probabilities"),
    kpi("kpi-lift-random", "提升 vs 随机 Lift vs random", p.lift_vs_random, fmtLift(p.lift_vs_random),
      p.random ? `随机 random ${fmt(p.random.expected_buyers, 2)}` : null),
    kpi("kpi-lift-active", "提升 vs 最活跃 Lift vs most active", p.lift_vs_most_active, fmtLift(p.lift_vs_most_active),
      p.most_active ? `最活跃 most active ${fmt(p.most_active.expected_buyers, 2)}` : null),
  );
  const head = h("div", { class: "card" },
    h("div", { class: "result-head" },
      h("h2", {}, "人群画像 Audience profile"),
      h("span", { class: "muted small", "data-testid": "model-version" }, resp.model_version)),
    h("p", { class: "target-desc", "data-testid": "target-desc" }, describe(req, resp)),
    kpis,
    h("div", { class: "actions" }, h("button", { type: "button", id: "create-campaign", class: "primary",
      onclick: () => { sessionStorage.setItem("recsys.campaignDraft", JSON.stringify(req)); location.hash = "campaigns"; } },
    "用此人群创建营销活动 Create a campaign from this audience")),
    resp.notes.length ? h("ul", { class: "notes" }, ...resp.notes.map((n) => h("li", {}, n))) : null);

  const compare = hasProb && p.random && p.most_active
    ? h("div", { class: "card" },
      h("h3", {}, "预计购买人数对比 Expected buyers: this audience vs the same number of members"),
      h("div", { "data-testid": "compare-chart" }, barChart([
        { key: "audience", label: "本人群包 This audience", value: p.expected_buyers, color: "#2563eb" },
        { key: "most_active", label: "最活跃会员 Most active", value: p.most_active.expected_buyers, color: "#94a3b8" },
        { key: "random", label: "随机会员 Random", value: p.random.expected_buyers, color: "#cbd5e1" },
      ], { label: 170, format: (v) => fmt(v, 2), title: "expected buyers compared" })),
      h("p", { class: "muted small" }, "随机 = 人数 × 可选会员的平均购买概率；最活跃 = 可选会员中购买次数最多的同样人数。"
        + " Random = size × mean purchase probability of the eligible members; most active = the same number of eligible members with the most purchases."))
    : h("div", { class: "card muted small", "data-testid": "no-lift" },
      "当前模型未提供校准的购买概率，无法估计购买人数与提升。 The model serving now gives no calibrated purchase probabilities, so expected buyers and lift are not available.");

  const charts = h("div", { class: "profile-grid" },
    ...st.options.tags.map((t) => t.name).filter((t) => p.counts[t]).map((tag) => {
      const rows = Object.entries(p.counts[tag]).sort((a, b) => b[1] - a[1])
        .map(([v, n]) => ({ key: v, label: tagLabel(tag, v), value: n }));
      return h("div", { class: "card chart-card", "data-testid": `profile-${tag}` },
        h("h3", {}, tagName(tag)), barChart(rows, { title: tagName(tag) }));
    }));

  const top = resp.members.slice(0, 15);
  // merchandisers read the purchase probability; the raw model score stays in the CSV export
  const calibrated = top.length > 0 && top.every((m) => m.probability !== null && m.probability !== undefined);
  const valueHead = calibrated ? "购买概率 Purchase probability" : "排序得分 Ranking score (not a probability)";
  const members = h("div", { class: "card" },
    h("h3", {}, `会员名单（前 ${top.length} 名） Members (top ${top.length} of ${resp.members.length})`),
    h("table", { class: "table compact", "data-testid": "audience-members" },
      h("thead", {}, h("tr", {}, h("th", {}, "排名 Rank"), h("th", {}, "会员 Member"), h("th", {}, valueHead))),
      h("tbody", {}, ...top.map((m, i) => h("tr", {},
        h("td", { class: "num" }, i + 1),
        h("td", {}, h("a", { href: `#member?id=${encodeURIComponent(m.member_id)}` }, m.member_id)),
        calibrated
          ? h("td", { class: "num", "data-value": m.probability }, `${fmt(100 * m.probability, 1)}%`)
          : h("td", { class: "num", "data-value": m.score }, fmt(m.score, 4)))))),
    h("p", { class: "muted small" }, calibrated
      ? "购买概率由模型校准；导出的 CSV 另含模型原始得分。 Probabilities are the model's calibrated estimates; the CSV export also carries the raw model score."
      : "当前模型未提供校准概率：得分只用于排序。 The model gives no calibrated probabilities: the score only ranks members."));
  result.append(head, compare, charts, members);
}
