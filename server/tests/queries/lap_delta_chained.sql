-- Chained: per-car lap-to-lap change of top speed, from lap_stats.
SELECT driver, lap, max_speed - lag(max_speed) OVER (PARTITION BY driver ORDER BY lap) AS top_speed_delta
FROM lap_stats
