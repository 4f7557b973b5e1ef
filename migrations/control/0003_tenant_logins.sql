-- A database-tier tenant's sessions log in as a role of its own, named like
-- its database, so that what one tenant's code does to its login role
-- (ALTER ROLE CURRENT_USER SET ..., a new password) reaches no other tenant.
-- The role's password, sealed like the backends' secrets; NULL for the
-- other tiers, and for a database-tier tenant until provisioning or
-- `migrate up` gives it its role.
ALTER TABLE tenants ADD COLUMN login_password text;
