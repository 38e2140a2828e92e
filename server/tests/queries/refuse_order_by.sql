-- Sorting the stream.
-- fail: ORDER BY speed needs the end of an unbounded stream, which never comes: remove it (rows arrive in event-time order), or order within windows after GROUP BY a window
SELECT driver, speed FROM telemetry ORDER BY speed
