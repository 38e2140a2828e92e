-- DDL.
-- fail: CREATE TABLE statements are refused: Pitwall runs read-only queries (SELECT ... FROM ...)
CREATE TABLE laps (lap INT)
