-- lap_health: per car and lap, what the lap-level detectors (`lap_alerts`) compare: the
-- median speed at full throttle (95 % or more), the lowest speed, the lap's length, and how
-- often DRS was eligible (8) and open (10-14). Closes like lap_stats.
SELECT session, driver, lap,
       min(ts) AS lap_start,
       max(ts) AS lap_end,
       CAST(max(ts) AS BIGINT) - CAST(min(ts) AS BIGINT) AS lap_ms,
       median(speed) FILTER (WHERE throttle >= 95) AS full_throttle_speed,
       min(speed) AS min_speed,
       count(*) FILTER (WHERE drs = 8) AS drs_eligible,
       count(*) FILTER (WHERE drs >= 10) AS drs_open
FROM telemetry
WHERE lap IS NOT NULL
GROUP BY session, driver, lap
