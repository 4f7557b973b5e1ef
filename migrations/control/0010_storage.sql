-- Storage per tenant (issue "SaaS controls": storage quota → read-only).
-- One proxy instance at a time measures every tenant's storage on a
-- schedule (catalog.MeasureStorage, under an advisory lock) and stores the
-- figure here, where every instance reads it with the tenant's limits:
-- the tenants_notify trigger tells every instance's cache of a change.
-- NULL until first measured. How each tier is measured, and how exact it
-- is: README "Limits and fairness", storage_mb.
ALTER TABLE tenants ADD COLUMN storage_bytes bigint CHECK (storage_bytes >= 0);
ALTER TABLE tenants ADD COLUMN storage_measured_at timestamptz;
