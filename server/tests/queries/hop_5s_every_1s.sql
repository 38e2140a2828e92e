-- Hopping windows: 5 s long, one every second, per car (two cars keep the golden file small).
SELECT w AS window_start, w + INTERVAL '5 seconds' AS window_end, driver,
       count(*) AS samples, round(avg(speed), 3) AS mean_speed
FROM (SELECT unnest(hop(ts, INTERVAL '1 second', INTERVAL '5 seconds')) AS w, driver, speed
      FROM telemetry WHERE driver IN ('HAM', 'VER'))
GROUP BY w, driver
