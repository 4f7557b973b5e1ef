-- The adopter's migrations (migrate up --dir), stored here so that every
-- proxy instance, tenant create and migrate up on any machine apply the
-- same app schema. up_sql and down_sql are as written (single-tenant DDL);
-- each tier's form is derived when applied. checksum is the hex SHA-256 of
-- up_sql: a stored version's up SQL never changes. down_sql is NULL when
-- the version has no down file.
CREATE TABLE app_migrations (
    version   bigint PRIMARY KEY CHECK (version > 0),
    name      text NOT NULL,
    up_sql    text NOT NULL,
    down_sql  text,
    checksum  text NOT NULL,
    stored_at timestamptz NOT NULL DEFAULT now()
);
