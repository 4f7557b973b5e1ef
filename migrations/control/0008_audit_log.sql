-- What operators did to tenants that must be provable later, such as a
-- GDPR deletion: when, what kind, which tenant and what went with it. The
-- entry outlives the tenant, so tenant_id is no foreign key; detail holds
-- no personal data (user counts, not names).
CREATE TABLE audit_log (
    id        bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at        timestamptz NOT NULL DEFAULT now(),
    action    text NOT NULL,
    tenant_id text NOT NULL,
    detail    jsonb NOT NULL DEFAULT '{}'
);
CREATE INDEX audit_log_tenant ON audit_log (tenant_id, at);
