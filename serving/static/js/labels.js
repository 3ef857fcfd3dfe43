// Tag names and value labels come from the served model's tag registry (GET /v1/tags, loaded at
// sign-in): the console spells no tag out itself, so a tag the feature build adds -- a built-in
// one or a retailer's rule -- shows up in the filter form, the profiles and the member view as is.
import * as api from "./api.js";

let registry = new Map(); // tag name -> {name, entity, zh, en, multi, values: [{value, zh, en}]}

/** Fetch the registry of the model being served; the tags, member tags first. */
export async function loadTags() {
  const r = await api.tags();
  registry = new Map(r.tags.map((t) => [t.name, t]));
  return r.tags;
}

/** The member tags, in registry order. */
export function memberTags() {
  return [...registry.values()].filter((t) => t.entity === "member");
}

export function tagInfo(tag) {
  return registry.get(tag);
}

/** "活跃 active" for a labelled value, the value itself otherwise (regions are already Chinese). */
export function valueLabel(v) {
  if (!v) return "未知 unknown";
  return v.zh === v.value ? v.zh : `${v.zh} ${v.value}`;
}

export function tagLabel(tag, value) {
  if (value === null || value === undefined || value === "" || value === "unknown") {
    const t = registry.get(tag);
    const own = t && t.values.find((x) => x.value === "unknown");
    return own ? valueLabel(own) : "未知 unknown";
  }
  const t = registry.get(tag);
  const v = t && t.values.find((x) => x.value === value);
  return v ? valueLabel(v) : String(value);
}

export function tagName(tag) {
  const t = registry.get(tag) || { zh: tag, en: tag };
  return t.zh === t.en ? t.zh : `${t.zh} ${t.en}`;
}

export const REASON_NAMES = {
  often_buys: "常购 Often buys",
  also_bought: "关联购买 Also bought",
  popular_in_segment: "同群热门 Popular in segment",
  popular: "热门 Popular",
};
