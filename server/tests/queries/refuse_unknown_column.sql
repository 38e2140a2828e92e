-- A typo.
-- fail: unknown column speeed; the input has: brake, distance, driver, drs, gear, lap, rpm, session, session_time, speed, throttle, ts, x, y, z
SELECT speeed FROM telemetry
