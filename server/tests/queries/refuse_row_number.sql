-- Needs the whole history.
-- fail: row_number() needs the whole history of a stream: use lag/lead, or an aggregate over ROWS BETWEEN n PRECEDING AND CURRENT ROW
SELECT driver, row_number() OVER (PARTITION BY driver ORDER BY ts) FROM telemetry
