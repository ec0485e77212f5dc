package e2e

import (
	"bytes"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"testing"

	"github.com/stasis-sandbox/stasis/internal/testenv"
)

// execJSON runs POST /exec with the given body and decodes the response.
func (c *client) execJSON(body map[string]any) map[string]any {
	c.t.Helper()
	b, _ := json.Marshal(body)
	status, data := c.raw("POST", "/exec", bytes.NewReader(b))
	if status != http.StatusOK {
		c.t.Fatalf("exec %v: HTTP %d: %s", body, status, data)
	}
	var r map[string]any
	if err := json.Unmarshal(data, &r); err != nil {
		c.t.Fatalf("exec %v: bad JSON %.200s", body, data)
	}
	return r
}

// Big files and big outputs cross the sandbox's link intact: the download
// goes out with sendfile over a 64 KiB-MTU link, output in 64 KiB frames.
func TestLargeTransfersIntact(t *testing.T) {
	srv := testenv.StartServer(t)
	c, _ := createMinimal(t, srv, "transfers")

	// The link carries large packets (stasisd's --link-mtu default).
	if out := c.sh("ip link"); !strings.Contains(out, "mtu 65520") {
		t.Errorf("no link with mtu 65520 in the sandbox:\n%s", out)
	}

	// A size that is a multiple of no buffer or frame size.
	data := make([]byte, 24<<20+12345)
	rand.Read(data)
	c.writeFile("/home/user/big.bin", data)
	if got := c.readFile("/home/user/big.bin"); !bytes.Equal(got, data) {
		t.Fatalf("read back %d bytes, not the %d written (or different ones)", len(got), len(data))
	}
	if got := c.sh("wc -c < /home/user/big.bin"); got != strconv.Itoa(len(data)) {
		t.Fatalf("file in the sandbox has %s bytes, want %d", got, len(data))
	}

	// Exact bytes of a 3 MB output, then the command's own exit code.
	const n = 3<<20 + 7
	r := c.execJSON(map[string]any{"command": fmt.Sprintf("head -c %d /home/user/big.bin; exit 3", n), "output_encoding": "base64"})
	out, err := base64.StdEncoding.DecodeString(r["stdout"].(string))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(out, data[:n]) || r["exit_code"] != float64(3) {
		t.Fatalf("exec output: %d bytes (equal %v), exit %v; want the file's first %d bytes and exit 3",
			len(out), bytes.Equal(out, data[:n]), r["exit_code"], n)
	}

	// Output order within each stream survives many frames.
	r = c.execJSON(map[string]any{"command": "i=0; while [ $i -lt 30000 ]; do echo $i; echo e$i >&2; i=$((i+1)); done"})
	lines, elines := strings.Split(strings.TrimSuffix(r["stdout"].(string), "\n"), "\n"), strings.Split(strings.TrimSuffix(r["stderr"].(string), "\n"), "\n")
	if len(lines) != 30000 || len(elines) != 30000 {
		t.Fatalf("got %d stdout and %d stderr lines, want 30000 each", len(lines), len(elines))
	}
	for i := range lines {
		if lines[i] != strconv.Itoa(i) || elines[i] != "e"+strconv.Itoa(i) {
			t.Fatalf("line %d: stdout %q stderr %q", i, lines[i], elines[i])
		}
	}
}

// Commands sent back to back, each on whatever shell the agent has ready,
// still get their own environment, working directory and exit code, and
// nothing of the previous command.
func TestExecBackToBack(t *testing.T) {
	srv := testenv.StartServer(t)
	c, _ := createMinimal(t, srv, "back-to-back")
	home := c.sh("pwd")
	for i := 0; i < 12; i++ {
		body := map[string]any{"command": fmt.Sprintf(`echo "$(pwd) [$B2B] [$LEFT]"; LEFT=%d; export LEFT; cd /proc; exit %d`, i, i%4)}
		want := home + " [] []\n"
		if i%2 == 1 {
			body["env"] = map[string]string{"B2B": "v" + strconv.Itoa(i)}
			body["working_dir"] = "/tmp"
			want = fmt.Sprintf("/tmp [v%d] []\n", i)
		}
		r := c.execJSON(body)
		if r["stdout"] != want || r["exit_code"] != float64(i%4) || r["stderr"] != "" {
			t.Errorf("command %d: stdout %q stderr %q exit %v; want %q exit %d", i, r["stdout"], r["stderr"], r["exit_code"], want, i%4)
		}
	}
}

// Commands sent back to back through the API, each as soon as the previous
// one answered, all run on the agent's spare shell (started after the
// previous command): none waits for a shell of its own forked beside the
// spare being started, which on the sandbox's one vCPU doubles the wait.
func TestExecBackToBackOnSpareShells(t *testing.T) {
	srv := testenv.StartServer(t)
	c, _ := createMinimal(t, srv, "b2b-spares")
	c.sh("true") // the first command starts the spare
	const spare = "/bin/sh -c . /proc/self/fd/3"
	for i := 0; i < 20; i++ {
		if got := c.sh(`tr '\0' ' ' </proc/$$/cmdline`); got != spare {
			t.Fatalf("command %d ran on %q, not on a spare shell (%q)", i+1, got, spare)
		}
	}
}

// The spare shell is started with SHELL set, so that bash skips looking the
// login shell up in the account database (nscd connects, /etc/passwd) on
// every spare's start; the command still sees SHELL as a new `sh -c` has it
// (the login shell, not exported), and a shell it starts looks it up again.
func TestExecSpareShellHasShellLikeANewShell(t *testing.T) {
	srv := testenv.StartServer(t)
	c, _ := createMinimal(t, srv, "spare-shell-var")
	c.sh("true") // the first command starts the spare
	got := c.sh(`tr '\0' ' ' </proc/$$/cmdline; echo
show='echo "${SHELL-unset} $(export -p | grep -c " SHELL=")"'
eval "$show"; sh -c "$show"
tr '\0' '\n' </proc/$$/environ | grep '^SHELL='`)
	want := "/bin/sh -c . /proc/self/fd/3 \n/bin/sh 0\n/bin/sh 0\nSHELL=/bin/sh"
	if got != want {
		t.Fatalf("on the spare shell:\n%s\nwant:\n%s", got, want)
	}
}
