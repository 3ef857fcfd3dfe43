// The JSON API, called with the signed-in key (sessionStorage, sent as X-API-Key).
const KEY = "recsys.apiKey";

export const session = {
  get key() { return sessionStorage.getItem(KEY); },
  set key(value) {
    if (value) sessionStorage.setItem(KEY, value);
    else sessionStorage.removeItem(KEY);
  },
};

export class ApiError extends Error {
  constructor(status, detail) {
    super(`${status}: ${detail}`);
    this.status = status;
    this.detail = detail;
  }
}

function report(err) {
  window.dispatchEvent(new CustomEvent("api-error", { detail: err }));
}

/** fetch() with the key; JSON in and out; failures become an ApiError (also announced to the page). */
export async function request(path, { method = "GET", body, params, raw = false, key } = {}) {
  const url = new URL(path, window.location.origin);
  for (const [k, v] of Object.entries(params || {})) {
    if (v !== undefined && v !== null && v !== "") url.searchParams.set(k, v);
  }
  const headers = { "X-API-Key": key ?? session.key ?? "" };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  let resp;
  try {
    resp = await fetch(url, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  } catch (e) {
    const err = new ApiError(0, `network error: ${e.message}`);
    report(err);
    throw err;
  }
  if (!resp.ok) {
    let detail = resp.statusText;
    try { detail = (await resp.json()).detail ?? detail; } catch { /* not JSON */ }
    const err = new ApiError(resp.status, detail);
    report(err);
    throw err;
  }
  return raw ? resp : resp.json();
}

export const whoami = (key) => request("/v1/whoami", { key });
export const model = () => request("/v1/model");
export const audienceOptions = () => request("/v1/audiences/options");
export const tags = () => request("/v1/tags");
export const audience = (body) => request("/v1/audiences", { method: "POST", body });
export const pastExports = (limit = 50) => request("/v1/audiences/exports", { params: { limit } });
export const searchProducts = (q, category, limit = 20) =>
  request("/v1/products", { params: { q, category, limit } });
export const campaigns = () => request("/v1/campaigns");
export const createCampaign = (body) => request("/v1/campaigns", { method: "POST", body });
export const campaignResults = (id, params) => request(`/v1/campaigns/${id}/results`, { params });

/** GET a campaign's treated list and hand the CSV to the browser as a download; returns the file name. */
export async function exportCampaign(id) {
  const resp = await request(`/v1/campaigns/${id}/export`, { raw: true });
  const blob = await resp.blob();
  const name = ((resp.headers.get("Content-Disposition") || "").match(/filename="([^"]+)"/) || [])[1] || "campaign.csv";
  const href = URL.createObjectURL(blob);
  const a = document.createElement("a");
  a.href = href;
  a.download = name;
  document.body.appendChild(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(href), 10_000);
  return name;
}
export const memberProfile = (id) => request(`/v1/members/${encodeURIComponent(id)}/profile`);
export const memberPicks = (id, mode, k = 10) =>
  request(`/v1/members/${encodeURIComponent(id)}/picks`, { params: { mode, k } });

/** POST /v1/audiences/export and hand the CSV to the browser as a download; returns the file name. */
export async function exportAudience(body) {
  const resp = await request("/v1/audiences/export", { method: "POST", body, raw: true });
  const blob = await resp.blob();
  const cd = resp.headers.get("Content-Disposition") || "";
  const name = (cd.match(/filename="([^"]+)"/) || [])[1] || "audience.csv";
  const href = URL.createObjectURL(blob);
  const a = document.createElement("a");
  a.href = href;
  a.download = name;
  document.body.appendChild(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(href), 10_000);
  return name;
}
