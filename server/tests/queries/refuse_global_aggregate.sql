-- An aggregate over the whole stream.
-- fail: an aggregate without GROUP BY never closes on an unbounded stream: group by a window, e.g. date_bin(INTERVAL '1 second', ts), or by driver, lap
SELECT count(*) FROM telemetry
