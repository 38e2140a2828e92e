-- Lap windows with a filter below and a projection above the aggregate.
SELECT driver, lap, max(speed) AS top_speed, max(gear) AS top_gear, sum(CASE WHEN drs >= 10 THEN 1 ELSE 0 END) AS drs_samples
FROM telemetry
WHERE lap IS NOT NULL AND throttle > 90
GROUP BY driver, lap
