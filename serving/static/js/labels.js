// Chinese labels of tag values: a copy of features/config.py TAG_LABELS (serving must not import
// features/). Keep the two in step when a tag value is added there.
export const TAG_LABELS = {
  value_segment: {
    important_value: "重要价值",
    important_develop: "重要发展",
    important_retain: "重要保持",
    important_recover: "重要挽留",
    general_value: "一般价值",
    general_develop: "一般发展",
    general_retain: "一般保持",
    general_recover: "一般挽留",
    none: "无消费",
  },
  lifecycle: { new: "新客", active: "活跃", sleeping: "沉睡", lost: "流失", prospect: "潜客" },
  price_sensitivity: { high_end: "高端", mainstream: "大众", price_sensitive: "价格敏感", unknown: "未知" },
  price_band: { low: "低价", mid: "中价", high: "高价", unknown: "未知" },
  is_new: { true: "新品", false: "老品" },
  never_sold: { true: "未售", false: "已售" },
};

// Tag names, bilingual.
export const TAG_NAMES = {
  value_segment: ["价值分层", "Value segment"],
  lifecycle: ["生命周期", "Lifecycle"],
  price_sensitivity: ["价格敏感度", "Price sensitivity"],
  age_group: ["年龄段", "Age group"],
  region: ["地区", "Region"],
  price_band: ["价格带", "Price band"],
};

const COMMON = { unknown: "未知" };

/** "活跃 active" for a known value, the raw value otherwise (regions are already Chinese). */
export function tagLabel(tag, value) {
  if (value === null || value === undefined || value === "") return "未知 unknown";
  const zh = (TAG_LABELS[tag] || {})[value] || COMMON[value];
  return zh ? `${zh} ${value}` : String(value);
}

export function tagName(tag) {
  const [zh, en] = TAG_NAMES[tag] || [tag, tag];
  return zh === en ? zh : `${zh} ${en}`;
}

export const REASON_NAMES = {
  often_buys: "常购 Often buys",
  also_bought: "关联购买 Also bought",
  popular_in_segment: "同群热门 Popular in segment",
  popular: "热门 Popular",
};
