-- speed_1s: one-second tumbling windows per car: samples, speed and RPM statistics.
SELECT session, driver,
       date_bin(INTERVAL '1 second', ts) AS window_start,
       date_bin(INTERVAL '1 second', ts) + INTERVAL '1 second' AS window_end,
       count(*) AS samples,
       avg(speed) AS mean_speed,
       min(speed) AS min_speed,
       max(speed) AS max_speed,
       max(rpm) AS max_rpm
FROM telemetry
GROUP BY session, driver, date_bin(INTERVAL '1 second', ts)
