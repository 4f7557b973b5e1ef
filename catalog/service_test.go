package catalog_test

import (
	"errors"
	"fmt"
	"testing"

	"github.com/tenantproxy/tenantproxy/catalog"
)

func TestEnsureServiceUserIsIdempotentRotatesAndIgnoresMaxUsers(t *testing.T) {
	e := newEnv(t)
	ctx := ctxT(t)
	e.create(t, "full", catalog.PlanFree) // 5 logins, the admin included
	for i := range 4 {
		if _, _, err := e.cat.AddUser(ctx, "full", fmt.Sprintf("member%d", i), "", "member"); err != nil {
			t.Fatal(err)
		}
	}
	if err := e.cat.EnsureServiceUser(ctx, "full", "chatapi", "first-secret-password"); err != nil {
		t.Fatalf("service user on a tenant at its max_users: %v; want it created (services are not people)", err)
	}
	before := verifierOf(t, e, "full", "chatapi")
	if err := e.cat.EnsureServiceUser(ctx, "full", "chatapi", "first-secret-password"); err != nil {
		t.Fatal(err)
	}
	if got := verifierOf(t, e, "full", "chatapi"); got != before {
		t.Fatalf("ensuring the same password rewrote the verifier; want no write")
	}
	if err := e.cat.EnsureServiceUser(ctx, "full", "chatapi", "rotated-secret-password"); err != nil {
		t.Fatal(err)
	}
	if got := verifierOf(t, e, "full", "chatapi"); got == before {
		t.Fatalf("a new password kept the old verifier")
	}
	if err := e.cat.EnsureServiceUser(ctx, "nobody", "chatapi", "first-secret-password"); !errors.Is(err, catalog.ErrNotFound) {
		t.Fatalf("service user of an unknown tenant: %v; want ErrNotFound", err)
	}
	var ve *catalog.ValidationError
	if err := e.cat.EnsureServiceUser(ctx, "full", "chatapi", "short"); !errors.As(err, &ve) {
		t.Fatalf("short password: %v; want a ValidationError", err)
	}
}

func verifierOf(t *testing.T, e *env, tenant, user string) string {
	t.Helper()
	var v string
	if err := connect(t, e.dsn).QueryRow(ctxT(t), "SELECT verifier FROM tenant_users WHERE tenant_id = $1 AND username = $2", tenant, user).Scan(&v); err != nil {
		t.Fatal(err)
	}
	return v
}

func TestServiceUserTakesNoPersonSlotAndNoPersonsLogin(t *testing.T) {
	e := newEnv(t)
	ctx := ctxT(t)
	e.create(t, "roomy", catalog.PlanFree) // 5 logins, the admin included
	if err := e.cat.EnsureServiceUser(ctx, "roomy", "chatapi", "first-secret-password"); err != nil {
		t.Fatal(err)
	}
	for i := range 4 {
		if _, _, err := e.cat.AddUser(ctx, "roomy", fmt.Sprintf("member%d", i), "", "member"); err != nil {
			t.Fatalf("person %d of 5 beside a service login: %v; the service must not take a slot", i+2, err)
		}
	}
	var ve *catalog.ValidationError
	if _, _, err := e.cat.AddUser(ctx, "roomy", "member4", "", "member"); !errors.As(err, &ve) {
		t.Fatalf("sixth person: %v; want the plan's limit", err)
	}

	before := verifierOf(t, e, "roomy", "member0")
	if err := e.cat.EnsureServiceUser(ctx, "roomy", "member0", "takeover-secret-pw"); !errors.As(err, &ve) {
		t.Fatalf("service login over a person's name: %v; want a ValidationError", err)
	}
	if verifierOf(t, e, "roomy", "member0") != before {
		t.Fatal("a service call replaced a person's password")
	}
}
