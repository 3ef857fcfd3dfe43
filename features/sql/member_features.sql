-- The member base: one row per member (every member of the members table plus any buyer missing
-- from it) with the aggregates the member tags are computed from. Members without a purchase before
-- the as-of date have counts 0, dates and scores NULL. The tags themselves (value segment,
-- lifecycle, ...) are declared with their SQL in recsys/tags.py and evaluated over this view
-- (`member_base`); columns starting with _ are helpers for them and are not written out.
WITH
purchases AS (
    SELECT
        member_id,
        COUNT(*) AS n_lines,
        COALESCE(exact_sum(amount), 0) AS monetary,
        MIN(ts) AS first_purchase,
        MAX(ts) AS last_purchase
    FROM lines
    GROUP BY member_id
),
-- Distinct occasions counted from pre-deduplicated pairs rather than COUNT(DISTINCT): a plain
-- GROUP BY spills to disk, which matters at tens of millions of lines.
occasions AS (
    SELECT member_id, COUNT(*) AS frequency
    FROM (SELECT DISTINCT member_id, occasion_id FROM lines) AS member_occasions
    GROUP BY member_id
),
buyers AS (
    SELECT
        pu.member_id,
        pu.n_lines,
        pu.monetary,
        pu.first_purchase,
        pu.last_purchase,
        oc.frequency,
        days_between(pu.last_purchase, ${as_of}) AS recency_days,
        days_between(pu.first_purchase, ${as_of}) AS tenure_days,
        COUNT(*) OVER () AS n_buyers
    FROM purchases AS pu
    JOIN occasions AS oc ON oc.member_id = pu.member_id
),
-- Quintile scores 1-5 from each buyer's position in the sorted population. RANK gives tied
-- members the position of the first of them, so ties always share one score (NTILE would split
-- the many one-visit members over several F scores at random). 5.0E0 is a DOUBLE in both engines
-- (Spark reads 5.0 as a DECIMAL, whose division rounds to 6 places and can cross an integer).
scored AS (
    SELECT
        b.*,
        CAST(FLOOR(5.0E0 * (RANK() OVER (ORDER BY recency_days DESC) - 1) / n_buyers) AS INTEGER) + 1 AS r_score,
        CAST(FLOOR(5.0E0 * (RANK() OVER (ORDER BY frequency ASC) - 1) / n_buyers) AS INTEGER) + 1 AS f_score,
        CAST(FLOOR(5.0E0 * (RANK() OVER (ORDER BY monetary ASC) - 1) / n_buyers) AS INTEGER) + 1 AS m_score
    FROM buyers AS b
),
priced AS (
    SELECT
        l.member_id,
        COUNT(*) AS n_priced_lines,
        SUM(CASE WHEN l.unit_price > cb.q_high THEN 1 ELSE 0 END) AS n_high,
        SUM(CASE WHEN l.unit_price < cb.q_low THEN 1 ELSE 0 END) AS n_low
    FROM lines AS l
    JOIN category_price_bands AS cb ON cb.category = l.category
    WHERE l.unit_price IS NOT NULL
    GROUP BY l.member_id
),
category_rank AS (
    SELECT
        member_id,
        category,
        ROW_NUMBER() OVER (PARTITION BY member_id ORDER BY COUNT(*) DESC, category ASC) AS rk
    FROM lines
    WHERE category IS NOT NULL
    GROUP BY member_id, category
),
top_categories AS (
    SELECT member_id, ordered_list(category, rk) AS top_categories
    FROM category_rank
    WHERE rk <= ${top_categories}
    GROUP BY member_id
),
-- "Most used" counts occasions, not lines: one large online basket is one use of the channel.
channel_rank AS (
    SELECT
        member_id,
        channel,
        ROW_NUMBER() OVER (
            PARTITION BY member_id
            ORDER BY COUNT(DISTINCT occasion_id) DESC, COUNT(*) DESC, channel ASC
        ) AS rk
    FROM lines
    WHERE channel IS NOT NULL
    GROUP BY member_id, channel
),
features AS (
    SELECT
        COALESCE(m.member_id, s.member_id) AS member_id,
        m.joined_at,
        s.member_id IS NOT NULL AS has_purchase,
        COALESCE(s.n_lines, 0) AS n_lines,
        COALESCE(s.frequency, 0) AS frequency,
        COALESCE(s.monetary, 0) AS monetary,
        s.monetary / s.frequency AS avg_basket_value,
        s.first_purchase,
        s.last_purchase,
        s.recency_days,
        s.tenure_days,
        s.r_score,
        s.f_score,
        s.m_score,
        s.r_score >= ${rfm_high_score} AS r_high,
        s.f_score >= ${rfm_high_score} AS f_high,
        s.m_score >= ${rfm_high_score} AS m_high,
        COALESCE(pr.n_priced_lines, 0) AS n_priced_lines,
        CAST(pr.n_high AS DOUBLE) / pr.n_priced_lines AS share_high,
        CAST(pr.n_low AS DOUBLE) / pr.n_priced_lines AS share_low,
        COALESCE(tc.top_categories, empty_text_list()) AS top_categories,
        ch.channel AS preferred_channel
    FROM members AS m
    FULL OUTER JOIN scored AS s ON s.member_id = m.member_id
    LEFT JOIN priced AS pr ON pr.member_id = COALESCE(m.member_id, s.member_id)
    LEFT JOIN top_categories AS tc ON tc.member_id = COALESCE(m.member_id, s.member_id)
    LEFT JOIN channel_rank AS ch ON ch.member_id = COALESCE(m.member_id, s.member_id) AND ch.rk = 1
)
SELECT
    member_id,
    joined_at,
    n_lines,
    frequency,
    monetary,
    avg_basket_value,
    first_purchase,
    last_purchase,
    recency_days,
    tenure_days,
    r_score,
    f_score,
    m_score,
    n_priced_lines,
    share_high,
    share_low,
    top_categories,
    preferred_channel,
    has_purchase AS _has_purchase,
    r_high AS _r_high,
    f_high AS _f_high,
    m_high AS _m_high
FROM features
