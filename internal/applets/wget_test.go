package applets

import (
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// wget runs the applet in-process in dir and returns stdout, stderr, status.
func wget(t *testing.T, dir string, args ...string) (string, string, int) {
	t.Helper()
	cmd := appletCmd(t, "wget", args...)
	cmd.Dir = dir
	return run(t, cmd)
}

func testServer(t *testing.T) *httptest.Server {
	t.Helper()
	mux := http.NewServeMux()
	mux.HandleFunc("/hello.txt", func(w http.ResponseWriter, r *http.Request) {
		if rg := r.Header.Get("Range"); rg != "" {
			var from int
			fmt.Sscanf(rg, "bytes=%d-", &from)
			w.Header().Set("Content-Range", fmt.Sprintf("bytes %d-11/12", from))
			w.WriteHeader(http.StatusPartialContent)
			io.WriteString(w, "hello world\n"[from:])
			return
		}
		io.WriteString(w, "hello world\n")
	})
	mux.HandleFunc("/echo", func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		fmt.Fprintf(w, "%s host=%s ua=%s x=%s ct=%s body=%s\n", r.Method, r.Host,
			r.Header.Get("User-Agent"), r.Header.Get("X-Test"), r.Header.Get("Content-Type"), body)
	})
	mux.HandleFunc("/dir/", func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "listing\n") })
	mux.HandleFunc("/redirect", func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, "/hello.txt", http.StatusFound)
	})
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	return srv
}

// -T is the flag busybox 1.35's wget segfaults on; every spelling works here.
func TestWgetTimeoutFlagAndStdout(t *testing.T) {
	srv := testServer(t)
	for _, args := range [][]string{
		{"-q", "-T", "5", "-O", "-", srv.URL + "/hello.txt"},
		{"-qO-", "-T5", srv.URL + "/hello.txt"},
		{"--quiet", "--timeout=5", "--output-document=-", srv.URL + "/hello.txt"},
		{"-q", "--timeout", "0.5", "-O-", strings.TrimPrefix(srv.URL, "http://") + "/hello.txt"},
		{"-q", "-O", "-", srv.URL + "/redirect"},
	} {
		out, errs, code := wget(t, t.TempDir(), args...)
		if code != 0 || out != "hello world\n" || errs != "" {
			t.Errorf("wget %q: exit %d, stdout %q, stderr %q", args, code, out, errs)
		}
	}
}

func TestWgetHeadersAgentAndPost(t *testing.T) {
	srv := testServer(t)
	dir := t.TempDir()
	out, errs, code := wget(t, dir, "-q", "-O", "-", "-U", "stasis-test/1",
		"--header", "X-Test: one", "--header=Host: example.invalid", srv.URL+"/echo")
	if want := "GET host=example.invalid ua=stasis-test/1 x=one ct= body=\n"; code != 0 || out != want {
		t.Errorf("headers: exit %d, stdout %q (want %q), stderr %q", code, out, want, errs)
	}
	out, _, _ = wget(t, dir, "-qO-", srv.URL+"/echo")
	if !strings.Contains(out, "ua=Wget ") {
		t.Errorf("default User-Agent: %q, want Wget as busybox sends", out)
	}
	out, errs, code = wget(t, dir, "-qO-", "--post-data", "a=1&b=2", srv.URL+"/echo")
	if want := "POST host=" + strings.TrimPrefix(srv.URL, "http://") + " ua=Wget x= ct=application/x-www-form-urlencoded body=a=1&b=2\n"; code != 0 || out != want {
		t.Errorf("post-data: exit %d, stdout %q (want %q), stderr %q", code, out, want, errs)
	}
	if err := os.WriteFile(filepath.Join(dir, "form"), []byte("from-file"), 0o644); err != nil {
		t.Fatal(err)
	}
	out, _, code = wget(t, dir, "-qO-", "--post-file", "form", srv.URL+"/echo")
	if code != 0 || !strings.Contains(out, "POST ") || !strings.Contains(out, "body=from-file") {
		t.Errorf("post-file: exit %d, stdout %q", code, out)
	}
}

