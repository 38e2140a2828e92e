-- A bounded frame: speed averaged over the car's last 4 samples and the next one.
SELECT driver, ts, round(avg(speed) OVER (PARTITION BY driver ORDER BY ts ROWS BETWEEN 4 PRECEDING AND 1 FOLLOWING), 3) AS smooth_speed
FROM telemetry
WHERE lap = 1 AND driver IN ('VER', 'HAM')
