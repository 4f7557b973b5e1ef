-- Tenant moves (tenant move, backend drain). A move is a durable record so
-- that the same command run again after a crash resumes or rolls it back
-- from the step it reached (README "Moving tenants"). At most one
-- unfinished move per tenant.
CREATE TABLE tenant_moves (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant_id   text NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    -- source and target: tier, backend, database, schema (catalog.Place).
    source      jsonb NOT NULL,
    target      jsonb NOT NULL,
    -- planned, provisioned, capturing, copied, holding, switched, keeping, done.
    step        text NOT NULL,
    -- hold_seq numbers the attempts at holding the tenant's transactions,
    -- so that an acknowledgement of an earlier attempt does not count.
    hold_seq    integer NOT NULL DEFAULT 0,
    -- keep_for is --keep-source: the source stays until keep_until,
    -- switch time plus keep_for.
    keep_for    interval NOT NULL DEFAULT '0',
    keep_until  timestamptz,
    hold_ms     double precision,
    started_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX tenant_moves_open ON tenant_moves (tenant_id) WHERE step <> 'done';

-- Every proxy instance (serve) says it is alive here; a move's switch
-- waits for each live one to acknowledge that it holds the tenant.
CREATE TABLE proxy_instances (
    id         text PRIMARY KEY,
    started_at timestamptz NOT NULL DEFAULT now(),
    seen_at    timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE move_acks (
    move_id    bigint NOT NULL REFERENCES tenant_moves (id) ON DELETE CASCADE,
    instance   text NOT NULL,
    hold_seq   integer NOT NULL,
    acked_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (move_id, instance)
);

-- A move's step reaches every proxy within milliseconds (it also polls).
CREATE FUNCTION tenant_moves_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        PERFORM pg_notify('tenantproxy_catalog', 'tenant_moves:' || OLD.tenant_id);
    ELSE
        PERFORM pg_notify('tenantproxy_catalog', 'tenant_moves:' || NEW.tenant_id);
    END IF;
    RETURN NULL;
END;
$$;

CREATE TRIGGER tenant_moves_notify AFTER INSERT OR UPDATE OR DELETE ON tenant_moves
    FOR EACH ROW EXECUTE FUNCTION tenant_moves_notify();