func TestWgetSavesFiles(t *testing.T) {
	srv := testServer(t)
	dir := t.TempDir()
	_, errs, code := wget(t, dir, srv.URL+"/hello.txt")
	if code != 0 || !strings.Contains(errs, "saving to 'hello.txt'") || !strings.Contains(errs, "'hello.txt' saved") {
		t.Fatalf("exit %d, stderr %q", code, errs)
	}
	if b, _ := os.ReadFile(filepath.Join(dir, "hello.txt")); string(b) != "hello world\n" {
		t.Fatalf("hello.txt = %q", b)
	}
	// A file named after the URL is never overwritten, as by busybox.
	if _, errs, code := wget(t, dir, "-q", srv.URL+"/hello.txt"); code != 1 || !strings.Contains(errs, "can't open 'hello.txt'") {
		t.Errorf("existing hello.txt: exit %d, stderr %q; want a refusal", code, errs)
	}
	// -P picks the directory; a directory URL saves index.html.
	if err := os.Mkdir(filepath.Join(dir, "sub"), 0o755); err != nil {
		t.Fatal(err)
	}
	if _, errs, code := wget(t, dir, "-q", "-P", "sub", srv.URL+"/dir/"); code != 0 {
		t.Fatalf("-P: exit %d, stderr %q", code, errs)
	}
	if b, _ := os.ReadFile(filepath.Join(dir, "sub/index.html")); string(b) != "listing\n" {
		t.Errorf("sub/index.html = %q", b)
	}
	// -O overwrites and concatenates several URLs.
	if _, errs, code := wget(t, dir, "-q", "-O", "both", srv.URL+"/hello.txt", srv.URL+"/dir/"); code != 0 {
		t.Fatalf("-O both: exit %d, stderr %q", code, errs)
	}
	if b, _ := os.ReadFile(filepath.Join(dir, "both")); string(b) != "hello world\nlisting\n" {
		t.Errorf("both = %q", b)
	}
	// -c fetches only the missing tail.
	if err := os.WriteFile(filepath.Join(dir, "sub/hello.txt"), []byte("hello"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, errs, code := wget(t, dir, "-q", "-c", "-P", "sub", srv.URL+"/hello.txt"); code != 0 {
		t.Fatalf("-c: exit %d, stderr %q", code, errs)
	}
	if b, _ := os.ReadFile(filepath.Join(dir, "sub/hello.txt")); string(b) != "hello world\n" {
		t.Errorf("continued sub/hello.txt = %q", b)
	}
	// -o sends the messages to a log file.
	if _, errs, code := wget(t, dir, "-o", "log", "-O", "-", srv.URL+"/hello.txt"); code != 0 || errs != "" {
		t.Errorf("-o: exit %d, stderr %q", code, errs)
	}
	if b, _ := os.ReadFile(filepath.Join(dir, "log")); !strings.Contains(string(b), "Connecting to") {
		t.Errorf("log = %q", b)
	}
}

func TestWgetErrors(t *testing.T) {
	srv := testServer(t)
	dir := t.TempDir()
	_, errs, code := wget(t, dir, "-q", srv.URL+"/missing")
	if code != 1 || !strings.Contains(errs, "server returned error: HTTP/1.1 404 Not Found") {
		t.Errorf("404: exit %d, stderr %q", code, errs)
	}
	if _, err := os.Stat(filepath.Join(dir, "missing")); !os.IsNotExist(err) {
		t.Errorf("a 404 left a file behind (%v)", err)
	}
	if _, errs, code := wget(t, dir, "-q", "--spider", srv.URL+"/missing"); code != 1 || errs == "" {
		t.Errorf("spider on 404: exit %d, stderr %q", code, errs)
	}
	if out, errs, code := wget(t, dir, "--spider", srv.URL+"/hello.txt"); code != 0 || out != "" || !strings.Contains(errs, "remote file exists") {
		t.Errorf("spider: exit %d, stdout %q, stderr %q", code, out, errs)
	}
	if _, err := os.Stat(filepath.Join(dir, "hello.txt")); !os.IsNotExist(err) {
		t.Errorf("--spider saved the file (%v)", err)
	}
	// A port nobody listens on: srv's, once closed.
	closed := httptest.NewServer(http.NotFoundHandler())
	closed.Close()
	if _, errs, code := wget(t, dir, "-q", "-T", "5", "-O-", closed.URL+"/"); code != 1 || !strings.Contains(errs, "can't connect to remote host") {
		t.Errorf("refused: exit %d, stderr %q", code, errs)
	}
	for _, args := range [][]string{
		{"--bogus", srv.URL}, {"-Z", srv.URL}, {"-T", "soon", srv.URL}, {"-O"}, {"-q"},
		{"--header", "no-colon", srv.URL}, {"-Y", "maybe", srv.URL}, {"--spider=yes", srv.URL},
	} {
		if _, errs, code := wget(t, dir, args...); code != 1 || !strings.Contains(errs, "usage: wget") {
			t.Errorf("wget %q: exit %d, stderr %q; want 1 with usage", args, code, errs)
		}
	}
	if _, errs, code := wget(t, dir, "-q", "ftp://127.0.0.1/x"); code != 1 || !strings.Contains(errs, "http and https") {
		t.Errorf("ftp: exit %d, stderr %q", code, errs)
	}
}

// -T bounds each wait for the network, not the whole transfer: a server that
// stalls fails the download, one that keeps sending finishes it.
func TestWgetTimeoutIsPerRead(t *testing.T) {
	release := make(chan struct{})
	mux := http.NewServeMux()
	mux.HandleFunc("/stall", func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "partial")
		w.(http.Flusher).Flush()
		select {
		case <-release:
		case <-r.Context().Done():
		}
	})
	mux.HandleFunc("/trickle", func(w http.ResponseWriter, r *http.Request) {
		for i := range 6 {
			fmt.Fprintf(w, "%d", i)
			w.(http.Flusher).Flush()
			time.Sleep(300 * time.Millisecond)
		}
	})
	srv := httptest.NewServer(mux)
	defer srv.Close()
	defer close(release)

	out, errs, code := wget(t, t.TempDir(), "-q", "-T", "1", "-O", "-", srv.URL+"/stall")
	if code != 1 || !strings.Contains(errs, "download timed out") || out != "partial" {
		t.Errorf("stalled server: exit %d, stdout %q, stderr %q; want a timeout after the partial body", code, out, errs)
	}
	// 6 × 0.3 s is longer than -T, but no single wait is.
	out, errs, code = wget(t, t.TempDir(), "-q", "-T", "1.5", "-O", "-", srv.URL+"/trickle")
	if code != 0 || out != "012345" {
		t.Errorf("trickling server: exit %d, stdout %q, stderr %q", code, out, errs)
	}
}
