package bench

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// Target names, as in --targets, the table and the JSON.
const (
	TargetDirect      = "direct"
	TargetSession     = "tp-session"
	TargetTransaction = "tp-transaction"
	TargetPgBouncer   = "pgbouncer"
	// TargetTransactionOneProc is tenantproxy in transaction mode at
	// GOMAXPROCS=1, PgBouncer's one core, measured only in scenario (h)
	// beside TargetTransaction at every core.
	TargetTransactionOneProc = "tp-transaction-1proc"
)

// target is one way of reaching the bench tables.
type target struct {
	name string
	// addr is where clients connect.
	addr string
	// tenantAware targets identify the tenant from the user name and put
	// the connection in its context themselves; the others are reached as
	// the serving role, and a client that needs a tenant's context runs
	// the setup statements after connecting.
	tenantAware bool
	// pooled targets share server connections between client
	// connections, so PostgreSQL's max_connections does not bound clients.
	pooled bool
	// maxClients bounds the client connections a scenario may open.
	maxClients int
	// only names the one scenario the target is measured in; "" means
	// every scenario.
	only string
	// proc is the process whose memory is measured; nil for direct.
	proc *os.Process
	// logPath is where proc writes its log; a failed measurement quotes
	// its end.
	logPath string
	// child starts proc again; nil for direct.
	child *child
	stop  func() error
}

// child is how a process target is started: a fresh command each time,
// its stdout and stderr file.
type child struct {
	command func() *exec.Cmd
	outPath string
}

// logTail is the end of the target's log, for an error message.
func (t *target) logTail() string {
	if t.logPath == "" {
		return ""
	}
	b, err := os.ReadFile(t.logPath)
	if err != nil || len(b) == 0 {
		return ""
	}
	return string(tail(b, 400))
}

// clientDSN is the DSN a client of tenant i uses, and the statements it
// must run itself to be in that tenant's context.
func (t *target) clientDSN(e *env, i int) (string, []string) {
	ten := e.tenants[i]
	if t.tenantAware {
		return dsn(t.addr, tenantUser+"."+ten.Subdomain, tenantPassword, ten.Database), nil
	}
	return e.servingDSN(t.addr, ten.Database), e.setup[i]
}

// poolModeFlag is the `serve` flag that selects transaction pooling (issue
// 4). The bench offers the tp-transaction target when the binary has it.
const poolModeFlag = "--pool-mode"

// proxyHasPoolMode reports whether bin's `serve` accepts poolModeFlag.
func proxyHasPoolMode(ctx context.Context, bin string) bool {
	out, err := exec.CommandContext(ctx, bin, "serve", "--help").CombinedOutput()
	return err == nil && strings.Contains(string(out), poolModeFlag+" ")
}

// startProxy runs `bin serve` as its own process, on a free port, with the
// given extra flags and, when procs > 0, GOMAXPROCS=procs, and waits until
// it accepts connections. Its log goes to logPath.
func startProxy(ctx context.Context, bin string, procs int, name string, e *env, logPath string, maxClients int, extra ...string) (*target, error) {
	addr, err := freeAddr()
	if err != nil {
		return nil, err
	}
	args := append([]string{"serve",
		"--catalog-dsn", e.catalogDSN,
		"--listen", addr,
		"--admin-listen", "",
		"--log-level", "warn",
		"--drain-timeout", "1s",
		// A storm of thousands of connecting clients queues in the accept
		// backlog and behind SCRAM; startup must not time out under it.
		"--startup-timeout", "120s",
		// Idle server connections of one case must not hold PostgreSQL's
		// connection slots through the next target's turn.
		"--pool-idle-timeout", "2s",
	}, extra...)
	command := func() *exec.Cmd {
		cmd := exec.Command(bin, args...)
		cmd.Env = withoutTenantproxyEnv(os.Environ())
		if procs > 0 {
			cmd.Env = append(cmd.Env, "GOMAXPROCS="+strconv.Itoa(procs))
		}
		cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
		return cmd
	}
	t := &target{name: name, addr: addr, tenantAware: true, pooled: true, maxClients: maxClients,
		logPath: logPath, child: &child{command: command, outPath: logPath}}
	return t, t.launch(ctx)
}

// withoutTenantproxyEnv drops TENANTPROXY_* variables, so the user's
// settings for a real proxy (a config file, a listen address) do not change
// the bench's.
func withoutTenantproxyEnv(env []string) []string {
	out := env[:0:0]
	for _, kv := range env {
		if !strings.HasPrefix(kv, "TENANTPROXY_") {
			out = append(out, kv)
		}
	}
	return out
}

// launch starts the target's process with its output in child.outPath
// and waits for addr to accept connections. stop then ends the process
// (SIGTERM, then SIGKILL after 10 s) and waits for it.
func (t *target) launch(ctx context.Context) error {
	cmd := t.child.command()
	out, err := os.Create(t.child.outPath)
	if err != nil {
		return err
	}
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		out.Close()
		return fmt.Errorf("%s: %w", t.name, err)
	}
	exited := make(chan struct{})
	go func() {
		cmd.Wait()
		out.Close()
		close(exited)
	}()
	t.proc = cmd.Process
	t.stop = func() error {
		syscall.Kill(-cmd.Process.Pid, syscall.SIGTERM)
		select {
		case <-exited:
			return nil
		case <-time.After(10 * time.Second):
			syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
			<-exited
			return fmt.Errorf("%s ignored SIGTERM and was killed", t.name)
		}
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		c, err := net.DialTimeout("tcp", t.addr, time.Second)
		if err == nil {
			c.Close()
			return nil
		}
		select {
		case <-exited:
			log, _ := os.ReadFile(t.child.outPath)
			return fmt.Errorf("%s exited during start-up: %s", t.name, tail(log, 1500))
		case <-ctx.Done():
			t.stop()
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.stop()
			return fmt.Errorf("%s not accepting on %s after 30 s", t.name, t.addr)
		}
	}
}

