//go:build stasis_sim

// Command stasis-sim drives a simulated stasis cluster (stasisd built with
// -tags stasis_sim and run with --runtime sim; see scripts/sim-cluster.sh)
// through its HTTP API: it creates, pauses, resumes and deletes many
// sandboxes, spreading requests over every node as a load balancer would,
// and reports operations per second and PostgreSQL's work per operation
// (pg_stat_statements when loaded, pg_stat_database always).
//
// SIMULATION ONLY: the sandboxes run nothing; the numbers are the control
// plane's (API, forwarding, store, placement), not a runtime's.
package main

import (
	"bytes"
	"context"
	"database/sql"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	_ "github.com/jackc/pgx/v5/stdlib"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "stasis-sim:", err)
		os.Exit(1)
	}
}

type config struct {
	nodes    []string
	key      string
	n, conc  int
	cycle    int // how many of the n are paused and resumed
	template string
	idle     time.Duration
	top      int
}

func run() error {
	var c config
	var nodes, dbURL string
	flag.StringVar(&nodes, "nodes", "", "comma-separated node URLs; requests go round-robin over them")
	flag.StringVar(&c.key, "api-key", os.Getenv("STASIS_API_KEY"), "API key")
	flag.IntVar(&c.n, "sandboxes", 1000, "sandboxes to create, pause, resume and delete")
	flag.IntVar(&c.cycle, "cycle", 0, "pause and resume only the first N sandboxes (all of them stay present; 0 = all)")
	flag.IntVar(&c.conc, "concurrency", 32, "requests in flight")
	flag.StringVar(&c.template, "template", "stasis/minimal", "template of the sandboxes")
	flag.StringVar(&dbURL, "database-url", "", "the cluster's PostgreSQL, to count its queries")
	flag.DurationVar(&c.idle, "idle", 20*time.Second, "how long to measure the idle cluster's query rate (heartbeats, timers, checks), once with every sandbox active and once with every one paused")
	flag.IntVar(&c.top, "top", 8, "statements to list per phase")
	flag.Parse()
	c.nodes = strings.Split(nodes, ",")
	if nodes == "" || c.key == "" || dbURL == "" {
		return fmt.Errorf("--nodes, --api-key (or STASIS_API_KEY) and --database-url are required")
	}
	db, err := sql.Open("pgx", dbURL)
	if err != nil {
		return err
	}
	defer db.Close()
	db.SetMaxOpenConns(2)
	pg := &pgStats{db: db}
	pg.statements = db.QueryRow("SELECT 1 FROM pg_stat_statements LIMIT 1").Err() == nil ||
		db.QueryRow("SELECT count(*) FROM pg_stat_statements").Err() == nil
	if c.cycle <= 0 || c.cycle > c.n {
		c.cycle = c.n
	}
	fmt.Printf("SIMULATION (no sandboxes run): %d nodes, %d sandboxes, %d in flight, pg_stat_statements=%v\n",
		len(c.nodes), c.n, c.conc, pg.statements)
	paused := "all paused"
	if c.cycle < c.n {
		// The first sandboxes were created round-robin over the nodes, so
		// the sample is spread over them like the whole.
		fmt.Printf("pause and resume: the first %d of the %d sandboxes (--cycle); all %d exist throughout\n", c.cycle, c.n, c.n)
		paused = fmt.Sprintf("%d paused, %d active", c.cycle, c.n-c.cycle)
	}

	ids := make([]string, c.n)
	cl := &client{cfg: c, hc: &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: c.conc}, Timeout: 5 * time.Minute}}
	phases := []struct {
		name  string
		count int // sandboxes it acts on: the first count
		op    func(i int) error
	}{
		{"idle, no sandboxes", 0, nil},
		{"create", c.n, func(i int) error {
			var sb struct {
				ID string `json:"id"`
			}
			err := cl.do(i, "POST", "/sandboxes", map[string]any{"name": fmt.Sprintf("sim-%d", i), "from_template": c.template}, 201, &sb)
			ids[i] = sb.ID
			return err
		}},
		{"idle, all active", 0, nil},
		{"pause", c.cycle, func(i int) error { return cl.do(i, "POST", "/sandboxes/"+ids[i]+"/pause", nil, 200, nil) }},
		{"idle, " + paused, 0, nil},
		{"resume", c.cycle, func(i int) error { return cl.do(i, "POST", "/sandboxes/"+ids[i]+"/resume", nil, 200, nil) }},
		{"delete", c.n, func(i int) error { return cl.do(i, "DELETE", "/sandboxes/"+ids[i], nil, 204, nil) }},
	}
	var idleRate float64 // statements/s of the last idle phase: the background
	for _, ph := range phases {
		before, err := pg.snapshot()
		if err != nil {
			return err
		}
		start := time.Now()
		var errs int64
		var lat []time.Duration
		if ph.op == nil {
			time.Sleep(c.idle)
		} else {
			lat, errs = runPhase(c, ph.count, ph.op, ids, ph.name)
		}
		wall := time.Since(start)
		after, err := pg.snapshot()
		if err != nil {
			return err
		}
		rate := report(ph.name, c, wall, lat, errs, before, after, pg.statements, idleRate)
		if ph.op == nil {
			idleRate = rate
		}
	}
	return nil
}

