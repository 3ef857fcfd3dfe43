-- One row per product: every product of the products table plus any sold product missing from it.
WITH
sales AS (
    SELECT
        product_id,
        COUNT(*) AS n_lines,
        COALESCE(SUM(quantity), 0) AS quantity,
        COALESCE(SUM(amount), 0) AS revenue,
        MIN(ts) AS first_sale,
        MAX(ts) AS last_sale,
        PERCENTILE_CONT(0.5) WITHIN GROUP (ORDER BY unit_price) AS median_unit_price
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
        s.product_id IS NULL AS never_sold,
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
    CASE
        WHEN cb.category IS NULL OR c.band_price IS NULL THEN 'unknown'
        WHEN c.band_price < cb.q_low THEN 'low'
        WHEN c.band_price > cb.q_high THEN 'high'
        ELSE 'mid'
    END AS price_band,
    COALESCE(bu.n_buyers, 0) AS n_buyers,
    c.n_lines,
    c.quantity,
    c.revenue,
    c.first_sale,
    c.last_sale,
    c.launched_at,
    c.never_sold,
    COALESCE(c.first_sale >= ${new_product_cutoff}, FALSE)
        OR COALESCE(c.launched_at >= ${new_product_cutoff}, FALSE) AS is_new
FROM catalogue AS c
LEFT JOIN category_price_bands AS cb ON cb.category = c.category
LEFT JOIN buyers AS bu ON bu.product_id = c.product_id
