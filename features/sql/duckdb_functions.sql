-- Engine shims: the only engine-specific SQL of the feature definitions.
--
-- Every other file in this folder is a single SELECT written in the subset of SQL that DuckDB and
-- Spark SQL (>= 3.4) share: CTEs, window functions, PERCENTILE_CONT ... WITHIN GROUP, CASE, ||.
-- The few operations whose spelling differs between engines go through these functions; a Spark
-- runner registers the same names, e.g.
--   days_between(s, e)    ->  datediff(CAST(e AS DATE), CAST(s AS DATE))
--   ordered_list(v, k)    ->  transform(array_sort(collect_list(struct(k, v))), x -> x.v)
--   empty_text_list()     ->  CAST(array() AS ARRAY<STRING>)
--   exact_sum(v)          ->  the same SQL (it is a macro for its name: one definition)
--   sorted_values(v)      ->  array_sort(collect_list(CAST(v AS DOUBLE)))
--   interpolated_quantile(s, q) -> the same arithmetic with size() and element_at()
-- (recsys/dialect.py holds the Spark spellings and is what a Spark build runs).
-- Statements are separated by ';' at the end of a line.

-- Whole calendar days from the date of start_ts to the date of end_ts.
CREATE OR REPLACE TEMP MACRO days_between(start_ts, end_ts) AS
    date_diff('day', CAST(start_ts AS DATE), CAST(end_ts AS DATE));

-- Aggregate: the values of a group as a list ordered by sort_key.
CREATE OR REPLACE TEMP MACRO ordered_list(value, sort_key) AS
    list(value ORDER BY sort_key);

CREATE OR REPLACE TEMP MACRO empty_text_list() AS
    CAST([] AS VARCHAR[]);

-- Aggregate: the sum of money or quantities, exact to a millionth: added as integers, so that the
-- result does not depend on the order the engine adds the lines in (a plain SUM of doubles does,
-- in the last bit, and members tied on monetary value would then rank differently). NULL for none.
CREATE OR REPLACE TEMP MACRO exact_sum(value) AS
    CAST(SUM(CAST(round(value * 1000000) AS BIGINT)) AS DOUBLE) / 1000000;

-- Aggregate: the group's non-NULL values as an ascending list of doubles.
CREATE OR REPLACE TEMP MACRO sorted_values(value) AS
    list_sort(list(CAST(value AS DOUBLE)) FILTER (WHERE value IS NOT NULL));

-- The q-quantile of an ascending list, interpolated linearly between the values at the positions
-- around q * (n - 1): PERCENTILE_CONT's definition, spelt out so that both engines do the same
-- floating-point operations (their own PERCENTILE_CONTs round differently in the last bit, which
-- moves a product whose price sits on a band boundary into another band). NULL for an empty list.
CREATE OR REPLACE TEMP MACRO interpolated_quantile(sorted, q) AS
    CASE WHEN len(sorted) = 0 THEN NULL ELSE
        list_extract(sorted, CAST(floor(CAST(q AS DOUBLE) * (len(sorted) - 1)) AS BIGINT) + 1)
        + (list_extract(sorted, CAST(ceil(CAST(q AS DOUBLE) * (len(sorted) - 1)) AS BIGINT) + 1)
           - list_extract(sorted, CAST(floor(CAST(q AS DOUBLE) * (len(sorted) - 1)) AS BIGINT) + 1))
          * (CAST(q AS DOUBLE) * (len(sorted) - 1) - floor(CAST(q AS DOUBLE) * (len(sorted) - 1)))
    END;
