-- Purchase lines strictly before the as-of date, with the product's category and the purchase
-- occasion. Every feature reads transactions only through this view, so this WHERE clause is the
-- single place that keeps a purchase on or after the as-of date out of every feature.
SELECT
    t.member_id,
    t.product_id,
    p.category,
    t.ts,
    t.quantity,
    t.amount,
    -- The contract says unit_price = amount / quantity; derive it when an export left it empty.
    COALESCE(t.unit_price, t.amount / NULLIF(t.quantity, 0)) AS unit_price,
    t.channel,
    t.store_id,
    -- A basket id identifies an occasion exactly; without one, the member's calendar day is the
    -- usual proxy (a member rarely makes two separate trips on one day). The prefixes keep a
    -- basket id that happens to look like a date from merging with a day.
    COALESCE('b:' || t.basket_id, 'd:' || CAST(CAST(t.ts AS DATE) AS STRING)) AS occasion_id
FROM transactions AS t
LEFT JOIN products AS p ON p.product_id = t.product_id
WHERE t.ts < ${as_of_ts}
  AND t.member_id IS NOT NULL
  AND t.product_id IS NOT NULL
