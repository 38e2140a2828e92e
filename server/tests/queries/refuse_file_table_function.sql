-- Reading a file through a table function.
-- fail: read_parquet() is not available: continuous queries cannot read files or call table functions; read telemetry or another query
SELECT * FROM read_parquet('/etc/passwd')
