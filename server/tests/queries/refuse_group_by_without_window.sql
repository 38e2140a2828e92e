-- GROUP BY a car but no window.
-- fail: GROUP BY driver never closes on an unbounded stream: also group by a window, e.g. date_bin(INTERVAL '1 second', ts), or by driver, lap
SELECT driver, avg(speed) FROM telemetry GROUP BY driver
