// 模型 The model serving now: identity, when it was trained, its training metrics.
import * as api from "./api.js";
import { barChart, clear, fmt, h } from "./ui.js";

export async function render(root) {
  const box = h("div", {}, h("p", { class: "muted" }, "加载中 Loading…"));
  root.append(box);
  let m;
  try { m = await api.model(); } catch { clear(box); return; }
  clear(box);
  const rows = [
    ["模型版本 Model version", m.model_version, "model_version"],
    ["算法 Algorithm", m.model, "model"],
    ["训练数据截至 Trained on data up to", m.trained_on, "trained_on"],
    ["保存时间 Saved at", m.saved_at, "saved_at"],
    ["加载时间 Loaded at", m.loaded_at, "loaded_at"],
    ["训练运行 Run id", m.run_id, "run_id"],
    ["注册模型 Registered model", m.registered_model ? `${m.registered_model} v${m.registry_version}` : null, "registered_model"],
    ["来源 Source", m.source, "source"],
    ["会员数 Members", fmt(m.n_members, 0), "n_members"],
    ["商品数 Products", fmt(m.n_products, 0), "n_products"],
    ["实时新增会员 Live members added", fmt(m.live_members_added, 0), "live_members_added"],
    ["已应用实时事件 Live events applied", fmt(m.events_applied, 0), "events_applied"],
    ["打分方式 Scorer", Object.entries(m.scorer || {}).map(([k, v]) => `${k}: ${typeof v === "object" ? JSON.stringify(v) : v}`).join(", "), "scorer"],
  ];
  const metrics = Object.entries(m.metrics || {});
  const numeric = metrics.filter(([, v]) => typeof v === "number");
  const unit = numeric.filter(([, v]) => v >= 0 && v <= 1);
  box.append(
    h("div", { class: "grid-2" },
      h("div", { class: "card" }, h("h2", {}, "当前模型 Model serving now"),
        h("dl", { class: "kv", "data-testid": "model-info" }, ...rows.flatMap(([k, v, id]) => [
          h("dt", {}, k), h("dd", { "data-field": id }, v ?? "—")]))),
      h("div", { class: "card" }, h("h2", {}, "训练指标 Training metrics"),
        metrics.length
          ? h("table", { class: "table compact", "data-testid": "model-metrics" },
            h("tbody", {}, ...metrics.map(([k, v]) => h("tr", { "data-metric": k },
              h("td", {}, k), h("td", { class: "num" }, typeof v === "number" ? fmt(v, 4) : JSON.stringify(v))))))
          : h("p", { class: "muted" }, "模型没有记录指标 No metrics recorded"),
        unit.length ? barChart(unit.map(([k, v]) => ({ key: k, label: k, value: v })),
          { format: (v) => fmt(v, 3), title: "metrics" }) : null)));
}
