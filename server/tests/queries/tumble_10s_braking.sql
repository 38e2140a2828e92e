-- Ten-second windows over the braking samples only, with HAVING.
SELECT driver, date_bin(INTERVAL '10 seconds', ts) AS window_start,
       count(*) AS braking_samples, max(speed) AS entry_speed
FROM telemetry
WHERE brake
GROUP BY driver, date_bin(INTERVAL '10 seconds', ts)
HAVING count(*) >= 5
