-- Per category, the unit prices that split its lines (before the as-of date) into the low, mid
-- and high price bands. Unweighted by quantity: a band describes the price points members meet
-- on the shelf, not the volume sold at them.
-- Quantiles by interpolated_quantile (duckdb_functions.sql): PERCENTILE_CONT spelt out, so
-- that DuckDB and Spark put a price on a boundary into the same band.
SELECT
    category,
    interpolated_quantile(prices, ${band_q_low}) AS q_low,
    interpolated_quantile(prices, ${band_q_high}) AS q_high,
    n_lines
FROM (
    SELECT category, sorted_values(unit_price) AS prices, COUNT(*) AS n_lines
    FROM lines
    WHERE category IS NOT NULL
      AND unit_price IS NOT NULL
    GROUP BY category
) AS category_prices
