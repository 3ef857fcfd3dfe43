-- The product base: one row per product (every product of the products table plus any sold
-- product missing from it). The product tags (price band, new, never sold) are declared with their
-- SQL in recsys/tags.py and evaluated over this view (`product_base`); columns starting with _ are
-- helpers for them and are not written out.
WITH
sales AS (
    SELECT
        product_id,
        COUNT(*) AS n_lines,
        COALESCE(exact_sum(quantity), 0) AS quantity,
        COALESCE(exact_sum(amount), 0) AS revenue,
        MIN(ts) AS first_sale,
        MAX(ts) AS last_sale,
        interpolated_quantile(sorted_values(unit_price), 0.5) AS median_unit_price
    FROM lines
    GROUP BY product_id
),
-- Distinct buyers from deduplicated pairs, for the same spilling reason as member occasions.
buyers AS (
    SELECT product_id, COUNT(*) AS n_buyers
    FROM (SELECT DISTINCT product_id, member_id FROM lines) AS product_members
    GROUP BY product_id
),
catalogue AS (
    SELECT
        COALESCE(p.product_id, s.product_id) AS product_id,
        p.category,
        p.brand,
        p.name,
        p.launched_at,
        COALESCE(p.price, s.median_unit_price) AS price,
        s.median_unit_price,
        -- What the product actually sells for places it in its category; a never-sold product
        -- (or one whose lines carry no price) falls back to its list price.
        COALESCE(s.median_unit_price, p.price) AS band_price,
        COALESCE(s.n_lines, 0) AS n_lines,
        COALESCE(s.quantity, 0) AS quantity,
        COALESCE(s.revenue, 0) AS revenue,
        s.first_sale,
        s.last_sale
    FROM products AS p
    FULL OUTER JOIN sales AS s ON s.product_id = p.product_id
)
SELECT
    c.product_id,
    c.category,
    c.brand,
    c.name,
    c.price,
    c.median_unit_price,
    COALESCE(bu.n_buyers, 0) AS n_buyers,
    c.n_lines,
    c.quantity,
    c.revenue,
    c.first_sale,
    c.last_sale,
    c.launched_at,
    c.band_price AS _band_price,
    cb.q_low AS _q_low,
    cb.q_high AS _q_high
FROM catalogue AS c
LEFT JOIN category_price_bands AS cb ON cb.category = c.category
LEFT JOIN buyers AS bu ON bu.product_id = c.product_id
