package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/tenantproxy/tenantproxy/internal/pgcluster"
)

const (
	tenant         = "drivers"
	pqUser         = "pqgo" // lib/pq's suite expects its CI's login and database
	pqDatabase     = "pqgo"
	tenantUser     = "alice"
	tenantPassword = "driver-suites-secret"
	directDatabase = "drivers_direct"
)

// suiteSetup is what pgx's testsetup/postgresql_setup.sql creates in its
// test database that its tests rely on, run as a superuser in the direct
// database and in the tenant's own: the tenant's login cannot create
// extensions, and the suites would skip or fail for a missing object
// rather than for the proxy.
const suiteSetup = `create extension hstore;
create extension ltree;
create domain uint64 as numeric(20,0);`

// pqSetup is what lib/pq's CI (testdata/postgres) creates, without TLS:
// its login without a password, and one role per authentication method
// that TestAuth logs in as.
var pqSetup = []string{
	"create role pqgo superuser login",
	"create database pqgo owner pqgo",
	"create role pqgopassword login password 'wordpass'",
	"create role pqgoscram login password 'wordpass'",
	"set password_encryption = md5; create role pqgomd5 login password 'wordpass'",
}

// pqHBA authenticates lib/pq's roles as its CI does, and everyone else as
// pgcluster's own configuration does.
const pqHBA = `local all all                trust
host  all pqgomd5      all md5
host  all pqgopassword all password
host  all pqgoscram    all scram-sha-256
host  all pqgo         all trust
host  all all          all scram-sha-256
`

// conninfo is where a suite connects.
type conninfo struct {
	host, user, password, database string
	port                           int
}

// environment is everything the suites run against: a throwaway cluster
// with the proxy's catalog and a database-tier tenant, and the direct
// baseline's database on the same server.
type environment struct {
	cluster    *pgcluster.Cluster
	binary     string
	catalogDSN string
	direct     conninfo // pgx's baseline
	directPQ   conninfo // lib/pq's baseline
	hbaDir     string
}

func startEnvironment(ctx context.Context, binary string) (_ *environment, err error) {
	hba, err := writeHBA()
	if err != nil {
		return nil, err
	}
	c, err := pgcluster.Start(ctx, pgcluster.Options{Conf: map[string]string{
		"max_connections": "300", "hba_file": filepath.Join(hba, "pg_hba.conf")}})
	if err != nil {
		os.RemoveAll(hba)
		return nil, err
	}
	env := &environment{cluster: c, binary: binary, catalogDSN: c.DSN("tenantproxy"), hbaDir: hba}
	defer func() {
		if err != nil {
			err = errors.Join(err, env.stop())
		}
	}()
	env.direct = conninfo{host: c.Host, port: c.Port, user: pgcluster.SuperUser, password: c.Password, database: directDatabase}
	env.directPQ = conninfo{host: "localhost", port: c.Port, user: pqUser, database: pqDatabase}
	// pgx's aclitem test formats a grant to this role, which must exist.
	for _, stmt := range append([]string{
		"CREATE DATABASE tenantproxy",
		"CREATE DATABASE " + directDatabase,
		`CREATE ROLE " tricky, ' } "" \\ test user " SUPERUSER PASSWORD 'secret'`,
	}, pqSetup...) {
		if err := c.Exec(ctx, "postgres", stmt); err != nil {
			return nil, err
		}
	}
	if err := c.Exec(ctx, directDatabase, suiteSetup); err != nil {
		return nil, err
	}
	if err := env.cli(ctx, "migrate", "up"); err != nil {
		return nil, err
	}
	if err := env.cli(ctx, "tenant", "create", tenant, "--name", "Driver suites", "--plan", "enterprise",
		"--isolation", "database", "--admin-user", tenantUser, "--admin-password", tenantPassword); err != nil {
		return nil, err
	}
	// The suites run many tests with temporary tables in a row, each on a
	// connection of its own, faster than the proxy sees the last one leave:
	// lift the cap on pinned connections, as an operator would for such a
	// tenant (tenant setting max_pinned_conns; -1 is none).
	if err := c.Exec(ctx, "tenantproxy", `UPDATE tenants SET settings = settings || '{"max_pinned_conns": -1}' WHERE subdomain = '`+tenant+`'`); err != nil {
		return nil, err
	}
	db, err := env.tenantDatabase(ctx)
	if err != nil {
		return nil, err
	}
	if err := c.Exec(ctx, db, suiteSetup); err != nil {
		return nil, err
	}
	return env, nil
}

func (e *environment) stop() error {
	defer os.RemoveAll(e.hbaDir)
	return e.cluster.Stop()
}

