-- sample_alerts: a car's first check of a kind, and the next after $quiet_ms without one, so
-- a sensor stuck for ten seconds is one alert, not forty.
-- @param quiet_ms = 10000
SELECT session, driver, lap, ts, kind, severity, detail
FROM (
  SELECT *, CAST(ts AS BIGINT) - lag(CAST(ts AS BIGINT)) OVER (PARTITION BY session, driver, kind ORDER BY ts) AS quiet
  FROM checks
) AS runs
WHERE quiet IS NULL OR quiet > $quiet_ms
