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
	invalid := func(field string) func(error) bool {
		return func(err error) bool {
			var ve *catalog.ValidationError
			return errors.As(err, &ve) && ve.Field == field
		}
	}
	noUser := func(err error) bool { return errors.Is(err, catalog.ErrUserNotFound) }
	noTenant := func(err error) bool { return errors.Is(err, catalog.ErrNotFound) && !noUser(err) }
	passwd := func(tenant, user, password string) error {
		_, err := e.cat.SetPassword(ctx, tenant, user, password)
		return err
	}
	_, listErr := e.cat.ListUsers(ctx, "nobody")
	for _, tc := range []struct {
		name string
		err  error
		want func(error) bool
	}{
		{"passwd of a service login", passwd("crew", "chatapi", ""), invalid("user")},
		{"remove a service login", e.cat.RemoveUser(ctx, "crew", "chatapi"), invalid("user")},
		{"passwd of a missing user", passwd("crew", "dave", ""), noUser},
		{"remove a missing user", e.cat.RemoveUser(ctx, "crew", "dave"), noUser},
		{"remove from a missing tenant", e.cat.RemoveUser(ctx, "nobody", "carol"), noTenant},
		{"passwd in a missing tenant", passwd("nobody", "carol", ""), noTenant},
		{"list a missing tenant", listErr, noTenant},
		{"short password", passwd("crew", "carol", "short"), invalid("password")},
		{"bad user name", e.cat.RemoveUser(ctx, "crew", "Carol"), invalid("user name")},
	} {
		if !tc.want(tc.err) {
			t.Errorf("%s: err = %v", tc.name, tc.err)
		}
	}
	if verifierOf(t, e, "crew", "chatapi") != service {
		t.Fatal("a refused passwd changed the service login's verifier")
	}
}
