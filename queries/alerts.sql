-- alerts: what the pit wall should look at, one row per alert: car, lap, time, kind,
-- severity (critical: the car is hurt; warning: the data is) and a detail for people. The
-- union of the sample-level alerts (within seconds) and the lap-level ones (when a lap
-- closes). The dashboard's alert list and `pitwall watch alerts` show it.
SELECT session, driver, lap, ts, kind, severity, detail FROM sample_alerts
UNION ALL
SELECT session, driver, lap, ts, kind, severity, detail FROM lap_alerts
