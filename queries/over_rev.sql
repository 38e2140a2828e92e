-- over_rev: samples above an RPM threshold (about 1% of a race at 11800).
-- @param threshold = 11800
SELECT session, driver, lap, ts, rpm, gear, speed, throttle
FROM telemetry
WHERE rpm > $threshold
