-- A parameter with no value.
-- fail: parameter $limit has no value: declare it with `-- @param limit = VALUE` in the query
SELECT driver FROM telemetry WHERE rpm > $limit
