package migrations

import (
	"crypto/md5"
	"encoding/hex"
	"strconv"
)

// Advisory lock keys and LISTEN/NOTIFY channels are one space per
// database in PostgreSQL, so tenants of the shared and schema tiers, who
// share a database, would share them: one tenant's lock 42 would block
// another's, and a listener on "jobs" would hear every tenant's jobs.
// Rather than refuse them, each tenant gets a space of its own by
// construction. NamespaceSchema holds functions with the names and
// argument types of PostgreSQL's advisory lock functions, pg_notify and
// pg_listening_channels; the proxy puts it ahead of pg_catalog in the
// tenant's search_path (router.Route), so that unqualified calls, in the
// client's SQL and in the tenant's functions and triggers alike, reach
// them. They map a lock key to a 64-bit hash of the tenant's namespace and
// the key, and a channel to the tenant's ChannelPrefix and the channel.
// PostgreSQL's own functions stay revoked from PUBLIC there (Harden), so
// only these definer functions reach the database's one space.
//
// The namespace comes from what already is the tenant's isolation
// boundary and what no client can change (the policy refuses SET ROLE
// and changes of the tenant setting in every form): the role the proxy
// SET in the schema tier, else the tenant setting of the shared tier.
// router.Route computes the same namespace from the catalog, and the
// proxy its ChannelPrefix, to rewrite LISTEN, UNLISTEN and NOTIFY
// statements and to strip the prefix from the notifications its clients
// receive.
const NamespaceSchema = "tenantproxy_ns"

// ChannelPrefixLen is the length of every ChannelPrefix: 16 hex digits
// and a dot. A fixed length is what makes prefixes unambiguous: no
// tenant's prefix plus channel can spell another's.
const ChannelPrefixLen = 17

// MaxChannelLen is the longest channel a tenant may name: PostgreSQL's
// limit (NAMEDATALEN-1 bytes) less the prefix.
const MaxChannelLen = 63 - ChannelPrefixLen

// SchemaNamespace and SharedNamespace are the namespaces of a schema-tier
// tenant (its role) and of a shared-tier tenant (its tenant setting), as
// NamespaceSchema's functions compute them.
func SchemaNamespace(role string) string   { return "role:" + role }
func SharedNamespace(tenant string) string { return "tenant:" + tenant }

// ChannelPrefix is the prefix of the server-side names of namespace's
// channels: 64 bits of a digest of it, so the prefix says nothing of the
// tenant. A clash of two tenants' digests is as unlikely as any 64-bit
// collision, and knowing another tenant's prefix gives nothing: every
// channel a client names gets its own prefix in front.
func ChannelPrefix(namespace string) string {
	sum := md5.Sum([]byte(channelDomain + namespace))
	return hex.EncodeToString(sum[:8]) + "."
}

// channelDomain and lockDomain keep the channel prefix and lock keys of
// one namespace unrelated digests.
const (
	channelDomain = "tenantproxy channel "
	lockDomain    = "tenantproxy lock "
)

// advisoryFunctions are PostgreSQL 15's advisory lock functions with a
// key argument; each has a bigint and an (integer, integer) form.
var advisoryFunctions = []struct{ name, returns string }{
	{"pg_advisory_lock", "void"}, {"pg_advisory_lock_shared", "void"},
	{"pg_advisory_unlock", "boolean"}, {"pg_advisory_unlock_shared", "boolean"},
	{"pg_advisory_xact_lock", "void"}, {"pg_advisory_xact_lock_shared", "void"},
	{"pg_try_advisory_lock", "boolean"}, {"pg_try_advisory_lock_shared", "boolean"},
	{"pg_try_advisory_xact_lock", "boolean"}, {"pg_try_advisory_xact_lock_shared", "boolean"},
}

