-- lap_anomaly: the old system's anomaly score, per car and lap: how far this lap's
-- (mean speed, mean RPM) is from the previous lap's. NULL on a car's first lap.
-- is_anomaly: the score is above $threshold (the dashboard's slider stores it here, so every
-- screen and Flight subscriber flags the same laps; on the 2023 British GP, 500 flags ~7% of
-- laps: pit, safety-car and traffic laps).
-- Reads lap_stats, so a row comes out as soon as a lap closes.
-- @param threshold = 500.0
SELECT session, driver, lap, mean_speed, mean_rpm, anomaly_score,
       anomaly_score > $threshold AS is_anomaly
FROM (
  SELECT session, driver, lap, mean_speed, mean_rpm,
         sqrt(power(mean_speed - lag(mean_speed) OVER w, 2)
            + power(mean_rpm - lag(mean_rpm) OVER w, 2)) AS anomaly_score
  FROM lap_stats
  WINDOW w AS (PARTITION BY session, driver ORDER BY lap)
) AS scored
