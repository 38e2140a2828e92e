-- LIMIT on the stream.
-- fail: LIMIT on an unbounded stream never completes: filter with WHERE instead
SELECT * FROM telemetry LIMIT 10
