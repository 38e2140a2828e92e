-- checks: every sample-level check, from `sample_checks` and `gear_checks`, as one stream.
SELECT session, driver, lap, ts, kind, severity, detail FROM sample_checks
UNION ALL
SELECT session, driver, lap, ts, kind, severity, detail FROM gear_checks
