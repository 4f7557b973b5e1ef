package pgcluster

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// SuperUser is the bootstrap superuser of every cluster.
const SuperUser = "postgres"

// Options tune a cluster. The zero value is a sensible test cluster.
type Options struct {
	// Conf holds extra server settings passed as -c name=value.
	Conf map[string]string
	// StartTimeout bounds how long Start waits for the server to accept
	// connections. Zero means 30 s.
	StartTimeout time.Duration
}

// Cluster is a running throwaway PostgreSQL server. Its fields are fixed
// once Start returns.
type Cluster struct {
	Dir       string // root of everything the cluster wrote; removed by Stop
	SocketDir string
	Host      string
	Port      int
	Password  string // of SuperUser

	conf     map[string]string
	timeout  time.Duration
	cmd      *exec.Cmd
	exited   chan struct{}
	stopOnce sync.Once
	stopErr  error
}

// Start runs initdb and starts a server. The caller owns the cluster and
// must call Stop, which removes every file it created.
func Start(ctx context.Context, opts Options) (*Cluster, error) {
	bin, err := BinDir()
	if err != nil {
		return nil, err
	}
	owner, err := serverOwner()
	if err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp("", "tenantproxy-pg-")
	if err != nil {
		return nil, fmt.Errorf("pgcluster: %w", err)
	}
	c := &Cluster{
		Dir:       dir,
		SocketDir: filepath.Join(dir, "sock"),
		Host:      "127.0.0.1",
		Password:  randomHex(12),
		conf:      opts.Conf,
		timeout:   opts.StartTimeout,
	}
	if c.timeout == 0 {
		c.timeout = 30 * time.Second
	}
	if err := c.initdb(ctx, bin, owner); err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	// A free port can be taken between our probe and the server's bind, so
	// a failed start is retried on a fresh port.
	for attempt := 0; ; attempt++ {
		port, err := freePort()
		if err == nil {
			err = c.start(ctx, bin, owner, port)
		}
		if err == nil {
			return c, nil
		}
		if attempt == 2 || ctx.Err() != nil {
			c.Stop()
			return nil, err
		}
	}
}

// owner is the OS identity the server runs as: initdb and postgres refuse
// to run as root, so root hands them to the postgres user.
type owner struct {
	cred *syscall.Credential
}

func serverOwner() (owner, error) {
	if os.Geteuid() != 0 {
		return owner{}, nil
	}
	u, err := user.Lookup("postgres")
	if err != nil {
		return owner{}, fmt.Errorf("pgcluster: running as root needs a postgres OS user: %w", err)
	}
	uid, _ := strconv.Atoi(u.Uid)
	gid, _ := strconv.Atoi(u.Gid)
	return owner{cred: &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}}, nil
}

func (o owner) chown(path string) error {
	if o.cred == nil {
		return nil
	}
	return os.Chown(path, int(o.cred.Uid), int(o.cred.Gid))
}

// ChownToServer hands path to the OS user clusters run as (postgres, when
// this process is root), so that a server can read files another part of
// the process wrote, such as a TLS key. It does nothing when not root.
func ChownToServer(path string) error {
	o, err := serverOwner()
	if err != nil {
		return err
	}
	if err := o.chown(path); err != nil {
		return fmt.Errorf("pgcluster: %w", err)
	}
	return nil
}

func (o owner) command(ctx context.Context, name string, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: o.cred, Setpgid: true, Pdeathsig: syscall.SIGKILL}
	return cmd
}

func (c *Cluster) initdb(ctx context.Context, bin string, o owner) error {
	pwfile := filepath.Join(c.Dir, "pwfile")
	if err := os.WriteFile(pwfile, []byte(c.Password+"\n"), 0o600); err != nil {
		return fmt.Errorf("pgcluster: %w", err)
	}
	if err := os.Mkdir(c.SocketDir, 0o700); err != nil {
		return fmt.Errorf("pgcluster: %w", err)
	}
	for _, p := range []string{c.Dir, pwfile, c.SocketDir} {
		if err := o.chown(p); err != nil {
			return fmt.Errorf("pgcluster: %w", err)
		}
	}
	cmd := o.command(ctx, filepath.Join(bin, "initdb"),
		"-D", c.dataDir(), "-U", SuperUser, "--pwfile", pwfile,
		"--auth-local=trust", "--auth-host=scram-sha-256",
		"-E", "UTF8", "--locale=C", "--no-sync")
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("pgcluster: initdb: %w: %s", err, out)
	}
	return nil
}

func (c *Cluster) dataDir() string { return filepath.Join(c.Dir, "data") }

