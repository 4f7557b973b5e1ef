package catalog_test

import (
	"testing"
	"time"

	"github.com/tenantproxy/tenantproxy/catalog"
	"github.com/tenantproxy/tenantproxy/migrations"
)

// TestMeasureStorageSharedTierChargesEachTenantItsRows: in the shared
// tier each tenant is charged its own rows' data (plus tuple overhead),
// not its neighbours', and a DELETE lowers the figure at once, though the
// table's files keep their size until VACUUM.
func TestMeasureStorageSharedTierChargesEachTenantItsRows(t *testing.T) {
	e := newEnv(t)
	ctx := ctxT(t)
	a := e.create(t, "tenant-a", catalog.PlanFree).Tenant
	b := e.create(t, "tenant-b", catalog.PlanFree).Tenant
	conn := e.serving(t, migrations.SharedDatabase)
	insert := func(id string, rows int, width int) {
		t.Helper()
		if _, err := conn.Exec(ctx, "SELECT set_config($1, $2, false)", migrations.TenantGUC, id); err != nil {
			t.Fatal(err)
		}
		if _, err := conn.Exec(ctx, "INSERT INTO users (username, display_name) SELECT $1 || g, repeat('x', $2) FROM generate_series(1, $3) g",
			id+"-", width, rows); err != nil {
			t.Fatal(err)
		}
	}
	insert(a.ID, 1000, 1000)
	insert(b.ID, 10, 10)
	storage := func(sub string) int64 {
		t.Helper()
		if ok, err := e.cat.MeasureStorage(ctx, 0); err != nil || !ok {
			t.Fatalf("MeasureStorage = %v, %v", ok, err)
		}
		tn, err := e.cat.Show(ctx, sub)
		if err != nil || tn.StorageBytes == nil {
			t.Fatalf("show %s: %+v, %v", sub, tn, err)
		}
		return *tn.StorageBytes
	}
	// 1,000 rows of a 1,000-byte name (compressed: repeat() compresses
	// well, and PostgreSQL stores it so) and a few short columns.
	if got := storage("tenant-a"); got < 1000*28 || got > 1000*(1000+200) {
		t.Errorf("tenant-a: %d bytes for 1,000 rows of at most ~1.2 kB; want within [28 kB, 1.2 MB]", got)
	}
	if got := storage("tenant-b"); got < 10*(28+10) || got > 10*(28+10+200) {
		t.Errorf("tenant-b: %d bytes for 10 rows of ~10 bytes; want within [380, 2,380]: a neighbour's rows are not its own", got)
	}
	if _, err := conn.Exec(ctx, "SELECT set_config($1, $2, false)", migrations.TenantGUC, a.ID); err != nil {
		t.Fatal(err)
	}
	if _, err := conn.Exec(ctx, "DELETE FROM users"); err != nil {
		t.Fatal(err)
	}
	if got := storage("tenant-a"); got != 0 {
		t.Errorf("tenant-a after deleting its rows: %d bytes; want 0", got)
	}
}

// TestMeasureStorageOneInstancePerRound: a round measured within fresh,
// or one under way elsewhere (the advisory lock held), makes another
// instance's round a no-op.
func TestMeasureStorageOneInstancePerRound(t *testing.T) {
	e := newEnv(t)
	ctx := ctxT(t)
	e.create(t, "tenant-a", catalog.PlanFree)
	if ok, err := e.cat.MeasureStorage(ctx, time.Hour); err != nil || !ok {
		t.Fatalf("first round: %v, %v; want measured", ok, err)
	}
	if ok, err := e.cat.MeasureStorage(ctx, time.Hour); err != nil || ok {
		t.Fatalf("a round within an hour of the last: %v, %v; want skipped", ok, err)
	}
	other := connect(t, e.dsn)
	if _, err := other.Exec(ctx, "SELECT pg_advisory_lock(x'747073746f726167'::bigint)"); err != nil {
		t.Fatal(err)
	}
	if ok, err := e.cat.MeasureStorage(ctx, 0); err != nil || ok {
		t.Fatalf("a round while another instance measures: %v, %v; want skipped", ok, err)
	}
	if _, err := other.Exec(ctx, "SELECT pg_advisory_unlock(x'747073746f726167'::bigint)"); err != nil {
		t.Fatal(err)
	}
	if ok, err := e.cat.MeasureStorage(ctx, 0); err != nil || !ok {
		t.Fatalf("a round after the other instance finished: %v, %v; want measured", ok, err)
	}
}
