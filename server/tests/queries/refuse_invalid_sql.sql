-- Not SQL.
-- fail: invalid SQL: Expected: an SQL statement, found: SELEC at Line: 3, Column: 1
SELEC driver FROM telemetry
