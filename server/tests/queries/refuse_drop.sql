-- DDL.
-- fail: DROP TABLE statements are refused: Pitwall runs read-only queries (SELECT ... FROM ...)
DROP TABLE telemetry
