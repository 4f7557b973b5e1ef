package catalog_test

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/tenantproxy/tenantproxy/catalog"
)

// TestUserChangesReachAnotherInstanceAndRemovalsAreReported is the
// two-proxy case with two catalog clients: the one a proxy holds must
// serve the new verifier within a second of a password change made
// through the other, and report a removal (and only a removal) to its
// watcher.
func TestUserChangesReachAnotherInstanceAndRemovalsAreReported(t *testing.T) {
	e := newEnv(t)
	ctx := ctxT(t)
	e.create(t, "team", catalog.PlanStandard)
	if _, _, err := e.cat.AddUser(ctx, "team", "bob", "bobs-first-password", "member"); err != nil {
		t.Fatal(err)
	}
	proxySide := openCatalog(t, e.dsn, nil)
	removed := make(chan string, 10)
	stop := proxySide.WatchRemovedUsers(func(tenant, user string) { removed <- tenant + "/" + user })
	defer stop()
	before, err := proxySide.User(ctx, "team", "bob")
	if err != nil {
		t.Fatal(err)
	}

	if pw, err := e.cat.SetPassword(ctx, "team", "bob", ""); err != nil || len(pw) < 16 {
		t.Fatalf("set a generated password: %q, %v; want a generated password", pw, err)
	}
	deadline := time.Now().Add(time.Second)
	for {
		u, err := proxySide.User(ctx, "team", "bob")
		if err != nil {
			t.Fatal(err)
		}
		if u.Verifier != before.Verifier {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the other instance still serves the old verifier 1 s after the password change")
		}
		time.Sleep(5 * time.Millisecond)
	}

	if err := e.cat.RemoveUser(ctx, "team", "bob"); err != nil {
		t.Fatal(err)
	}
	select {
	case got := <-removed:
		if got != "team/bob" {
			t.Fatalf("removal reported as %q; want team/bob", got)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the removal of team/bob was not reported to the watcher")
	}
	if _, err := proxySide.User(ctx, "team", "bob"); !errors.Is(err, catalog.ErrNotFound) {
		t.Fatalf("look-up of the removed user: %v; want ErrNotFound", err)
	}
	// The password change came before the removal in the same stream: had
	// it been reported, it would have been read first.
	if len(removed) != 0 {
		t.Fatalf("more reports than the one removal: %q", <-removed)
	}
}

func TestUserListPasswdRemoveRefuseServiceLoginsAndMissingOnes(t *testing.T) {
	e := newEnv(t)
	ctx := ctxT(t)
	e.create(t, "crew", catalog.PlanFree)
	if _, _, err := e.cat.AddUser(ctx, "crew", "carol", "carols-password", "member"); err != nil {
		t.Fatal(err)
	}
	if err := e.cat.EnsureServiceUser(ctx, "crew", "chatapi", "service-secret-password"); err != nil {
		t.Fatal(err)
	}
	us, err := e.cat.ListUsers(ctx, "crew")
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, u := range us {
		if u.Verifier != "" || u.CreatedAt.IsZero() {
			t.Errorf("listed %+v; want no verifier and a creation time", u)
		}
		names = append(names, u.Username+":"+u.Role)
	}
	if got := strings.Join(names, ","); got != "admin:admin,carol:member" {
		t.Fatalf("ListUsers = %s; want admin:admin,carol:member (people only, by name)", got)
	}

	service := verifierOf(t, e, "crew", "chatapi")
	var ve *catalog.ValidationError
	for _, tc := range []struct {
		name string
		err  error
		want func(error) bool
	}{
		{"passwd of a service login", func() error { _, err := e.cat.SetPassword(ctx, "crew", "chatapi", ""); return err }(),
			func(err error) bool { return errors.As(err, &ve) }},
		{"remove a service login", e.cat.RemoveUser(ctx, "crew", "chatapi"),
			func(err error) bool { return errors.As(err, &ve) }},
		{"passwd of a missing user", func() error { _, err := e.cat.SetPassword(ctx, "crew", "dave", ""); return err }(),
			func(err error) bool { return errors.Is(err, catalog.ErrUserNotFound) }},
		{"remove a missing user", e.cat.RemoveUser(ctx, "crew", "dave"),
			func(err error) bool { return errors.Is(err, catalog.ErrUserNotFound) }},
		{"remove from a missing tenant", e.cat.RemoveUser(ctx, "nobody", "carol"),
			func(err error) bool { return errors.Is(err, catalog.ErrNotFound) && !errors.Is(err, catalog.ErrUserNotFound) }},
		{"list a missing tenant", func() error { _, err := e.cat.ListUsers(ctx, "nobody"); return err }(),
			func(err error) bool { return errors.Is(err, catalog.ErrNotFound) }},
		{"short password", func() error { _, err := e.cat.SetPassword(ctx, "crew", "carol", "short"); return err }(),
			func(err error) bool { return errors.As(err, &ve) && ve.Field == "password" }},
		{"bad user name", e.cat.RemoveUser(ctx, "crew", "Carol"),
			func(err error) bool { return errors.As(err, &ve) && ve.Field == "user name" }},
	} {
		if !tc.want(tc.err) {
			t.Errorf("%s: err = %v", tc.name, tc.err)
		}
	}
	if verifierOf(t, e, "crew", "chatapi") != service {
		t.Fatal("a refused passwd changed the service login's verifier")
	}
}
