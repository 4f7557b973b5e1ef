-- Usage metering for billing: what each tenant used per hour, as each
-- proxy instance counted it. Instances flush additively into their own
-- row (counts add up; peak_connections keeps the instance's highest), and
-- readers sum the instances of an hour. storage_mb is NULL until storage
-- is measured.
CREATE TABLE usage_hourly (
    tenant_id        text NOT NULL,
    hour             timestamptz NOT NULL, -- the start of the hour (UTC)
    instance         text NOT NULL,
    transactions     bigint NOT NULL DEFAULT 0,
    statements       bigint NOT NULL DEFAULT 0,
    server_time_us   bigint NOT NULL DEFAULT 0,
    bytes_in         bigint NOT NULL DEFAULT 0,
    bytes_out        bigint NOT NULL DEFAULT 0,
    peak_connections integer NOT NULL DEFAULT 0,
    storage_mb       bigint,
    PRIMARY KEY (tenant_id, hour, instance)
);
CREATE INDEX usage_hourly_hour ON usage_hourly (hour);
