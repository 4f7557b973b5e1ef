-- The catalog: backend servers, tenants, tenant login users and the
-- provisioning outbox. Applied to the control database only.

CREATE TABLE backends (
    name             text PRIMARY KEY,
    region           text NOT NULL,
    admin_dsn        text NOT NULL,
    serving_user     text NOT NULL,
    serving_password text NOT NULL,
    capacity         integer NOT NULL DEFAULT 100 CHECK (capacity >= 0),
    shared_database  text NOT NULL,
    schema_database  text NOT NULL,
    created_at       timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE tenants (
    id                      text PRIMARY KEY,
    name                    text NOT NULL,
    subdomain               text NOT NULL UNIQUE,
    isolation_level         text NOT NULL CHECK (isolation_level IN ('shared', 'schema', 'database')),
    plan                    text NOT NULL CHECK (plan IN ('free', 'trial', 'standard', 'pro', 'enterprise')),
    status                  text NOT NULL CHECK (status IN ('provisioning', 'active', 'suspended')),
    data_region             text NOT NULL,
    backend                 text NOT NULL REFERENCES backends (name),
    database                text NOT NULL,
    database_url            text,
    schema_name             text UNIQUE,
    max_users               integer NOT NULL,
    max_storage_gb          integer NOT NULL,
    features                jsonb NOT NULL DEFAULT '{}',
    settings                jsonb NOT NULL DEFAULT '{}',
    created_at              timestamptz NOT NULL DEFAULT now(),
    subscription_expires_at timestamptz
);

-- Two database-tier tenants whose derived names collide must fail loudly,
-- never share a database.
CREATE UNIQUE INDEX tenants_own_database ON tenants (backend, database)
    WHERE isolation_level = 'database';
CREATE INDEX tenants_backend ON tenants (backend);

CREATE TABLE tenant_users (
    tenant_id  text NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    username   text NOT NULL,
    verifier   text NOT NULL,
    role       text NOT NULL CHECK (role IN ('admin', 'member')),
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, username)
);

-- Provisioning events (the welcome email). A row is written in the same
-- transaction that activates the tenant, so an event exists exactly when the
-- tenant does; sent_at records delivery by the Sender.
CREATE TABLE outbox (
    id         bigserial PRIMARY KEY,
    tenant_id  text NOT NULL,
    kind       text NOT NULL,
    payload    jsonb NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    sent_at    timestamptz
);
CREATE INDEX outbox_unsent ON outbox (id) WHERE sent_at IS NULL;

-- Every change to a cached row is announced on channel tenantproxy_catalog
-- as "<table>:<key>" so every process drops its cached copy. The trigger,
-- not the application, sends it: a change made with psql invalidates too.
CREATE FUNCTION catalog_notify() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    r record;
BEGIN
    IF TG_OP = 'DELETE' THEN r := OLD; ELSE r := NEW; END IF;
    IF TG_TABLE_NAME = 'tenants' THEN
        PERFORM pg_notify('tenantproxy_catalog', 'tenants:' || r.subdomain);
        IF TG_OP = 'UPDATE' AND OLD.subdomain <> NEW.subdomain THEN
            PERFORM pg_notify('tenantproxy_catalog', 'tenants:' || OLD.subdomain);
        END IF;
    ELSIF TG_TABLE_NAME = 'backends' THEN
        PERFORM pg_notify('tenantproxy_catalog', 'backends:' || r.name);
    ELSE
        PERFORM pg_notify('tenantproxy_catalog', 'tenant_users:' || r.tenant_id || '/' || r.username);
    END IF;
    RETURN NULL;
END;
$$;

CREATE TRIGGER tenants_notify AFTER INSERT OR UPDATE OR DELETE ON tenants
    FOR EACH ROW EXECUTE FUNCTION catalog_notify();
CREATE TRIGGER backends_notify AFTER INSERT OR UPDATE OR DELETE ON backends
    FOR EACH ROW EXECUTE FUNCTION catalog_notify();
CREATE TRIGGER tenant_users_notify AFTER INSERT OR UPDATE OR DELETE ON tenant_users
    FOR EACH ROW EXECUTE FUNCTION catalog_notify();
