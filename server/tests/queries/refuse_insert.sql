-- DML.
-- fail: INSERT statements are refused: Pitwall runs read-only queries (SELECT ... FROM ...)
INSERT INTO telemetry (driver) VALUES ('VER')
