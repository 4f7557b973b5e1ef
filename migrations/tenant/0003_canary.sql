{{/*
The isolation canary's table (package canary): the proxy plants one row per
sampled tenant through the proxy and checks, as every sampled tenant, that
only its own row is visible. It is isolated exactly like the chat tables, so
a leak of the model shows here first.
*/}}
CREATE TABLE tenantproxy_canary (
    {{tenantColumn}}
    token      text NOT NULL,
    planted_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY ({{key}}token)
);
{{isolate "tenantproxy_canary"}}
{{grant "tenantproxy_canary"}}