// runPhase runs op on the first count sandboxes (those that exist) with
// c.conc in flight.
func runPhase(c config, count int, op func(int) error, ids []string, name string) ([]time.Duration, int64) {
	var next, errs atomic.Int64
	var mu sync.Mutex
	lat := make([]time.Duration, 0, count)
	var wg sync.WaitGroup
	for w := 0; w < c.conc; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1) - 1)
				if i >= count {
					return
				}
				if name != "create" && ids[i] == "" {
					continue
				}
				t := time.Now()
				if err := op(i); err != nil {
					if errs.Add(1) <= 5 {
						fmt.Fprintf(os.Stderr, "%s %d: %v\n", name, i, err)
					}
					continue
				}
				d := time.Since(t)
				mu.Lock()
				lat = append(lat, d)
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	return lat, errs.Load()
}

type client struct {
	cfg config
	hc  *http.Client
}

func (c *client) do(i int, method, path string, body any, want int, out any) error {
	var r io.Reader
	if body != nil {
		b, _ := json.Marshal(body)
		r = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(context.Background(), method, c.cfg.nodes[i%len(c.cfg.nodes)]+path, r)
	if err != nil {
		return err
	}
	req.Header.Set("X-API-Key", c.cfg.key)
	req.Header.Set("Content-Type", "application/json")
	resp, err := c.hc.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != want {
		return fmt.Errorf("%s %s: HTTP %d: %.300s", method, path, resp.StatusCode, b)
	}
	if out != nil {
		return json.Unmarshal(b, out)
	}
	return nil
}

// pgStats reads PostgreSQL's counters for the current database.
type pgStats struct {
	db         *sql.DB
	statements bool
}

type pgSnap struct {
	xact, returned, fetched, inserted, updated, deleted int64
	calls                                               map[string]int64 // statement → calls
}

func (p *pgStats) snapshot() (*pgSnap, error) {
	s := &pgSnap{calls: map[string]int64{}}
	err := p.db.QueryRow(`SELECT xact_commit+xact_rollback, tup_returned, tup_fetched, tup_inserted, tup_updated, tup_deleted
		FROM pg_stat_database WHERE datname = current_database()`).Scan(&s.xact, &s.returned, &s.fetched, &s.inserted, &s.updated, &s.deleted)
	if err != nil {
		return nil, fmt.Errorf("pg_stat_database: %w", err)
	}
	if !p.statements {
		return s, nil
	}
	rows, err := p.db.Query(`SELECT query, sum(calls)::bigint FROM pg_stat_statements
		WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database()) GROUP BY query`)
	if err != nil {
		return nil, fmt.Errorf("pg_stat_statements: %w", err)
	}
	defer rows.Close()
	for rows.Next() {
		var q string
		var n int64
		if err := rows.Scan(&q, &n); err != nil {
			return nil, err
		}
		if strings.Contains(q, "pg_stat_") {
			continue // this tool's own
		}
		s.calls[q] = n
	}
	return s, rows.Err()
}

// report prints a phase's figures and returns its statements per second.
// For an operation phase, it also prints how much of the statements per
// operation the background would be at idleRate (the last idle phase's).
func report(name string, c config, wall time.Duration, lat []time.Duration, errs int64, a, b *pgSnap, statements bool, idleRate float64) float64 {
	ops := len(lat)
	per := func(v int64) string {
		if ops == 0 {
			return fmt.Sprintf("%.1f/s", float64(v)/wall.Seconds())
		}
		return fmt.Sprintf("%.1f/op", float64(v)/float64(ops))
	}
	sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
	pct := func(p float64) time.Duration {
		if len(lat) == 0 {
			return 0
		}
		return lat[min(len(lat)-1, int(p*float64(len(lat))))].Round(time.Millisecond / 10)
	}
	fmt.Printf("\n== %s: %d ok, %d errors in %s", name, ops, errs, wall.Round(time.Millisecond))
	if ops > 0 {
		fmt.Printf(" = %.1f/s; latency p50 %s p99 %s", float64(ops)/wall.Seconds(), pct(0.5), pct(0.99))
	}
	fmt.Println()
	var calls int64
	type stmt struct {
		q string
		n int64
	}
	var top []stmt
	for q, n := range b.calls {
		if d := n - a.calls[q]; d > 0 {
			calls += d
			top = append(top, stmt{q, d})
		}
	}
	fmt.Printf("   pg: transactions %s, rows returned %s fetched %s inserted %s updated %s deleted %s",
		per(b.xact-a.xact), per(b.returned-a.returned), per(b.fetched-a.fetched), per(b.inserted-a.inserted), per(b.updated-a.updated), per(b.deleted-a.deleted))
	if statements {
		fmt.Printf(", statements %s (%.0f/s)", per(calls), float64(calls)/wall.Seconds())
		if ops > 0 && idleRate > 0 {
			fmt.Printf(", of which ≈ %.1f/op the background at the last idle rate (%.0f/s)", idleRate*wall.Seconds()/float64(ops), idleRate)
		}
	}
	fmt.Println()
	sort.Slice(top, func(i, j int) bool { return top[i].n > top[j].n })
	for _, s := range top[:min(len(top), c.top)] {
		q := strings.Join(strings.Fields(s.q), " ")
		if len(q) > 150 {
			// The columns are long and alike; the end (WHERE) tells queries apart.
			q = q[:50] + " … " + q[len(q)-95:]
		}
		fmt.Printf("   %10s  %s\n", per(s.n), q)
	}
	return float64(calls) / wall.Seconds()
}
