{{/*
The shared tier's ids came from identity sequences every tenant shares, so
the gaps between a tenant's ids counted the other tenants' inserts. From
here on they are numbered per tenant, each tenant continuing past its
highest id. The other tiers keep their identity columns: their sequences
are the tenant's own.
*/}}
{{perTenantIDs "users.id" "channels.id" "messages.id" "files.id"}}
