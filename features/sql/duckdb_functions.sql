-- Engine shims: the only engine-specific SQL of the feature definitions.
--
-- Every other file in this folder is a single SELECT written in the subset of SQL that DuckDB and
-- Spark SQL (>= 3.4) share: CTEs, window functions, PERCENTILE_CONT ... WITHIN GROUP, CASE, ||.
-- The few operations whose spelling differs between engines go through these functions; a Spark
-- runner registers the same names, e.g.
--   days_between(s, e)    ->  datediff(CAST(e AS DATE), CAST(s AS DATE))
--   ordered_list(v, k)    ->  transform(array_sort(collect_list(struct(k, v))), x -> x.v)
--   empty_text_list()     ->  CAST(array() AS ARRAY<STRING>)
-- Statements are separated by ';' at the end of a line.

-- Whole calendar days from the date of start_ts to the date of end_ts.
CREATE OR REPLACE TEMP MACRO days_between(start_ts, end_ts) AS
    date_diff('day', CAST(start_ts AS DATE), CAST(end_ts AS DATE));

-- Aggregate: the values of a group as a list ordered by sort_key.
CREATE OR REPLACE TEMP MACRO ordered_list(value, sort_key) AS
    list(value ORDER BY sort_key);

CREATE OR REPLACE TEMP MACRO empty_text_list() AS
    CAST([] AS VARCHAR[]);
