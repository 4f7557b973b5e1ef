-- Limits per plan and per tenant (issue "SaaS controls"). A tenant's
-- effective limit is its own override, else its plan's (plan_limits, set
-- with `tenantproxy plan set`), else the built-in default of its plan
-- (catalog.planLimits). Both columns hold JSON objects of limit names to
-- numbers (durations in milliseconds); a missing name means "not set here".
ALTER TABLE tenants ADD COLUMN limits jsonb NOT NULL DEFAULT '{}'
    CHECK (jsonb_typeof(limits) = 'object');

CREATE TABLE plan_limits (
    plan   text PRIMARY KEY,
    limits jsonb NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(limits) = 'object')
);

-- A plan's limits reach every cached tenant: catalog_notify's fallback
-- payload (any table but tenants, backends and tenant_users) purges every
-- process's whole cache, which is cheap for a change this rare.
CREATE FUNCTION plan_limits_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        PERFORM pg_notify('tenantproxy_catalog', 'plan_limits:' || OLD.plan);
    ELSE
        PERFORM pg_notify('tenantproxy_catalog', 'plan_limits:' || NEW.plan);
    END IF;
    RETURN NULL;
END;
$$;
CREATE TRIGGER plan_limits_notify AFTER INSERT OR UPDATE OR DELETE ON plan_limits
    FOR EACH ROW EXECUTE FUNCTION plan_limits_notify();
