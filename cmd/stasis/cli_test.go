package main

import (
	"archive/zip"
	"bytes"
	"flag"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

func TestParseInterspersed(t *testing.T) {
	cases := []struct {
		args     []string
		pos      []string
		jsonFlag bool
	}{
		{[]string{"ID", "--", "sh", "-c", "exit 3"}, []string{"ID", "sh", "-c", "exit 3"}, false},
		{[]string{"--json", "ID", "--", "ls", "-l"}, []string{"ID", "ls", "-l"}, true},
		{[]string{"ID", "--json", "--", "ls", "--json"}, []string{"ID", "ls", "--json"}, true},
		{[]string{"a", "b", "--json", "c"}, []string{"a", "b", "c"}, true},
		{[]string{"--", "-x"}, []string{"-x"}, false},
		{nil, nil, false},
	}
	for _, tc := range cases {
		fs := flag.NewFlagSet("t", flag.ContinueOnError)
		j := fs.Bool("json", false, "")
		pos, err := parseInterspersed(fs, tc.args)
		if err != nil {
			t.Fatalf("%q: %v", tc.args, err)
		}
		if !reflect.DeepEqual(pos, tc.pos) || *j != tc.jsonFlag {
			t.Errorf("%q: got %q json=%v, want %q json=%v", tc.args, pos, *j, tc.pos, tc.jsonFlag)
		}
	}
}

func TestCommandLine(t *testing.T) {
	cases := map[string][]string{
		"echo hi | wc -l":          {"echo hi | wc -l"},
		"sh -c 'exit 3'":           {"sh", "-c", "exit 3"},
		"echo 'a  b' c 'it'\\''s'": {"echo", "a  b", "c", "it's"},
		"printf '' x=1":            {"printf", "", "x=1"},
	}
	for want, args := range cases {
		if got := commandLine(args); got != want {
			t.Errorf("%q: got %q, want %q", args, got, want)
		}
	}
}

func TestParseLocation(t *testing.T) {
	cases := map[string]location{
		"abc:/home/user":  {id: "abc", path: "/home/user"},
		"abc:rel":         {id: "abc", path: "rel"},
		"./a:b":           {path: "./a:b"},
		"/tmp/x:y":        {path: "/tmp/x:y"},
		"plain":           {path: "plain"},
		":x":              {path: ":x"},
		"7a3f-12:/a/b:c/": {id: "7a3f-12", path: "/a/b:c/"},
	}
	for in, want := range cases {
		if got := parseLocation(in); got != want {
			t.Errorf("%q: got %+v, want %+v", in, got, want)
		}
	}
}

func TestKVAndDurationFlags(t *testing.T) {
	kv := kvFlag{}
	if err := kv.Set("a=b=c"); err != nil || kv["a"] != "b=c" {
		t.Fatalf("%v %v", kv, err)
	}
	if err := kv.Set("novalue"); err == nil {
		t.Fatal("accepted novalue")
	}
	var d durationFlag
	if err := d.Set("90"); err != nil || d.d.Seconds() != 90 {
		t.Fatalf("%v %v", d.d, err)
	}
	if err := d.Set("1h30m"); err != nil || d.d.Minutes() != 90 {
		t.Fatalf("%v %v", d.d, err)
	}
	if err := d.Set("soon"); err == nil {
		t.Fatal("accepted soon")
	}
}

func makeZip(t *testing.T, entries map[string]string) *zip.Reader {
	t.Helper()
	var buf bytes.Buffer
	zw := zip.NewWriter(&buf)
	for name, content := range entries {
		w, err := zw.Create(name)
		if err != nil {
			t.Fatal(err)
		}
		w.Write([]byte(content))
	}
	zw.Close()
	zr, err := zip.NewReader(bytes.NewReader(buf.Bytes()), int64(buf.Len()))
	if err != nil {
		t.Fatal(err)
	}
	return zr
}

func TestExtractZip(t *testing.T) {
	dir := t.TempDir()
	target := filepath.Join(dir, "out")
	zr := makeZip(t, map[string]string{"d/": "", "d/a.txt": "A", "d/sub/": "", "d/sub/b.txt": "B", "d/empty/": ""})
	files, n, err := extractZip(zr, "d", target)
	if err != nil {
		t.Fatal(err)
	}
	if files != 2 || n != 2 {
		t.Fatalf("files=%d bytes=%d", files, n)
	}
	if b, _ := os.ReadFile(filepath.Join(target, "sub", "b.txt")); string(b) != "B" {
		t.Fatalf("b.txt: %q", b)
	}
	if st, err := os.Stat(filepath.Join(target, "empty")); err != nil || !st.IsDir() {
		t.Fatalf("empty dir: %v", err)
	}
}

func TestExtractZipRefusesEscapes(t *testing.T) {
	for _, name := range []string{"d/../../evil", "/etc/evil", "d/..\\evil"} {
		dir := t.TempDir()
		zr := makeZip(t, map[string]string{name: "x"})
		if _, _, err := extractZip(zr, "d", filepath.Join(dir, "out")); err == nil {
			t.Errorf("%q: extracted", name)
		}
		if _, err := os.Stat(filepath.Join(dir, "evil")); err == nil {
			t.Errorf("%q: wrote outside the target", name)
		}
	}
}

func TestHumanBytes(t *testing.T) {
	for n, want := range map[int64]string{0: "0 B", 1023: "1023 B", 1536: "1.5 KiB", 5 << 20: "5.0 MiB"} {
		if got := humanBytes(n); got != want {
			t.Errorf("%d: %q", n, got)
		}
	}
	if !strings.Contains(humanBytes(3<<30), "GiB") {
		t.Error("GiB")
	}
}
