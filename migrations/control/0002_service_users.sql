-- Service logins (the chat API's per-tenant "chatapi" user) are not people:
-- they must not take a plan's max_users slots, and a service must never
-- overwrite the password of a person who happens to have the same name.
ALTER TABLE tenant_users
    ADD COLUMN kind text NOT NULL DEFAULT 'person' CHECK (kind IN ('person', 'service'));