// namespaceStmts create NamespaceSchema and its functions (idempotent).
// The definer functions are owned by the superuser Harden runs as, have
// a fixed search_path and call only pg_catalog's functions, with keys
// and channels no argument can take out of the caller's namespace.
func namespaceStmts() []string {
	s := ident(NamespaceSchema)
	definer := " SECURITY DEFINER SET search_path = pg_catalog, pg_temp"
	stmts := []string{
		"CREATE SCHEMA IF NOT EXISTS " + s,
		"REVOKE ALL ON SCHEMA " + s + " FROM PUBLIC",
		"GRANT USAGE ON SCHEMA " + s + " TO PUBLIC",
		// The caller's namespace: SET ROLE's role (the GUC keeps the outer
		// role inside a definer function), else the tenant setting.
		`CREATE OR REPLACE FUNCTION ` + s + `.namespace() RETURNS text LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $f$
DECLARE r text := current_setting('role'); t text := current_setting(` + quoteLiteral(TenantGUC) + `, true);
BEGIN
	IF r IS NOT NULL AND r <> 'none' THEN RETURN ` + quoteLiteral(SchemaNamespace("")) + ` || r; END IF;
	IF t IS NOT NULL AND t <> '' THEN RETURN ` + quoteLiteral(SharedNamespace("")) + ` || t; END IF;
	RAISE EXCEPTION 'advisory locks and notifications need a tenant context' USING ERRCODE = '42501';
END $f$`,
		`CREATE OR REPLACE FUNCTION ` + s + `.channel_prefix() RETURNS text LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp
AS $f$ SELECT left(md5(` + quoteLiteral(channelDomain) + ` || ` + s + `.namespace()), 16) || '.' $f$`,
		// The key's digest: the first 16 hex digits read as 64 bits.
		`CREATE OR REPLACE FUNCTION ` + s + `.key_digest(key text) RETURNS text LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp
AS $f$ SELECT left(md5(` + quoteLiteral(lockDomain) + ` || ` + s + `.namespace() || ' ' || key), 16) $f$`,
		`CREATE OR REPLACE FUNCTION ` + s + `.pg_notify(channel text, payload text) RETURNS void LANGUAGE plpgsql` + definer + ` AS $f$
BEGIN
	IF channel IS NULL OR channel = '' THEN
		RAISE EXCEPTION 'channel name cannot be empty' USING ERRCODE = '22023';
	END IF;
	IF octet_length(channel) > ` + strconv.Itoa(MaxChannelLen) + ` THEN
		RAISE EXCEPTION 'channel name too long' USING ERRCODE = '22023';
	END IF;
	PERFORM pg_catalog.pg_notify(` + s + `.channel_prefix() || channel, payload);
END $f$`,
		`CREATE OR REPLACE FUNCTION ` + s + `.pg_listening_channels() RETURNS SETOF text LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp
AS $f$ SELECT substr(c, ` + strconv.Itoa(ChannelPrefixLen+1) + `) FROM pg_catalog.pg_listening_channels() c WHERE left(c, ` + strconv.Itoa(ChannelPrefixLen) + `) = ` + s + `.channel_prefix() $f$`,
		// Releases only this server connection's session locks, which in
		// session mode are all the client's own (transaction mode refuses
		// session locks).
		`CREATE OR REPLACE FUNCTION ` + s + `.pg_advisory_unlock_all() RETURNS void LANGUAGE sql` + definer + `
AS $f$ SELECT pg_catalog.pg_advisory_unlock_all() $f$`,
	}
	for _, f := range advisoryFunctions {
		stmts = append(stmts,
			`CREATE OR REPLACE FUNCTION `+s+`.`+f.name+`(key bigint) RETURNS `+f.returns+` LANGUAGE sql`+definer+`
AS $f$ SELECT pg_catalog.`+f.name+`(('x' || `+s+`.key_digest(key::text))::bit(64)::bigint) $f$`,
			`CREATE OR REPLACE FUNCTION `+s+`.`+f.name+`(key1 integer, key2 integer) RETURNS `+f.returns+` LANGUAGE sql`+definer+`
AS $f$ SELECT pg_catalog.`+f.name+`(('x' || left(d, 8))::bit(32)::integer, ('x' || right(d, 8))::bit(32)::integer)
	FROM `+s+`.key_digest(key1 || ',' || key2) d $f$`)
	}
	return stmts
}
