-- lap_alerts: faults seen over a lap, against the car's own recent laps.
--   power_loss  full-throttle speed more than $loss below the median of the car's last six
--               green-flag laps (at least three). Green flag: within 4 % of the car's fastest
--               of its previous ten laps and never below 60 km/h, so pit, safety-car and
--               first laps are neither judged nor part of the reference.
--   drs_fault   DRS eligible on $drs_samples samples or more, never open.
-- @param loss = 0.045
-- @param drs_samples = 4
SELECT session, driver, lap, lap_end AS ts,
       CASE WHEN power_loss THEN 'power_loss' ELSE 'drs_fault' END AS kind,
       CASE WHEN power_loss THEN 'critical' ELSE 'warning' END AS severity,
       CASE WHEN power_loss
            THEN concat('full-throttle speed ', round(full_throttle_speed, 1), ' km/h vs ',
                        round(reference, 1), ' on recent laps')
            ELSE concat('DRS eligible on ', drs_eligible, ' samples, never open') END AS detail
FROM (
  SELECT *,
         reference_laps >= 3 AND lap_ms < 1.08 * best_ms AND min_speed > 60
           AND full_throttle_speed < (1.0 - $loss) * reference AS power_loss,
         drs_eligible >= $drs_samples AND drs_open = 0 AS drs_fault
  FROM (
    SELECT *,
           median(CASE WHEN green THEN full_throttle_speed END) OVER recent AS reference,
           count(CASE WHEN green THEN 1 END) OVER recent AS reference_laps
    FROM (
      SELECT *, lap > 1 AND lap_ms < 1.04 * best_ms AND min_speed > 60 AS green
      FROM (
        SELECT *, min(lap_ms) OVER (PARTITION BY session, driver ORDER BY lap
                                    ROWS BETWEEN 10 PRECEDING AND 1 PRECEDING) AS best_ms
        FROM lap_health
      ) AS paced
    ) AS flagged
    WINDOW recent AS (PARTITION BY session, driver ORDER BY lap ROWS BETWEEN 6 PRECEDING AND 1 PRECEDING)
  ) AS referenced
) AS judged
WHERE power_loss OR drs_fault
