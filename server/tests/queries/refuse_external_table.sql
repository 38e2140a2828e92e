-- Reading files.
-- fail: CREATE EXTERNAL TABLE is refused: reading files from SQL is not allowed
CREATE EXTERNAL TABLE t STORED AS PARQUET LOCATION '/etc'
