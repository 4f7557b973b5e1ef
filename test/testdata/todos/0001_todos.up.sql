-- A small todo app, written as for a database of its own: tenantproxy adds
-- what each isolation tier needs.
CREATE TABLE todos (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    title      text NOT NULL UNIQUE,
    done       boolean NOT NULL DEFAULT false,
    created_at timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX todos_open ON todos (created_at) WHERE NOT done;