// writeHBA writes pqHBA where the server, run as the postgres OS user
// when this is root, can read it.
func writeHBA() (string, error) {
	dir, err := os.MkdirTemp("", "driversuites-hba-")
	if err != nil {
		return "", err
	}
	if err := os.Chmod(dir, 0o755); err != nil {
		os.RemoveAll(dir)
		return "", err
	}
	if err := os.WriteFile(filepath.Join(dir, "pg_hba.conf"), []byte(pqHBA), 0o644); err != nil {
		os.RemoveAll(dir)
		return "", err
	}
	return dir, nil
}

// cli runs a tenantproxy command against the catalog, as an operator would.
func (e *environment) cli(ctx context.Context, args ...string) error {
	cmd := exec.CommandContext(ctx, e.binary, append(args, "--catalog-dsn", e.catalogDSN)...)
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("tenantproxy %v: %w\n%s", args, err, out)
	}
	return nil
}

// tenantDatabase is the name of the tenant's own database, from the
// catalog as `tenantproxy tenant show` prints it.
func (e *environment) tenantDatabase(ctx context.Context) (string, error) {
	out, err := exec.CommandContext(ctx, e.binary, "tenant", "show", tenant, "-o", "json", "--catalog-dsn", e.catalogDSN).Output()
	if err != nil {
		return "", fmt.Errorf("tenantproxy tenant show: %w", err)
	}
	var t struct {
		Database string `json:"database"`
	}
	if err := json.Unmarshal(out, &t); err != nil || t.Database == "" {
		return "", fmt.Errorf("tenantproxy tenant show: no database in %s (%v)", out, err)
	}
	return t.Database, nil
}

// proxied is the tenant's login through the proxy at addr. The database
// name is free (serve runs without --database): the tenant's own is used.
func proxied(addr *net.TCPAddr, database string) conninfo {
	return conninfo{host: addr.IP.String(), port: addr.Port, user: tenantUser + "." + tenant, password: tenantPassword, database: database}
}

// proxyProcess is a `tenantproxy serve` started for one pool mode.
type proxyProcess struct {
	cmd  *exec.Cmd
	addr *net.TCPAddr
	done chan struct{}
}

func (e *environment) startProxy(ctx context.Context, mode string) (*proxyProcess, error) {
	addr, err := freeAddr()
	if err != nil {
		return nil, err
	}
	// The suites' setups install hstore and ltree, and their tests ask
	// for them with CREATE EXTENSION IF NOT EXISTS: an operator running
	// such an app allows them.
	cmd := exec.Command(e.binary, "serve", "--catalog-dsn", e.catalogDSN, "--listen", addr.String(),
		"--admin-listen", "", "--pool-mode", mode, "--log-level", "error",
		"--allow-extension", "plpgsql,hstore,ltree")
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	p := &proxyProcess{cmd: cmd, addr: addr, done: make(chan struct{})}
	go func() { cmd.Wait(); close(p.done) }()
	if err := p.waitReady(ctx); err != nil {
		p.stop()
		return nil, err
	}
	return p, nil
}

// waitReady waits until the tenant can log in through the proxy.
func (p *proxyProcess) waitReady(ctx context.Context) error {
	ci := proxied(p.addr, "app")
	deadline := time.Now().Add(30 * time.Second)
	for {
		conn, err := pgx.Connect(ctx, ci.keywordValue())
		if err == nil {
			return conn.Close(ctx)
		}
		select {
		case <-p.done:
			return fmt.Errorf("tenantproxy serve exited: %v", p.cmd.ProcessState)
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("tenantproxy serve on %s: %w", p.addr, err)
		}
	}
}

// stop ends the proxy by its PID (SIGTERM drains) and waits for it.
func (p *proxyProcess) stop() {
	p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(15 * time.Second):
		p.cmd.Process.Kill()
		<-p.done
	}
}

func freeAddr() (*net.TCPAddr, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr), nil
}

// keywordValue is the libpq keyword/value form both drivers parse.
func (c conninfo) keywordValue() string {
	return fmt.Sprintf("host=%s port=%d user='%s' password='%s' dbname=%s sslmode=disable", c.host, c.port, c.user, c.password, c.database)
}

// pqEnv is lib/pq's suite configuration: libpq's variables.
// Its CI logs in without a password, which the direct baseline does too.
func (c conninfo) pqEnv() []string {
	env := []string{"PGHOST=" + c.host, "PGPORT=" + strconv.Itoa(c.port), "PGUSER=" + c.user,
		"PGDATABASE=" + c.database, "PGSSLMODE=disable"}
	if c.password != "" {
		env = append(env, "PGPASSWORD="+c.password)
	}
	return env
}
