-- Two streams joined.
-- fail: joins are not supported on streams: chain queries instead (FROM another query)
SELECT * FROM telemetry a JOIN telemetry b ON a.driver = b.driver
