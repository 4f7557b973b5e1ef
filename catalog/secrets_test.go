package catalog_test

import (
	"errors"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/tenantproxy/tenantproxy/catalog"
	"github.com/tenantproxy/tenantproxy/catalog/secrets"
	"github.com/tenantproxy/tenantproxy/internal/pgtest"
	"github.com/tenantproxy/tenantproxy/migrations"
)

func keys(t testing.TB, lines ...string) *secrets.Keyring {
	t.Helper()
	k, err := (*secrets.Keyring)(nil).Parse("test", strings.Join(lines, "\n"))
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func openWithKeys(t testing.TB, dsn string, k *secrets.Keyring) *catalog.Catalog {
	t.Helper()
	cat, err := catalog.Open(ctxT(t), dsn, catalog.Options{Secrets: k})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(cat.Close)
	return cat
}

// storedSecrets reads backend main's secret columns as the control database
// holds them.
func storedSecrets(t testing.TB, dsn string) (adminDSN, password string) {
	t.Helper()
	if err := connect(t, dsn).QueryRow(ctxT(t), "SELECT admin_dsn, serving_password FROM backends WHERE name = 'main'").
		Scan(&adminDSN, &password); err != nil {
		t.Fatal(err)
	}
	return adminDSN, password
}

func TestSecretsAreSealedInTheCatalogWhenAKeyIsConfigured(t *testing.T) {
	c := pgtest.StartT(t)
	dsn := pgtest.NewDatabase(t, c)
	a := keys(t, "a="+secrets.Generate())
	if _, err := migrations.Up(ctxT(t), dsn, migrations.Options{Secrets: a}); err != nil {
		t.Fatalf("migrate up with a key: %v", err)
	}
	cat := openWithKeys(t, dsn, a)
	b, err := cat.Backend(ctxT(t), "main")
	if err != nil {
		t.Fatal(err)
	}
	storedDSN, storedPassword := storedSecrets(t, dsn)
	adminPassword := mustParse(t, b.AdminDSN).Password
	for _, stored := range []string{storedDSN, storedPassword} {
		if !strings.HasPrefix(stored, "enc:v1:a:") || strings.Contains(stored, b.ServingPassword) ||
			(adminPassword != "" && strings.Contains(stored, adminPassword)) || strings.Contains(stored, "postgres://") {
			t.Fatalf("stored secret %q: want an enc:v1:a: envelope holding no password in clear", stored)
		}
	}
	// Provisioning and the fan-out open the DSN; the serving role logs in
	// with the opened password.
	if _, err := cat.Create(ctxT(t), catalog.CreateRequest{Subdomain: "sealed", Plan: catalog.PlanStandard}); err != nil {
		t.Fatalf("create with sealed secrets: %v", err)
	}
	cfg := mustParse(t, c.DSN(migrations.SchemaDatabase))
	cfg.User, cfg.Password = b.ServingUser, b.ServingPassword
	conn, err := pgx.ConnectConfig(ctxT(t), cfg)
	if err != nil {
		t.Fatalf("serving role login with the opened password: %v", err)
	}
	conn.Close(ctxT(t))
	if _, err := migrations.Up(ctxT(t), dsn, migrations.Options{Secrets: a}); err != nil {
		t.Fatalf("migrate up again with the key: %v", err)
	}
	// Without the key the fan-out fails, naming the backend.
	_, err = migrations.Up(ctxT(t), dsn, migrations.Options{})
	if !errors.Is(err, secrets.ErrNoKey) || !strings.Contains(err.Error(), "backend main") {
		t.Fatalf("migrate up without the key: %v; want ErrNoKey naming backend main", err)
	}
}

func TestRotateSecretsSealsPlainTextThenMovesFromKeyAToKeyB(t *testing.T) {
	e := newEnv(t) // migrated without a key: plain text, as before encryption
	ctx := ctxT(t)
	plainDSN, plainPassword := storedSecrets(t, e.dsn)
	if secrets.Sealed(plainDSN) || secrets.Sealed(plainPassword) {
		t.Fatal("without a key the catalog sealed its secrets")
	}
	if _, err := e.cat.RotateSecrets(ctx); err == nil {
		t.Fatal("rotation without a key succeeded")
	}

	a, b := "a="+secrets.Generate(), "b="+secrets.Generate()
	withA := openWithKeys(t, e.dsn, keys(t, a))
	if got, err := withA.Backend(ctx, "main"); err != nil || got.ServingPassword != plainPassword {
		t.Fatalf("plain text read with a key configured: %v", err)
	}
	if unsealed, err := withA.UnsealedBackends(ctx); err != nil || len(unsealed) != 1 {
		t.Fatalf("unsealed backends before rotation = %v, %v; want [main]", unsealed, err)
	}
	if names, err := withA.RotateSecrets(ctx); err != nil || len(names) != 1 {
		t.Fatalf("rotation to key a: %v, %v", names, err)
	}
	if d, p := storedSecrets(t, e.dsn); !strings.HasPrefix(d, "enc:v1:a:") || !strings.HasPrefix(p, "enc:v1:a:") || strings.Contains(p, plainPassword) {
		t.Fatalf("after rotation to a the columns hold %q, %q", d, p)
	}

	bThenA := openWithKeys(t, e.dsn, keys(t, b, a))
	if _, err := bThenA.RotateSecrets(ctx); err != nil {
		t.Fatalf("rotation from a to b: %v", err)
	}
	if d, p := storedSecrets(t, e.dsn); !strings.HasPrefix(d, "enc:v1:b:") || !strings.HasPrefix(p, "enc:v1:b:") {
		t.Fatalf("after rotation to b the columns hold %q, %q", d, p)
	}
	onlyB := openWithKeys(t, e.dsn, keys(t, b))
	got, err := onlyB.Backend(ctx, "main")
	if err != nil || got.ServingPassword != plainPassword || got.AdminDSN != plainDSN {
		t.Fatalf("key b alone after rotation: %v; want the original secrets back", err)
	}
	if _, err := onlyB.Create(ctx, catalog.CreateRequest{Subdomain: "rotated", Plan: catalog.PlanEnterprise}); err != nil {
		t.Fatalf("create (database tier, needs the admin DSN) with key b alone: %v", err)
	}
	if _, err := migrations.Up(ctx, e.dsn, migrations.Options{Secrets: keys(t, b)}); err != nil {
		t.Fatalf("migrate up with key b alone: %v", err)
	}

	// The old key alone, a wrong key under b's id, and no key at all are
	// clear errors naming the backend, never its secret.
	cases := []struct {
		name string
		k    *secrets.Keyring
		want error
	}{
		{"old key only", keys(t, a), secrets.ErrNoKey},
		{"wrong key", keys(t, "b="+secrets.Generate()), secrets.ErrWrongKey},
		{"no key", nil, secrets.ErrNoKey},
	}
	for _, tc := range cases {
		cat := openWithKeys(t, e.dsn, tc.k)
		_, err := cat.Backend(ctx, "main")
		if !errors.Is(err, tc.want) || !strings.Contains(err.Error(), "backend main") ||
			strings.Contains(err.Error(), plainPassword) {
			t.Errorf("%s: %v; want %v naming backend main", tc.name, err, tc.want)
		}
		if tc.k != nil {
			if _, err := cat.RotateSecrets(ctx); !errors.Is(err, tc.want) {
				t.Errorf("%s: rotation: %v; want %v", tc.name, err, tc.want)
			}
		}
	}
	if d, _ := storedSecrets(t, e.dsn); !strings.HasPrefix(d, "enc:v1:b:") {
		t.Fatalf("a failed rotation changed the column: %q", d)
	}
}

func mustParse(t testing.TB, dsn string) *pgx.ConnConfig {
	t.Helper()
	cfg, err := pgx.ParseConfig(dsn)
	if err != nil {
		t.Fatal("invalid DSN")
	}
	return cfg
}

func TestReRegisteringABackendSealsItsPlainTextSecrets(t *testing.T) {
	e := newEnv(t) // plain text, as before encryption
	ctx := ctxT(t)
	_, plainPassword := storedSecrets(t, e.dsn)
	withA := openWithKeys(t, e.dsn, keys(t, "a="+secrets.Generate()))
	if _, err := withA.AddBackend(ctx, catalog.AddBackendRequest{Name: "main", DSN: e.cluster.DSN("postgres"), Region: "default"}); err != nil {
		t.Fatalf("re-registering main with a key: %v", err)
	}
	d, p := storedSecrets(t, e.dsn)
	if !strings.HasPrefix(d, "enc:v1:a:") || !strings.HasPrefix(p, "enc:v1:a:") || strings.Contains(p, plainPassword) {
		t.Fatalf("after the write with a key the columns hold %q, %q; want both sealed with a", d, p)
	}
	b, err := withA.Backend(ctx, "main")
	if err != nil || b.ServingPassword != plainPassword {
		t.Fatalf("the serving password changed or does not open: %v", err)
	}
	cfg := mustParse(t, e.cluster.DSN(migrations.SharedDatabase))
	cfg.User, cfg.Password = b.ServingUser, b.ServingPassword
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		t.Fatalf("serving role login after resealing: %v", err)
	}
	conn.Close(ctx)
}

