-- A stream that does not exist.
-- fail: unknown table pit_lane: a query reads telemetry or the name of another query
SELECT * FROM pit_lane
