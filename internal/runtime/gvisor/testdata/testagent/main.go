// Command testagent is a stand-in for stasis-agent used by the gvisor driver
// tests. It runs as PID 1 of a sandbox, listens on runtime.AgentPort and
// serves its state as JSON:
//
//   - counter: incremented every 50ms by a goroutine (continues across
//     checkpoint/restore if memory state is preserved),
//   - boot: a random token chosen at process start and written to /tmp/boot,
//   - file: the current content of /tmp/counter, rewritten on every tick.
//
// GET /dial?addr=host:port tries a TCP connection from inside the sandbox.
// GET /fill?mb=N&path=P writes N MiB of random data to P (default /tmp/fill).
// GET /stat?path=P answers with the size of P.
// GET /hold?mb=N fills N MiB of memory with random bytes, keeps it, and
// answers with its SHA-256; GET /sum answers with the SHA-256 of the held
// memory as it is now (a restored sandbox must give the same).
package main

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"log"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"sync/atomic"
	"time"
)

const port = 49983 // runtime.AgentPort

func main() {
	var counter atomic.Int64
	b := make([]byte, 8)
	if _, err := rand.Read(b); err != nil {
		log.Fatal(err)
	}
	boot := hex.EncodeToString(b)
	if err := os.WriteFile("/tmp/boot", []byte(boot), 0o644); err != nil {
		log.Fatal(err)
	}
	go func() {
		for range time.Tick(50 * time.Millisecond) {
			n := counter.Add(1)
			// Replaced whole (write, then rename), so that a reader never
			// sees it truncated and empty.
			if os.WriteFile("/tmp/counter.new", []byte(strconv.FormatInt(n, 10)), 0o644) == nil {
				_ = os.Rename("/tmp/counter.new", "/tmp/counter")
			}
		}
	}()

	mux := http.NewServeMux()
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		file, _ := os.ReadFile("/tmp/counter")
		bootFile, _ := os.ReadFile("/tmp/boot")
		host, _ := os.Hostname()
		_ = json.NewEncoder(w).Encode(map[string]any{
			"counter":   counter.Load(),
			"boot":      boot,
			"boot_file": string(bootFile),
			"file":      string(file),
			"pid":       os.Getpid(),
			"hostname":  host,
			"env":       os.Getenv("STASIS_TEST"),
		})
	})
	mux.HandleFunc("/dial", func(w http.ResponseWriter, r *http.Request) {
		c, err := net.DialTimeout("tcp", r.URL.Query().Get("addr"), time.Second)
		if err != nil {
			fmt.Fprintf(w, "error: %v", err)
			return
		}
		c.Close()
		fmt.Fprint(w, "ok")
	})
	mux.HandleFunc("/fill", func(w http.ResponseWriter, r *http.Request) {
		mb, _ := strconv.Atoi(r.URL.Query().Get("mb"))
		path := r.URL.Query().Get("path")
		if path == "" {
			path = "/tmp/fill"
		}
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			http.Error(w, err.Error(), 500)
			return
		}
		f, err := os.Create(path)
		if err != nil {
			http.Error(w, err.Error(), 500)
			return
		}
		defer f.Close()
		buf := make([]byte, 1<<20)
		for i := 0; i < mb; i++ {
			rand.Read(buf)
			if _, err := f.Write(buf); err != nil {
				http.Error(w, err.Error(), 500)
				return
			}
		}
		fmt.Fprint(w, "ok")
	})
	mux.HandleFunc("/stat", func(w http.ResponseWriter, r *http.Request) {
		fi, err := os.Stat(r.URL.Query().Get("path"))
		if err != nil {
			http.Error(w, err.Error(), 404)
			return
		}
		fmt.Fprint(w, fi.Size())
	})
	var held []byte
	sum := func() string { h := sha256.Sum256(held); return hex.EncodeToString(h[:]) }
	mux.HandleFunc("/hold", func(w http.ResponseWriter, r *http.Request) {
		mb, _ := strconv.Atoi(r.URL.Query().Get("mb"))
		held = make([]byte, mb<<20)
		rand.Read(held)
		fmt.Fprint(w, sum())
	})
	mux.HandleFunc("/sum", func(w http.ResponseWriter, r *http.Request) { fmt.Fprint(w, sum()) })
	log.Fatal(http.ListenAndServe(fmt.Sprintf(":%d", port), mux))
}
