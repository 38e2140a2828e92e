-- sample_checks: samples that break a rule, per car. `sample_alerts` turns them into alerts.
--   spike      a value no car reads: speed outside 0-400 km/h, RPM outside 0-15,500,
--              throttle outside 0-105 %, gear outside 0-8
--   dropout    no sample from the car for more than $gap_ms, up to 5 minutes (seen on the
--              first sample after; a car silent longer has stopped: retired, in the garage)
--   over_rev   RPM above $rev_limit (the 2023 British GP never passed 13,100)
--   lock_up    braking, the speed reading dips more than $dip_kmh below the sample before
--              and below the higher of the two after (a wheel locking, then gripping again)
--   flat_line  speed unchanged over 8 samples (~2 s) with the brake on for two of them or the
--              gear moving by two (a real car's speed holds only at full throttle on a straight,
--              or at the pit-lane limit $pit_limit km/h), or RPM unchanged over 8 samples while
--              the speed moves: a sensor stuck at its value
--   engine_off RPM 0 over 8 samples while the speed moves: the engine stopped with the car
--              rolling (the 2023 British GP has one: Magnussen's engine failure on lap 32)
-- @param gap_ms = 1600
-- @param rev_limit = 13300
-- @param dip_kmh = 25
-- @param pit_limit = 80
SELECT session, driver, lap, ts, kind,
       CASE WHEN kind IN ('over_rev', 'lock_up', 'engine_off') THEN 'critical' ELSE 'warning' END AS severity,
       detail
FROM (
SELECT session, driver, lap, ts,
       CASE WHEN spike THEN 'spike' WHEN dropout THEN 'dropout' WHEN over_rev THEN 'over_rev'
            WHEN lock_up THEN 'lock_up' WHEN engine_off THEN 'engine_off' ELSE 'flat_line' END AS kind,
       CASE WHEN spike THEN concat('speed ', speed, ' rpm ', rpm, ' throttle ', throttle, ' gear ', gear)
            WHEN dropout THEN concat('no sample for ', gap_ms, ' ms')
            WHEN over_rev THEN concat(rpm, ' rpm')
            WHEN lock_up THEN concat(speed_before, ' > ', speed, ' < ', speed_after, ' km/h braking')
            WHEN engine_off THEN concat('rpm 0 at ', speed, ' km/h')
            WHEN speed_range = 0 THEN concat('speed stuck at ', speed, ' km/h')
            ELSE concat('rpm stuck at ', rpm) END AS detail
FROM (
  SELECT *,
         speed NOT BETWEEN 0 AND 400 OR rpm NOT BETWEEN 0 AND 15500
           OR throttle NOT BETWEEN 0 AND 105 OR gear NOT BETWEEN 0 AND 8 AS spike,
         gap_ms > $gap_ms AND gap_ms <= 300000 AS dropout,
         rpm > $rev_limit AS over_rev,
         brake AND speed_before - speed > $dip_kmh AND speed_after - speed > $dip_kmh AS lock_up,
         lap IS NOT NULL AND ((speed_range = 0 AND speed > 30 AND abs(speed - $pit_limit) > 2
                               AND (braked >= 2 OR gear_range >= 2))
                              OR (rpm_range = 0 AND rpm > 0 AND speed_range > 10)) AS flat_line,
         lap IS NOT NULL AND rpm_range = 0 AND rpm = 0 AND speed_range > 10 AS engine_off
  FROM (
    SELECT session, driver, lap, ts, speed, rpm, throttle, gear, brake,
           CAST(ts AS BIGINT) - lag(CAST(ts AS BIGINT)) OVER w AS gap_ms,
           lag(speed) OVER w AS speed_before,
           greatest(lead(speed, 1) OVER w, lead(speed, 2) OVER w) AS speed_after,
           max(speed) OVER w8 - min(speed) OVER w8 AS speed_range,
           max(rpm) OVER w8 - min(rpm) OVER w8 AS rpm_range,
           max(gear) OVER w8 - min(gear) OVER w8 AS gear_range,
           sum(CAST(brake AS INT)) OVER w8 AS braked
    FROM telemetry
    WINDOW w AS (PARTITION BY session, driver ORDER BY ts),
           w8 AS (PARTITION BY session, driver ORDER BY ts ROWS BETWEEN 7 PRECEDING AND CURRENT ROW)
  ) AS samples
) AS checked
WHERE spike OR dropout OR over_rev OR lock_up OR flat_line OR engine_off
) AS kinds