// TestTenantLoginPasswordIsSealedAndRotated: a database-tier tenant's
// login password is stored sealed like the backends' secrets, opened on
// read, resealed by RotateSecrets, and still logs in to its database
// afterwards.
func TestTenantLoginPasswordIsSealedAndRotated(t *testing.T) {
	c := pgtest.StartT(t)
	dsn := pgtest.NewDatabase(t, c)
	ctx := ctxT(t)
	a, b := "a="+secrets.Generate(), "b="+secrets.Generate()
	if _, err := migrations.Up(ctx, dsn, migrations.Options{Secrets: keys(t, a)}); err != nil {
		t.Fatal(err)
	}
	withA := openWithKeys(t, dsn, keys(t, a))
	cr, err := withA.Create(ctx, catalog.CreateRequest{Subdomain: "hooli", Plan: catalog.PlanEnterprise})
	if err != nil {
		t.Fatal(err)
	}
	plain := cr.Tenant.LoginPassword
	stored := func() string {
		var s string
		if err := connect(t, dsn).QueryRow(ctx, "SELECT login_password FROM tenants WHERE id = 'hooli'").Scan(&s); err != nil {
			t.Fatal(err)
		}
		return s
	}
	if s := stored(); len(plain) < 20 || !strings.HasPrefix(s, "enc:v1:a:") || strings.Contains(s, plain) {
		t.Fatalf("login password %d characters, stored %q; want a long password sealed with key a", len(plain), s)
	}
	if _, err := openWithKeys(t, dsn, keys(t, b, a)).RotateSecrets(ctx); err != nil {
		t.Fatal(err)
	}
	if s := stored(); !strings.HasPrefix(s, "enc:v1:b:") {
		t.Fatalf("after rotation to b the login password is stored as %q", s)
	}
	tn, err := openWithKeys(t, dsn, keys(t, b)).Show(ctx, "hooli")
	if err != nil || tn.LoginPassword != plain {
		t.Fatalf("key b alone after rotation: %v; want the original login password back", err)
	}
	cfg, err := pgx.ParseConfig(c.DSN(tn.Database))
	if err != nil {
		t.Fatal(err)
	}
	cfg.User, cfg.Password = tn.LoginRole(), tn.LoginPassword
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		t.Fatalf("login as the tenant's role with the opened password: %v", err)
	}
	conn.Close(ctx)
}
