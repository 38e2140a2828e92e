-- Writing a file.
-- fail: COPY is refused: writing files from SQL is not allowed
COPY telemetry TO '/tmp/x.parquet'
