package testenv

import (
	"context"
	"database/sql"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	_ "github.com/jackc/pgx/v5/stdlib" // registers "pgx" with database/sql
)

// Postgres is a throwaway PostgreSQL server: Debian's initdb + pg_ctl in a
// temp dir, on a loopback port, removed when the test ends.
type Postgres struct {
	// URL is the postgres:// URL of its "postgres" database.
	URL string

	t    testing.TB // nil outside tests (LaunchPostgres)
	bin  string     // directory of initdb and pg_ctl
	dir  string     // data directory (also holds the Unix socket and the log)
	port int
	cred *syscall.Credential // the postgres user's, when we are root
	dbs  atomic.Int32
}

// StartPostgres starts a throwaway PostgreSQL server and returns the URL of
// a database on it.
func StartPostgres(t testing.TB) string { return StartPostgresServer(t).URL }

// StartPostgresServer starts a throwaway PostgreSQL server, stopped and
// removed at the end of t. PostgreSQL refuses to run as root, so as root it
// runs as the postgres user.
func StartPostgresServer(t testing.TB) *Postgres {
	t.Helper()
	p, err := LaunchPostgres("")
	if err != nil {
		t.Fatal(err)
	}
	p.t = t
	t.Cleanup(p.Close)
	return p
}

// LaunchPostgres starts a throwaway PostgreSQL server in a new directory
// under dir ("" for the default temp dir); the caller stops and removes it
// with Close. For programs other than tests (stasis-bench); tests use
// StartPostgres.
func LaunchPostgres(dir string) (*Postgres, error) {
	bin, err := postgresBin()
	if err != nil {
		return nil, err
	}
	dir, err = os.MkdirTemp(dir, "stasis-pg-")
	if err != nil {
		return nil, err
	}
	p := &Postgres{bin: bin, dir: dir}
	if err := p.launch(); err != nil {
		p.Close()
		return nil, err
	}
	return p, nil
}

func (p *Postgres) launch() error {
	if os.Geteuid() == 0 {
		u, err := user.Lookup("postgres")
		if err != nil {
			return fmt.Errorf("PostgreSQL cannot run as root and there is no postgres user (make setup installs postgresql): %w", err)
		}
		uid, _ := strconv.Atoi(u.Uid)
		gid, _ := strconv.Atoi(u.Gid)
		p.cred = &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}
		if err := os.Chown(p.dir, uid, gid); err != nil {
			return err
		}
	}
	if out, err := p.run("initdb", "-D", filepath.Join(p.dir, "data"), "-U", "stasis", "--auth=trust",
		"-E", "UTF8", "--no-sync", "--no-instructions"); err != nil {
		return fmt.Errorf("initdb: %v\n%s", err, out)
	}
	addr, err := freeLoopbackAddr()
	if err != nil {
		return err
	}
	_, port, _ := net.SplitHostPort(addr)
	p.port, _ = strconv.Atoi(port)
	p.URL = fmt.Sprintf("postgres://stasis@127.0.0.1:%d/postgres?sslmode=disable", p.port)
	return p.start()
}

// Close stops the server (immediately) and removes its directory.
func (p *Postgres) Close() {
	p.pgctl("stop", "-m", "immediate")
	os.RemoveAll(p.dir)
}

// Start starts the (stopped) server again, on the same port and data.
func (p *Postgres) Start() {
	p.t.Helper()
	if err := p.start(); err != nil {
		p.t.Fatal(err)
	}
}

func (p *Postgres) start() error {
	opts := fmt.Sprintf("-c listen_addresses=127.0.0.1 -p %d -k %s -c fsync=off -c max_connections=200",
		p.port, p.dir)
	if out, err := p.pgctl("start", "-w", "-t", "120", "-l", filepath.Join(p.dir, "log"), "-o", opts); err != nil {
		log, _ := os.ReadFile(filepath.Join(p.dir, "log"))
		return fmt.Errorf("pg_ctl start: %v\n%s\n%s", err, out, log)
	}
	return nil
}

// Stop stops the server (fast shutdown: connections are cut), keeping its data.
func (p *Postgres) Stop() {
	p.t.Helper()
	if out, err := p.pgctl("stop", "-w", "-m", "fast"); err != nil {
		p.t.Fatalf("pg_ctl stop: %v\n%s", err, out)
	}
}

// NewDatabase creates a fresh, empty database on the server and returns its URL.
func (p *Postgres) NewDatabase() string {
	p.t.Helper()
	name := fmt.Sprintf("db%d", p.dbs.Add(1))
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	db, err := sql.Open("pgx", p.URL)
	if err != nil {
		p.t.Fatal(err)
	}
	defer db.Close()
	if _, err := db.ExecContext(ctx, "CREATE DATABASE "+name); err != nil {
		p.t.Fatalf("create database %s: %v", name, err)
	}
	return strings.Replace(p.URL, "/postgres?", "/"+name+"?", 1)
}

func (p *Postgres) pgctl(args ...string) ([]byte, error) {
	return p.run("pg_ctl", append([]string{"-D", filepath.Join(p.dir, "data")}, args...)...)
}

func (p *Postgres) run(name string, args ...string) ([]byte, error) {
	cmd := exec.Command(filepath.Join(p.bin, name), args...)
	cmd.Dir = p.dir
	cmd.Env = append(os.Environ(), "LC_ALL=C")
	if p.cred != nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: p.cred}
	}
	return cmd.CombinedOutput()
}

// postgresBin finds the directory of Debian's initdb and pg_ctl (they are
// not on PATH by default).
func postgresBin() (string, error) {
	dirs, _ := filepath.Glob("/usr/lib/postgresql/*/bin")
	for i := len(dirs) - 1; i >= 0; i-- { // the newest version first
		if _, err := os.Stat(filepath.Join(dirs[i], "pg_ctl")); err == nil {
			return dirs[i], nil
		}
	}
	if path, err := exec.LookPath("pg_ctl"); err == nil {
		return filepath.Dir(path), nil
	}
	return "", fmt.Errorf("PostgreSQL's pg_ctl not found (make setup installs Debian's postgresql)")
}
