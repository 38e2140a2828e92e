-- lock_up: hard braking: brake on and a deceleration above a threshold (in g) since the car's
-- previous sample. A proxy for lock-ups where wheel speeds are not in the feed.
-- @param min_decel_g = 4.0
SELECT session, driver, lap, ts, prev_speed, speed, decel_g
FROM (
  SELECT session, driver, lap, ts, speed, brake,
         lag(speed) OVER w AS prev_speed,
         (lag(speed) OVER w - speed) / 3.6 / 9.81
           / NULLIF((CAST(ts AS BIGINT) - lag(CAST(ts AS BIGINT)) OVER w) / 1000.0, 0) AS decel_g
  FROM telemetry
  WINDOW w AS (PARTITION BY session, driver ORDER BY ts)
) AS braking
WHERE brake AND decel_g > $min_decel_g