// LogPath is the server's log file, worth reading when a test fails.
func (c *Cluster) LogPath() string { return filepath.Join(c.Dir, "server.log") }

func (c *Cluster) start(ctx context.Context, bin string, o owner, port int) error {
	c.Port = port
	settings := map[string]string{
		"listen_addresses":        c.Host,
		"port":                    strconv.Itoa(port),
		"unix_socket_directories": c.SocketDir,
		"fsync":                   "off",
		"synchronous_commit":      "off",
		"full_page_writes":        "off",
		"max_connections":         "300",
		"shared_buffers":          "64MB",
	}
	for k, v := range c.conf {
		settings[k] = v
	}
	args := []string{"-D", c.dataDir()}
	for k, v := range settings {
		args = append(args, "-c", k+"="+v)
	}
	logFile, err := os.OpenFile(c.LogPath(), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return fmt.Errorf("pgcluster: %w", err)
	}
	defer logFile.Close()
	// Not CommandContext: the server must outlive the context that started it.
	cmd := o.command(context.Background(), filepath.Join(bin, "postgres"), args...)
	cmd.Stdout, cmd.Stderr = logFile, logFile
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("pgcluster: start postgres: %w", err)
	}
	c.cmd, c.exited = cmd, make(chan struct{})
	go func() {
		cmd.Wait()
		close(c.exited)
	}()
	return c.waitReady(ctx, c.timeout)
}

func (c *Cluster) waitReady(ctx context.Context, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	for {
		conn, err := pgconn.Connect(ctx, c.DSN("postgres"))
		if err == nil {
			conn.Close(ctx)
			return nil
		}
		select {
		case <-c.exited:
			log, _ := os.ReadFile(c.LogPath())
			c.cmd = nil
			return fmt.Errorf("pgcluster: postgres exited during start-up: %s", tail(log, 2000))
		case <-ctx.Done():
			return fmt.Errorf("pgcluster: postgres not ready after %s: %w", timeout, err)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// DSN connects as SuperUser over TCP to database.
func (c *Cluster) DSN(database string) string {
	u := url.URL{
		Scheme:   "postgres",
		User:     url.UserPassword(SuperUser, c.Password),
		Host:     net.JoinHostPort(c.Host, strconv.Itoa(c.Port)),
		Path:     "/" + database,
		RawQuery: "sslmode=disable",
	}
	return u.String()
}

// Addr is the server's TCP address.
func (c *Cluster) Addr() string { return net.JoinHostPort(c.Host, strconv.Itoa(c.Port)) }

// Exec runs sql as SuperUser in database.
func (c *Cluster) Exec(ctx context.Context, database, sql string) error {
	conn, err := pgx.Connect(ctx, c.DSN(database))
	if err != nil {
		return fmt.Errorf("pgcluster: connect %s: %w", database, err)
	}
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, sql); err != nil {
		return fmt.Errorf("pgcluster: %s: %w", sql, err)
	}
	return nil
}

// Stop shuts the server down fast and removes its directory. It is safe to
// call more than once.
func (c *Cluster) Stop() error {
	c.stopOnce.Do(func() {
		if c.cmd != nil {
			// SIGINT is PostgreSQL's fast shutdown; the process group also
			// reaps backends if the postmaster dies first.
			syscall.Kill(-c.cmd.Process.Pid, syscall.SIGINT)
			select {
			case <-c.exited:
			case <-time.After(15 * time.Second):
				syscall.Kill(-c.cmd.Process.Pid, syscall.SIGKILL)
				<-c.exited
				c.stopErr = errors.New("pgcluster: postgres ignored fast shutdown and was killed")
			}
		}
		if err := os.RemoveAll(c.Dir); err != nil && c.stopErr == nil {
			c.stopErr = fmt.Errorf("pgcluster: %w", err)
		}
	})
	return c.stopErr
}

// Restart stops the server (fast shutdown, clients are disconnected) and
// starts it again on the same port and data, for tests of surviving a
// backend restart.
func (c *Cluster) Restart(ctx context.Context) error {
	if c.cmd != nil {
		syscall.Kill(-c.cmd.Process.Pid, syscall.SIGINT)
		<-c.exited
	}
	bin, err := BinDir()
	if err != nil {
		return err
	}
	o, err := serverOwner()
	if err != nil {
		return err
	}
	return c.start(ctx, bin, o, c.Port)
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("pgcluster: find a free port: %w", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

func randomHex(n int) string {
	b := make([]byte, n)
	rand.Read(b)
	return hex.EncodeToString(b)
}

func tail(b []byte, n int) []byte {
	if len(b) > n {
		return b[len(b)-n:]
	}
	return b
}
