package migrations

import (
	"context"
	"fmt"
	"sync"

	"github.com/jackc/pgx/v5"
)

// Releases before the chat became an app (chatapi/migrations) embedded its
// tables as the proxy's own tenant migrations, legacychat/*.sql, recorded
// in each tenant target's schema_migrations: 0001_chat, 0002_files and, in
// the shared tier, 0004_per_tenant_ids. They stay frozen here, read to
// recognise such a target and to finish one an earlier release left
// halfway, never run on a target that has none of them.
//
// chatApp is what they became: the versions of chatapi/migrations, with the
// checksums of their up files (TestChatAppChecksums keeps them equal).
// TestChatDirectoryMatchesTheEmbeddedChat shows the directory makes in
// every tier the tables the templates made, which is what lets a target
// record them as applied instead of running them.
var chatApp = []struct {
	version        int
	name, checksum string
}{
	{1, "chat", "83e76054b9ee9d1a86d3ae10663303a579b0a2fd369e7542723d2f8498151f2a"},
	{2, "files", "45f35ec8f54406e26eb5b6dad70b539322bd9b5ec4275c14da1dd4e928bbb95a"},
}

// retiredCanaryVersion is where releases before the proxy's own schema
// recorded the canary's table (0003_canary), which proxytables.go now
// makes; its row goes with the chat's, so that no tenant target keeps a
// version of a set the proxy no longer has.
const retiredCanaryVersion = 3

// legacyChatSets renders the frozen templates once per tier.
var legacyChatSets = sync.OnceValues(func() (map[Kind][]Migration, error) {
	out := map[Kind][]Migration{}
	for _, k := range []Kind{KindShared, KindSchema, KindDatabase} {
		ms, err := load("legacychat", tenantFuncs(k))
		if err != nil {
			return nil, err
		}
		out[k] = ms
	}
	return out, nil
})

// legacyChat returns the chat migrations earlier releases applied to a
// tenant target of kind k.
func legacyChat(k Kind) ([]Migration, error) {
	all, err := legacyChatSets()
	if err != nil {
		return nil, err
	}
	return all[k], nil
}

// storesChat reports whether the stored app begins with the chat's
// versions, exactly as chatapi/migrations has them.
func (s *appSet) storesChat() bool {
	if len(s.ms) < len(chatApp) {
		return false
	}
	for i, c := range chatApp {
		if s.ms[i].Version != c.version || s.ms[i].Checksum != c.checksum {
			return false
		}
	}
	return true
}

// adoptLegacyChat turns the chat an earlier release applied to t into the
// chat app's versions, when the catalog stores the chat as its app: the
// legacy versions t lacks are applied first (an install an earlier release
// left halfway), then, in one transaction under t's lock, the legacy rows
// leave schema_migrations and the app's versions enter
// app_schema_migrations. Nothing of the chat runs again and the tables
// keep their rows. A legacy version recorded with other SQL fails t (a
// ChecksumError) and changes nothing. When the catalog's app is not the
// chat (none stored, or another app), t is left as the earlier release
// left it.
func adoptLegacyChat(ctx context.Context, db DB, t Target, set *appSet, opts Options) error {
	if !set.storesChat() {
		return nil
	}
	legacy, err := legacyChat(t.Kind)
	if err != nil {
		return err
	}
	applied, err := t.applied(ctx, db, embeddedLedger)
	if err != nil {
		return err
	}
	versions := []int{retiredCanaryVersion}
	has := false
	for _, m := range legacy {
		_, ok := applied[m.Version]
		has = has || ok
		versions = append(versions, m.Version)
	}
	if !has {
		return nil
	}
	opts.Migrations = func(Kind) ([]Migration, error) { return legacy, nil }
	if _, err := ApplyWith(ctx, db, t, opts); err != nil {
		return err
	}
	err = pgx.BeginFunc(ctx, db, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, "SELECT pg_advisory_xact_lock($1)", t.lockKey()); err != nil {
			return err
		}
		tag, err := tx.Exec(ctx, "DELETE FROM "+t.ledger(embeddedLedger)+" WHERE version = ANY($1)", versions)
		if err != nil || tag.RowsAffected() == 0 {
			// None left: a concurrent runner adopted them first.
			return err
		}
		for _, c := range chatApp {
			if _, err := tx.Exec(ctx, "INSERT INTO "+t.ledger(appLedger)+" (version, name, checksum) VALUES ($1, $2, $3)",
				c.version, c.name, c.checksum); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("migrations: %s: recording the chat of an earlier release as the chat app's versions: %w", t, err)
	}
	return nil
}
