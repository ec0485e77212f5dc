package e2b

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/stasis-sandbox/stasis/internal/agentclient"
	"github.com/stasis-sandbox/stasis/internal/store"
)

// metricsScript samples what the sandbox's kernel (gVisor's Sentry) says
// about the sandbox: CPU time twice, 200 ms apart, then the CPU count,
// memory, and the root filesystem (whose size is the writable-layer quota).
const metricsScript = `head -n1 /proc/stat; sleep 0.2; head -n1 /proc/stat; nproc; ` +
	`grep -E '^(MemTotal|MemAvailable|Cached):' /proc/meminfo; df -P -B1 / | tail -n1`

type metricJSON struct {
	Timestamp     time.Time `json:"timestamp"`
	TimestampUnix int64     `json:"timestampUnix"`
	CPUCount      int       `json:"cpuCount"`
	CPUUsedPct    float64   `json:"cpuUsedPct"`
	MemUsed       int64     `json:"memUsed"`
	MemTotal      int64     `json:"memTotal"`
	MemCache      int64     `json:"memCache"`
	DiskUsed      int64     `json:"diskUsed"`
	DiskTotal     int64     `json:"diskTotal"`
}

// sample measures a running sandbox through its agent.
func sample(ctx context.Context, agent *agentclient.Client) (*metricJSON, error) {
	var out, errb bytes.Buffer
	st, err := agent.Run(ctx, agentclient.ExecRequest{Command: metricsScript, User: "root", TimeoutS: 10}, &out, &errb)
	if err != nil {
		return nil, err
	}
	if st.ExitCode != 0 {
		return nil, fmt.Errorf("metrics script: exit %d: %s", st.ExitCode, strings.TrimSpace(errb.String()))
	}
	lines := []string{}
	sc := bufio.NewScanner(&out)
	for sc.Scan() {
		lines = append(lines, sc.Text())
	}
	if len(lines) < 7 {
		return nil, fmt.Errorf("metrics script: unexpected output %q", out.String())
	}
	busy1, total1 := cpuTimes(lines[0])
	busy2, total2 := cpuTimes(lines[1])
	now := time.Now().UTC()
	m := &metricJSON{Timestamp: now, TimestampUnix: now.Unix()}
	if total2 > total1 {
		m.CPUUsedPct = 100 * float64(busy2-busy1) / float64(total2-total1)
	}
	m.CPUCount, _ = strconv.Atoi(strings.TrimSpace(lines[2]))
	var avail int64
	for _, l := range lines[3:6] {
		f := strings.Fields(l)
		if len(f) < 2 {
			continue
		}
		kb, _ := strconv.ParseInt(f[1], 10, 64)
		switch f[0] {
		case "MemTotal:":
			m.MemTotal = kb << 10
		case "MemAvailable:":
			avail = kb << 10
		case "Cached:":
			m.MemCache = kb << 10
		}
	}
	m.MemUsed = m.MemTotal - avail
	if f := strings.Fields(lines[6]); len(f) >= 3 {
		m.DiskTotal, _ = strconv.ParseInt(f[1], 10, 64)
		m.DiskUsed, _ = strconv.ParseInt(f[2], 10, 64)
	}
	return m, nil
}

// cpuTimes reads the "cpu" line of /proc/stat: busy and total jiffies.
func cpuTimes(line string) (busy, total int64) {
	f := strings.Fields(line)
	for i, v := range f[1:] {
		n, _ := strconv.ParseInt(v, 10, 64)
		total += n
		if i != 3 && i != 4 { // idle, iowait
			busy += n
		}
	}
	return busy, total
}

// metrics serves GET /sandboxes/{id}/metrics: one sample of a running
// sandbox, none for a paused one (it uses no CPU, and is not resumed to be
// measured). stasis keeps no history, so start/end select nothing more.
func (s *Server) metrics(w http.ResponseWriter, r *http.Request, teamID string) {
	id := r.PathValue("id")
	sb, err := s.svc.Get(r.Context(), teamID, id)
	if err != nil {
		s.fail(w, err)
		return
	}
	if sb.Status != store.StatusActive {
		writeJSON(w, http.StatusOK, []metricJSON{})
		return
	}
	t, err := s.svc.Reach(r.Context(), id)
	if err != nil {
		s.fail(w, err)
		return
	}
	m, err := sample(r.Context(), t.Agent)
	if err != nil {
		writeError(w, http.StatusBadGateway, "measure sandbox %s: %v", id, err)
		return
	}
	writeJSON(w, http.StatusOK, []metricJSON{*m})
}

// envdMetrics serves envd's GET /metrics.
func (s *Server) envdMetrics(w http.ResponseWriter, r *http.Request) {
	c := callFrom(r.Context())
	m, err := sample(r.Context(), c.target.Agent)
	if err != nil {
		writeError(w, http.StatusBadGateway, "%v", err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{
		"cpu_count": m.CPUCount, "cpu_used_pct": m.CPUUsedPct, "disk_total": m.DiskTotal, "disk_used": m.DiskUsed,
		"mem_cache": m.MemCache, "mem_total": m.MemTotal, "mem_total_mib": m.MemTotal >> 20,
		"mem_used": m.MemUsed, "mem_used_mib": m.MemUsed >> 20, "ts": m.TimestampUnix,
	})
}
