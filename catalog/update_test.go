package catalog_test

import (
	"encoding/json"
	"errors"
	"reflect"
	"testing"
	"time"

	"github.com/tenantproxy/tenantproxy/catalog"
)

func TestUpdateSetsPlanLimitsAndMergesFeaturesSeenByAnotherInstance(t *testing.T) {
	e := newEnv(t)
	ctx := ctxT(t)
	e.create(t, "flagged", catalog.PlanFree)
	other := openCatalog(t, e.dsn, nil)
	if _, err := other.TenantBySubdomain(ctx, "flagged"); err != nil {
		t.Fatal(err)
	}

	start := time.Now()
	got, err := e.cat.Update(ctx, "flagged", catalog.UpdateRequest{Plan: catalog.PlanEnterprise,
		Features: map[string]any{"sso": true, "beta": "x", "seats": json.Number("3")}})
	if err != nil {
		t.Fatal(err)
	}
	// The plan's limits follow the plan; the tier stays: moving tiers
	// moves data, which an update does not do.
	if got.Plan != catalog.PlanEnterprise || got.MaxUsers != 10000 || got.MaxStorageGB != 2000 || got.Tier != catalog.TierShared {
		t.Fatalf("after update: plan %s, max_users %d, max_storage_gb %d, tier %s", got.Plan, got.MaxUsers, got.MaxStorageGB, got.Tier)
	}
	var features map[string]any
	if err := json.Unmarshal(got.Features, &features); err != nil {
		t.Fatal(err)
	}
	want := map[string]any{"file_uploads": false, "audit_log": false, "sso": true, "beta": "x", "seats": float64(3)}
	if !reflect.DeepEqual(features, want) {
		t.Fatalf("features %s; want the free plan's merged with the update: %v", got.Features, want)
	}
	for {
		tn, err := other.TenantBySubdomain(ctx, "flagged")
		if err != nil {
			t.Fatal(err)
		}
		if tn.Plan == catalog.PlanEnterprise && string(tn.Features) == string(got.Features) {
			break
		}
		if time.Since(start) > time.Second {
			t.Fatalf("the other instance still serves plan %s, features %s 1 s after the update", tn.Plan, tn.Features)
		}
		time.Sleep(5 * time.Millisecond)
	}

	// Features alone keep the plan.
	got, err = e.cat.Update(ctx, "flagged", catalog.UpdateRequest{Features: map[string]any{"sso": false}})
	if err != nil || got.Plan != catalog.PlanEnterprise || got.MaxUsers != 10000 {
		t.Fatalf("features-only update: %+v, %v", got, err)
	}

	var verr *catalog.ValidationError
	if _, err := e.cat.Update(ctx, "flagged", catalog.UpdateRequest{Plan: "platinum"}); !errors.As(err, &verr) {
		t.Fatalf("update to an unknown plan: %v; want a ValidationError", err)
	}
	if _, err := e.cat.Update(ctx, "nobody", catalog.UpdateRequest{Plan: catalog.PlanPro}); !errors.Is(err, catalog.ErrNotFound) {
		t.Fatalf("update of an unknown tenant: %v; want ErrNotFound", err)
	}
}

func TestParseFeature(t *testing.T) {
	for _, tt := range []struct {
		in    string
		name  string
		value any
	}{
		{"sso=true", "sso", true},
		{"sso=false", "sso", false},
		{"seats=25", "seats", json.Number("25")},
		{"ratio=0.5", "ratio", json.Number("0.5")},
		{"tier=gold", "tier", "gold"},
		{`flag="true"`, "flag", "true"},
		{"empty=", "empty", ""},
		{"expr=a=b", "expr", "a=b"},
		{"zip=02134x", "zip", "02134x"},
	} {
		name, value, err := catalog.ParseFeature(tt.in)
		if err != nil || name != tt.name || value != tt.value {
			t.Errorf("ParseFeature(%q) = %q, %#v, %v; want %q, %#v", tt.in, name, value, err, tt.name, tt.value)
		}
	}
	for _, bad := range []string{"sso", "=true", " =1"} {
		if _, _, err := catalog.ParseFeature(bad); err == nil {
			t.Errorf("ParseFeature(%q) succeeded; want an error", bad)
		}
	}
}
