// Small DOM helpers and plain-SVG bar charts (no chart library).
const SVG = "http://www.w3.org/2000/svg";

/** h("div", {class: "x", onclick: fn}, child, "text", ...) */
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  setAttrs(el, attrs);
  append(el, children);
  return el;
}

function setAttrs(el, attrs) {
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith("on") && typeof v === "function") el.addEventListener(k.slice(2), v);
    else if (k === "dataset") Object.assign(el.dataset, v);
    else if (k === "value" && "value" in el) el.value = v;
    else el.setAttribute(k, v === true ? "" : v);
  }
}

function append(el, children) {
  for (const c of children.flat(Infinity)) {
    if (c === undefined || c === null || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
}

function s(tag, attrs = {}, ...children) {
  const el = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) if (v !== undefined && v !== null) el.setAttribute(k, v);
  append(el, children);
  return el;
}

export function fmt(x, digits = 2) {
  if (x === null || x === undefined || Number.isNaN(x)) return "—";
  return Number(x).toLocaleString("en-US", { maximumFractionDigits: digits, minimumFractionDigits: 0 });
}

export function fmtLift(x) {
  return x === null || x === undefined ? "—" : `${Number(x).toFixed(2)}×`;
}

/**
 * Horizontal bar chart. rows: [{label, value, key?, color?, note?}]; returns an <svg>.
 * Each bar group carries data-key / data-value so tests and screen readers see exact numbers.
 */
export function barChart(rows, { width = 460, label = 150, row = 24, format = (v) => fmt(v, 0), title } = {}) {
  const max = Math.max(1e-9, ...rows.map((r) => r.value));
  const barMax = width - label - 70;
  const height = rows.length * row + 6;
  const svg = s("svg", {
    viewBox: `0 0 ${width} ${height}`, width: "100%", role: "img", class: "chart",
    "aria-label": title || "bar chart", preserveAspectRatio: "xMinYMin meet",
  });
  rows.forEach((r, i) => {
    const y = i * row + 3;
    const w = Math.max(r.value > 0 ? 2 : 0, (r.value / max) * barMax);
    const g = s("g", { class: "bar", "data-key": r.key ?? r.label, "data-value": r.value });
    g.append(
      s("title", {}, `${r.label}: ${format(r.value)}`),
      s("text", { x: label - 8, y: y + row / 2, "text-anchor": "end", "dominant-baseline": "middle", class: "bar-label" },
        truncate(r.label, 18)),
      s("rect", { x: label, y: y + 3, width: w, height: row - 8, rx: 3, class: "bar-rect", style: r.color ? `fill:${r.color}` : null }),
      s("text", { x: label + w + 6, y: y + row / 2, "dominant-baseline": "middle", class: "bar-value" },
        format(r.value) + (r.note ? ` ${r.note}` : "")),
    );
    svg.append(g);
  });
  return svg;
}

function truncate(text, n) {
  const t = String(text);
  return t.length > n ? `${t.slice(0, n - 1)}…` : t;
}

export function clear(el) {
  while (el.firstChild) el.firstChild.remove();
  return el;
}

export function kpi(testid, label, value, shown, hint) {
  return h("div", { class: "kpi", "data-testid": testid, "data-value": value ?? "" },
    h("div", { class: "kpi-label" }, label),
    h("div", { class: "kpi-value" }, shown),
    hint ? h("div", { class: "kpi-hint" }, hint) : null);
}
