-- A running average from the start of time.
-- fail: avg() OVER (... ORDER BY ...) has an unbounded frame, which needs the whole history: use ROWS BETWEEN n PRECEDING AND CURRENT ROW
SELECT driver, avg(speed) OVER (PARTITION BY driver ORDER BY ts) FROM telemetry
