-- gear_checks: the gear reading against RPM and speed. At full throttle (90 % or more, no
-- brake, above 80 km/h, RPM up to the over-rev limit) RPM / speed is fixed by the gear. Each
-- car's ratio per gear is learnt as the median, over its last 400 such samples in that gear,
-- of the samples taken just after the reading changed to it (a reading stuck on a gear never
-- changes, so what it reads while stuck is not learnt). Once three are learnt, three such
-- samples running off by more than $tolerance (a gear reading stuck while the car shifts, or
-- a slipping gearbox) are a `gearbox` check. Shifting is not: the reading lags a downshift
-- under braking, never a full-throttle run. Nor is a speed or RPM reading that stays the same
-- over the three (a stuck sensor: `flat_line`).
-- @param tolerance = 0.2
-- @param rev_limit = 13300
SELECT session, driver, lap, ts, 'gearbox' AS kind, 'critical' AS severity,
       concat('gear ', gear, ': rpm/speed ', round(ratio, 1), ' vs ', round(usual, 1)) AS detail
FROM (
  SELECT *, lag(off, 1) OVER run AS off_1, lag(off, 2) OVER run AS off_2,
         greatest(speed, lag(speed, 1) OVER run, lag(speed, 2) OVER run)
           - least(speed, lag(speed, 1) OVER run, lag(speed, 2) OVER run) AS speed_moved,
         greatest(rpm, lag(rpm, 1) OVER run, lag(rpm, 2) OVER run)
           - least(rpm, lag(rpm, 1) OVER run, lag(rpm, 2) OVER run) AS rpm_moved
  FROM (
    SELECT *,
           median(CASE WHEN shifted THEN ratio END) OVER g AS usual,
           abs(ratio / median(CASE WHEN shifted THEN ratio END) OVER g - 1) AS off,
           count(CASE WHEN shifted THEN 1 END) OVER g AS learnt
    FROM (
      SELECT session, driver, lap, ts, gear, speed, rpm, rpm / speed AS ratio,
             gear <> lag(gear) OVER (PARTITION BY session, driver ORDER BY ts) AS shifted
      FROM telemetry
      WHERE throttle >= 90 AND NOT brake AND speed > 80 AND speed <= 400
        AND rpm <= $rev_limit AND gear BETWEEN 1 AND 8 AND lap IS NOT NULL
    ) AS samples
    WINDOW g AS (PARTITION BY session, driver, gear ORDER BY ts ROWS BETWEEN 400 PRECEDING AND 1 PRECEDING)
  ) AS ratios
  WINDOW run AS (PARTITION BY session, driver ORDER BY ts)
) AS runs
WHERE learnt >= 3 AND off > $tolerance AND off_1 > $tolerance AND off_2 > $tolerance
  AND speed_moved > 0 AND rpm_moved > 0
