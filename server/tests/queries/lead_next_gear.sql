-- LEAD: each gear change with the gear that follows it (needs the next row of the car).
SELECT driver, ts, gear, next_gear FROM (
  SELECT driver, ts, gear, lead(gear) OVER (PARTITION BY driver ORDER BY ts) AS next_gear
  FROM telemetry WHERE lap = 2
) AS g
WHERE next_gear <> gear