// restart stops the target's process and starts it again on the same
// address, so that a memory measurement starts from a fresh process rather
// than from whatever the previous case left allocated.
func (t *target) restart(ctx context.Context) error {
	if err := t.stop(); err != nil {
		return err
	}
	return t.launch(ctx)
}

// startPgBouncer runs PgBouncer in transaction mode in front of e's
// PostgreSQL, authenticating clients with SCRAM-SHA-256 against the
// serving role's verifier. ErrNoPgBouncer means it is not installed.
func startPgBouncer(ctx context.Context, e *env, dir string, maxClients int) (*target, error) {
	bin, err := exec.LookPath("pgbouncer")
	if err != nil {
		for _, p := range []string{"/usr/sbin/pgbouncer", "/usr/bin/pgbouncer"} {
			if _, serr := os.Stat(p); serr == nil {
				bin, err = p, nil
			}
		}
		if err != nil {
			return nil, ErrNoPgBouncer
		}
	}
	verifier, err := e.servingVerifier(ctx)
	if err != nil {
		return nil, fmt.Errorf("pgbouncer: serving role's verifier: %w", err)
	}
	addr, err := freeAddr()
	if err != nil {
		return nil, err
	}
	_, port, _ := net.SplitHostPort(addr)
	pgDir := filepath.Join(dir, "pgbouncer")
	if err := os.MkdirAll(pgDir, 0o700); err != nil {
		return nil, err
	}
	userlist := filepath.Join(pgDir, "userlist.txt")
	if err := os.WriteFile(userlist, []byte(fmt.Sprintf("%q %q\n", e.servingUser, verifier)), 0o600); err != nil {
		return nil, err
	}
	// Pool size 20 and transaction mode, as tenantproxy's transaction
	// target; every database name is passed through to PostgreSQL.
	ini := fmt.Sprintf(`[databases]
* = host=%s port=%d

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = %s
unix_socket_dir =
auth_type = scram-sha-256
auth_file = %s
pool_mode = transaction
default_pool_size = 20
max_client_conn = %d
max_db_connections = 0
ignore_startup_parameters = extra_float_digits
logfile = %s
log_connections = 0
log_disconnections = 0
`, e.cluster.Host, e.cluster.Port, port, userlist, maxClients+100, filepath.Join(pgDir, "pgbouncer.log"))
	iniPath := filepath.Join(pgDir, "pgbouncer.ini")
	if err := os.WriteFile(iniPath, []byte(ini), 0o600); err != nil {
		return nil, err
	}
	var cred *syscall.Credential
	if os.Geteuid() == 0 {
		// PgBouncer refuses to run as root.
		if cred, err = postgresUser(); err != nil {
			return nil, fmt.Errorf("pgbouncer: %w", err)
		}
		for _, p := range []string{pgDir, userlist, iniPath} {
			if err := os.Chown(p, int(cred.Uid), int(cred.Gid)); err != nil {
				return nil, err
			}
		}
	}
	command := func() *exec.Cmd {
		cmd := exec.Command(bin, iniPath)
		cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL, Credential: cred}
		return cmd
	}
	t := &target{name: TargetPgBouncer, addr: addr, pooled: true, maxClients: maxClients,
		logPath: filepath.Join(pgDir, "pgbouncer.log"), child: &child{command: command, outPath: filepath.Join(pgDir, "stdout.log")}}
	return t, t.launch(ctx)
}

// ErrNoPgBouncer means pgbouncer is not installed; the run goes on without
// that target.
var ErrNoPgBouncer = errors.New("pgbouncer is not installed (apt-get install -y pgbouncer); PgBouncer target skipped")

func postgresUser() (*syscall.Credential, error) {
	u, err := user.Lookup("postgres")
	if err != nil {
		return nil, fmt.Errorf("running as root needs a postgres OS user: %w", err)
	}
	uid, _ := strconv.Atoi(u.Uid)
	gid, _ := strconv.Atoi(u.Gid)
	return &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}, nil
}

// rssBytes is p's resident set size from /proc.
func rssBytes(p *os.Process) (int64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", p.Pid))
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(rest), "kB")), 10, 64)
			return kb << 10, err
		}
	}
	return 0, errors.New("no VmRSS in /proc status")
}

// cpuSeconds is the user and system CPU time p has used, from /proc.
func cpuSeconds(p *os.Process) (float64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", p.Pid))
	if err != nil {
		return 0, err
	}
	// The command name in parentheses may hold spaces; fields count from
	// after it: utime and stime are the 12th and 13th.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, errors.New("no command name in /proc stat")
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 13 {
		return 0, errors.New("short /proc stat")
	}
	utime, err1 := strconv.ParseFloat(f[11], 64)
	stime, err2 := strconv.ParseFloat(f[12], 64)
	if err := errors.Join(err1, err2); err != nil {
		return 0, err
	}
	return (utime + stime) / clockTicks, nil
}

// clockTicks is USER_HZ, the unit of /proc's CPU times: 100 on every
// Linux architecture Go supports.
const clockTicks = 100

func tail(b []byte, n int) []byte {
	if len(b) > n {
		return b[len(b)-n:]
	}
	return b
}

// cpuSeconds is the target process's CPU time so far, NaN for direct.
func (t *target) cpuSeconds() (float64, error) {
	if t.proc == nil {
		return math.NaN(), nil
	}
	return cpuSeconds(t.proc)
}
