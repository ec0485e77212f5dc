package e2e

import (
	"testing"
	"time"

	"github.com/stasis-sandbox/stasis/internal/sandbox"
	"github.com/stasis-sandbox/stasis/internal/testenv"
)

// TestTimeoutSetWhileTimersSleep: stasisd's timer loop sleeps until the
// next deadline in the store rather than polling; a timeout set while it
// sleeps (here by PATCH, with no other deadline anywhere) still fires on
// time. Three timeouts are set 3.3 s apart, each must pause its sandbox
// within TimerInterval + 2.25 s of its deadline: windows that no series of
// wake-ups 10 s apart (the loop's other work) could all hit, so only the
// wake-up on the write passes.
func TestTimeoutSetWhileTimersSleep(t *testing.T) {
	srv := testenv.StartServer(t)
	var ids []string
	for _, name := range []string{"t1", "t2", "t3"} {
		_, sb := create(t, srv, map[string]any{"name": name, "from_template": "stasis/minimal"})
		ids = append(ids, sb.ID)
	}
	const timeout = time.Second
	const late = sandbox.TimerInterval + 2250*time.Millisecond
	start := time.Now()
	set := make([]time.Time, len(ids)) // when each timeout was set
	fired := make([]bool, len(ids))
	for left := len(ids); left > 0; time.Sleep(50 * time.Millisecond) {
		for i, id := range ids {
			switch {
			case fired[i]:
			case set[i].IsZero():
				if time.Since(start) < time.Duration(i)*3300*time.Millisecond {
					continue
				}
				set[i] = time.Now()
				if err := srv.Do("PATCH", "/sandboxes/"+id, map[string]any{"timeout_seconds": int(timeout / time.Second)}, nil); err != nil {
					t.Fatal(err)
				}
			default:
				st := getInfo(t, srv, id).Status
				since := time.Since(set[i])
				if st == "active" {
					if since > timeout+late {
						t.Fatalf("sandbox %d: still active %v after its %v timeout was set", i, since.Round(time.Millisecond), timeout)
					}
					continue
				}
				if st != "pausing" && st != "paused" {
					t.Fatalf("sandbox %d: status %q after its timeout", i, st)
				}
				if since < timeout {
					t.Fatalf("sandbox %d: %s %v after a %v timeout was set: early", i, st, since, timeout)
				}
				fired[i] = true
				left--
			}
		}
	}
	for _, id := range ids {
		waitStatus(t, srv, id, "paused")
	}
}
