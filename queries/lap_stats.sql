-- lap_stats: per car and lap, mean speed and RPM, top speed and the number of samples.
-- A car's lap closes when the watermark passes the first sample of its next lap, or after the
-- inactivity gap (the car retired, or the session ended). Samples with no lap are left out.
SELECT session, driver, lap,
       avg(speed) AS mean_speed,
       avg(rpm) AS mean_rpm,
       max(speed) AS max_speed,
       count(*) AS samples,
       min(ts) AS lap_start,
       max(ts) AS last_sample
FROM telemetry
WHERE lap IS NOT NULL
GROUP BY session, driver, lap
