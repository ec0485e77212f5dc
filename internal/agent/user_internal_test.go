package agent

import (
	"os"
	"path/filepath"
	"testing"
)

// The account watch reports every kind of change to the account files on
// the very next check, and nothing when they did not change; so does its
// stat fallback (used when a file is a symlink).
func TestAccountWatchSeesEveryChange(t *testing.T) {
	for _, mode := range []string{"inotify", "stat"} {
		t.Run(mode, func(t *testing.T) {
			dir := t.TempDir()
			passwd, group := filepath.Join(dir, "passwd"), filepath.Join(dir, "group")
			write := func(p, s string) {
				t.Helper()
				if err := os.WriteFile(p, []byte(s), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			write(passwd, "root:x:0:0::/root:/bin/sh\n")
			write(group, "root:x:0:\n")
			if mode == "stat" {
				real := filepath.Join(dir, "group.real")
				os.Rename(group, real)
				os.Symlink(real, group)
			}
			w := newAccountWatch([]string{passwd, group})
			if got := w.fd >= 0; got != (mode == "inotify") {
				t.Fatalf("watching with inotify: %v", got)
			}
			t.Cleanup(func() {
				if w.fd >= 0 {
					w.fallBack()
				}
			})
			check := func(what string, want bool) {
				t.Helper()
				if got := w.changed(); got != want {
					t.Fatalf("%s: changed %v, want %v", what, got, want)
				}
			}
			check("first check", true)
			check("no change", false)
			write(passwd, "root:x:0:0::/root:/bin/sh\nbob:x:1000:1000::/home/bob:/bin/sh\n")
			check("passwd rewritten in place", true)
			check("no change since", false)
			tmp := filepath.Join(dir, "passwd+")
			write(tmp, "root:x:0:0::/root:/bin/sh\nbob:x:1001:1001::/home/bob:/bin/sh\n")
			os.Rename(tmp, passwd)
			check("passwd replaced by a rename", true)
			check("no change since", false)
			f, _ := os.OpenFile(group, os.O_APPEND|os.O_WRONLY, 0)
			f.WriteString("bob:x:1001:\n")
			f.Close()
			check("group appended to", true)
			os.Remove(passwd)
			check("passwd removed", true)
			check("no change since", false)
		})
	}
}

// passwdShell finds the login shell as glibc's getpwuid and bash do: the
// first entry with the uid, /bin/sh when it names none or there is none.
func TestPasswdShell(t *testing.T) {
	const passwd = "root:x:0:0:root:/root:/bin/bash\n" +
		"toor:x:0:0:second root:/root:/bin/zsh\n" +
		"broken:x:5\n" +
		"empty:x:7:7::/home/empty:\n" +
		"user:x:1000:1000:user:/home/user:/usr/bin/fish"
	for uid, want := range map[uint32]string{0: "/bin/bash", 7: "/bin/sh", 5: "/bin/sh", 1000: "/usr/bin/fish", 42: "/bin/sh"} {
		if got := passwdShell(passwd, uid); got != want {
			t.Errorf("uid %d: %q, want %q", uid, got, want)
		}
	}
}

// passwdEntry, which both loginShell and rootAccount read /etc/passwd
// with, finds the first entry by uid, or by name or uid, and skips lines
// that are not entries.
func TestPasswdEntry(t *testing.T) {
	const passwd = "broken:x:5:5\n" +
		"root:x:0:0:root:/root:/bin/bash\n" +
		"toor:x:0:0:second root:/root:/bin/zsh\n" +
		"5:x:1001:1001::/home/five:/bin/sh\n" +
		"bob:x:5:6::/home/bob:/bin/sh"
	for _, c := range []struct {
		key    string
		byName bool
		want   string // the entry's name, "" for none
	}{
		{"0", false, "root"}, {"toor", true, "toor"}, {"toor", false, ""}, {"broken", true, ""},
		{"5", false, "bob"}, {"5", true, "5"}, {"1001", true, "5"}, {"42", true, ""},
	} {
		got := ""
		if f := passwdEntry(passwd, c.key, c.byName); f != nil {
			got = f[0]
		}
		if got != c.want {
			t.Errorf("passwdEntry(%q, byName %v) = %q, want %q", c.key, c.byName, got, c.want)
		}
	}
}
