-- t_critical: two-sided 95% critical values of Student's t distribution, t(0.975, df), for confidence intervals.
--
-- A cell measured n > 1 times gets mean ± t(0.975, n - 1) x sd / sqrt(n) in `scores`. DuckDB has no t
-- quantile function, so the standard table is inlined (values to 3 decimals; checked against
-- scipy.stats.t.ppf(0.975, df) by test_t_table_matches_scipy in tests/test_report_scores.py). A df between two
-- entries uses the entry below it (a slightly wider, conservative interval); df >= 1000 uses the normal value
-- 1.962 ~ 1.960.
--
--   efficientllm sql "SELECT * FROM t_critical WHERE df <= 5"
CREATE VIEW t_critical AS
SELECT df::INTEGER AS df, t975::DOUBLE AS t975
FROM (VALUES
    (1, 12.706), (2, 4.303), (3, 3.182), (4, 2.776), (5, 2.571), (6, 2.447), (7, 2.365), (8, 2.306),
    (9, 2.262), (10, 2.228), (11, 2.201), (12, 2.179), (13, 2.160), (14, 2.145), (15, 2.131), (16, 2.120),
    (17, 2.110), (18, 2.101), (19, 2.093), (20, 2.086), (21, 2.080), (22, 2.074), (23, 2.069), (24, 2.064),
    (25, 2.060), (26, 2.056), (27, 2.052), (28, 2.048), (29, 2.045), (30, 2.042), (40, 2.021), (60, 2.000),
    (120, 1.980), (1000, 1.962)
) AS t(df, t975);
