package main

import (
	"context"
	"encoding/json"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/tenantproxy/tenantproxy/internal/pgtest"
	"github.com/tenantproxy/tenantproxy/test"
)

// TestServeMeasuresStorageOnSchedule: serve --storage-interval measures
// every tenant's storage, which tenant show gives in both forms.
func TestServeMeasuresStorageOnSchedule(t *testing.T) {
	dsn := pgtest.NewDatabase(t, pgtest.Shared(t))
	t.Setenv("TENANTPROXY_CATALOG_DSN", dsn)
	migrateChat(t)
	mustCLI(t, "tenant", "create", "acme", "--plan", "free")
	mustCLI(t, "tenant", "create", "globex", "--plan", "standard")
	if out := mustCLI(t, "tenant", "show", "globex"); !strings.Contains(out, "not measured yet") {
		t.Fatalf("tenant show before any measurement:\n%s", out)
	}

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() {
		done <- run(ctx, []string{"serve", "--listen", test.FreeAddr(t), "--admin-listen", "", "--drain-timeout", "1s",
			"--storage-interval", "200ms", "--log-level", "warn"}, io.Discard, io.Discard)
	}()
	var shown struct {
		StorageBytes      *int64     `json:"storage_bytes"`
		StorageMeasuredAt *time.Time `json:"storage_measured_at"`
	}
	for deadline := time.Now().Add(20 * time.Second); shown.StorageBytes == nil; {
		if time.Now().After(deadline) {
			t.Fatal("globex's storage not measured within 20 s")
		}
		select {
		case err := <-done:
			t.Fatalf("serve exited: %v", err)
		case <-time.After(200 * time.Millisecond):
		}
		if err := json.Unmarshal([]byte(mustCLI(t, "tenant", "show", "globex", "-o", "json")), &shown); err != nil {
			t.Fatal(err)
		}
	}
	// A schema-tier tenant's empty tables and indexes take some pages.
	if *shown.StorageBytes <= 0 || shown.StorageMeasuredAt == nil {
		t.Errorf("globex: storage_bytes %d, measured at %v; want its schema's size", *shown.StorageBytes, shown.StorageMeasuredAt)
	}
	if out := mustCLI(t, "tenant", "show", "globex"); !strings.Contains(out, "MB of 51200 MB, measured ") {
		t.Errorf("tenant show lacks the storage against the quota:\n%s", out)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("serve stopped with %v", err)
	}
}
