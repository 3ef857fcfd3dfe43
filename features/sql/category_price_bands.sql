-- Per category, the unit prices that split its lines (before the as-of date) into the low, mid
-- and high price bands. Unweighted by quantity: a band describes the price points members meet
-- on the shelf, not the volume sold at them.
SELECT
    category,
    PERCENTILE_CONT(${band_q_low}) WITHIN GROUP (ORDER BY unit_price) AS q_low,
    PERCENTILE_CONT(${band_q_high}) WITHIN GROUP (ORDER BY unit_price) AS q_high,
    COUNT(*) AS n_lines
FROM lines
WHERE category IS NOT NULL
  AND unit_price IS NOT NULL
GROUP BY category
