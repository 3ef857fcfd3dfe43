// 会员 Member view: who the member is (tags, top categories, last purchase) and what to suggest.
import * as api from "./api.js";
import { REASON_NAMES, memberTags, tagLabel, tagName } from "./labels.js";
import { barChart, clear, fmt, h } from "./ui.js";
const st = { id: "", mode: "discover" };

export function render(root) {
  const fromHash = new URLSearchParams(location.hash.split("?")[1] || "").get("id");
  if (fromHash) st.id = fromHash;
  const out = h("div", { id: "member-result" });
  const input = h("input", { id: "member-id", type: "search", value: st.id, placeholder: "会员编号 member id",
    onkeydown: (e) => { if (e.key === "Enter") { e.preventDefault(); go(); } } });
  const modes = h("div", { class: "segmented", role: "tablist" },
    ...[["discover", "发现新品 Discover"], ["replenish", "补货复购 Replenish"]].map(([m, label]) =>
      h("button", { type: "button", id: `mode-${m}`, role: "tab", class: st.mode === m ? "on" : null,
        "aria-selected": st.mode === m ? "true" : "false",
        onclick: () => { st.mode = m; for (const b of modes.children) b.classList.toggle("on", b.id === `mode-${m}`); if (st.id) go(); } },
      label)));
  const go = async () => {
    st.id = input.value.trim();
    if (!st.id) return;
    await show(out, st.id, st.mode);
  };
  root.append(
    h("div", { class: "card" },
      h("h2", {}, "会员 Member"),
      h("div", { class: "row" }, input, h("button", { type: "button", id: "member-go", class: "primary", onclick: go }, "查看 Look up"), modes),
      h("p", { class: "muted small" }, "发现：只推荐会员没买过的商品；补货：包括常买的商品。 Discover: only products the member never bought; replenish: their regulars too.")),
    out);
  if (st.id) go();
}

async function show(out, id, mode) {
  let profile, picks;
  try {
    [profile, picks] = await Promise.all([api.memberProfile(id), api.memberPicks(id, mode, 10)]);
  } catch { clear(out); return; } // the banner says why; no other member's data stays on screen
  document.getElementById("banner").hidden = true;
  clear(out);
  // every member tag of the model being served, in registry order; a multi-valued one (channel)
  // shows each value it holds
  const order = [...memberTags().map((t) => t.name), ...Object.keys(profile.tags)];
  const tagRows = [...new Set(order)].filter((t) => t in profile.tags).map((t) => {
    const value = profile.tags[t];
    const held = Array.isArray(value) ? value : [value];
    return h("div", { class: "tag-row", "data-testid": `tag-${t}`,
      "data-value": Array.isArray(value) ? value.join(",") : (value ?? "") },
    h("span", { class: "tag-name" }, tagName(t)),
    held.length && held[0] !== null
      ? held.map((v) => h("span", { class: "pill" }, tagLabel(t, v)))
      : h("span", { class: "pill muted" }, tagLabel(t, null)));
  });
  const last = profile.last_purchase;
  const card = h("div", { class: "card member-card", "data-testid": "member-profile" },
    h("div", { class: "result-head" },
      h("h2", {}, `会员 ${profile.member_id}`),
      profile.known ? null : h("span", { class: "pill warn" }, "未知会员 unknown member")),
    h("div", { class: "member-grid" },
      h("div", {}, h("h3", {}, "标签 Tags"), ...tagRows,
        h("div", { class: "tag-row" }, h("span", { class: "tag-name" }, "购买次数 Purchases"),
          h("span", { "data-testid": "purchases" }, `${fmt(profile.purchases, 0)}（${profile.products_bought} 种商品 products）`)),
        h("div", { class: "tag-row", "data-testid": "last-purchase" }, h("span", { class: "tag-name" }, "最近购买 Last purchase"),
          last ? h("span", {}, `${last.name || last.product_id}（${last.product_id}）`,
            last.date ? h("span", { class: "muted", "data-testid": "last-purchase-when" },
              ` ${last.date}，数据截至 ${last.counted_from} 前 ${last.days_ago} 天 — ${last.days_ago} days before ${last.counted_from}`
              + (last.counted_from === profile.as_of ? "（模型数据截止日 the model's data as-of date）" : "（今天 today）")) : null)
            : h("span", { class: "muted" }, "—"))),
      h("div", { "data-testid": "top-categories" }, h("h3", {}, "常购类目 Top categories"),
        profile.top_categories.length
          ? barChart(profile.top_categories.map((c) => ({ key: c.category, label: c.category, value: c.purchases })),
            { width: 380, label: 120, title: "top categories" })
          : h("p", { class: "muted" }, "暂无购买 No purchases yet"))));
  const picksCard = h("div", { class: "card" },
    h("div", { class: "result-head" },
      h("h2", {}, mode === "discover" ? "推荐 Top picks · 发现 Discover" : "推荐 Top picks · 补货 Replenish"),
      h("span", { class: "muted small" }, picks.model_version)),
    picks.fallback ? h("p", { class: "pill warn" }, picks.fallback_reason === "unknown_member"
      ? "未知会员：显示热门商品 Unknown member: showing popular products"
      : "新会员：显示热门商品 New member: showing popular products") : null,
    h("ol", { class: "picks", "data-testid": "picks", "data-mode": mode },
      ...picks.picks.map((p) => h("li", { class: "pick", "data-product-id": p.product_id, "data-reason-code": p.reason_code },
        h("div", { class: "pick-main" },
          h("b", {}, p.name || p.product_id), h("span", { class: "muted small" }, ` ${p.product_id} · ${p.category || ""}`)),
        h("div", { class: "pick-reason" },
          h("span", { class: `reason-chip ${p.reason_code}` }, REASON_NAMES[p.reason_code] || p.reason_code),
          h("span", { class: "reason-zh" }, p.reason), h("span", { class: "muted small reason-en" }, ` ${p.reason_en}`)),
        h("div", { class: "pick-score muted small" }, `得分 score ${fmt(p.score, 3)}`)))));
  out.append(card, picksCard);
}
