package snapshot

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func commitSample(t *testing.T) (*Dir, string) {
	t.Helper()
	d, err := New(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	tmp, err := d.Begin("sb1")
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(tmp, "checkpoint.img"), []byte(strings.Repeat("memory", 1000)), 0o600)
	os.MkdirAll(filepath.Join(tmp, "sub"), 0o700)
	os.WriteFile(filepath.Join(tmp, "sub", "pages.img"), []byte("pages"), 0o600)
	final, size, err := d.Commit(tmp)
	if err != nil {
		t.Fatal(err)
	}
	if size != 6005 {
		t.Fatalf("size = %d", size)
	}
	if _, err := os.Stat(tmp); !os.IsNotExist(err) {
		t.Fatal("temp dir still exists after commit")
	}
	return d, final
}

func TestCommitThenVerify(t *testing.T) {
	_, final := commitSample(t)
	if err := Verify(final); err != nil {
		t.Fatalf("fresh snapshot fails verification: %v", err)
	}
}

func TestVerifyDetectsDamage(t *testing.T) {
	for name, damage := range map[string]func(dir string){
		"flipped byte": func(dir string) {
			p := filepath.Join(dir, "checkpoint.img")
			b, _ := os.ReadFile(p)
			b[100] ^= 1
			os.WriteFile(p, b, 0o600)
		},
		"truncated":    func(dir string) { os.Truncate(filepath.Join(dir, "sub", "pages.img"), 2) },
		"missing file": func(dir string) { os.Remove(filepath.Join(dir, "checkpoint.img")) },
		"no manifest":  func(dir string) { os.Remove(filepath.Join(dir, ManifestName)) },
		"missing dir":  func(dir string) { os.RemoveAll(dir) },
	} {
		t.Run(name, func(t *testing.T) {
			_, final := commitSample(t)
			damage(final)
			if err := Verify(final); !errors.Is(err, ErrCorrupt) {
				t.Fatalf("Verify = %v, want ErrCorrupt", err)
			}
		})
	}
}

func TestUncommittedIsNotTrusted(t *testing.T) {
	d, _ := commitSample(t)
	tmp, _ := d.Begin("sb1")
	os.WriteFile(filepath.Join(tmp, "checkpoint.img"), []byte("half"), 0o600)
	if !IsTemp(filepath.Base(tmp)) {
		t.Fatalf("%s not recognised as temporary", tmp)
	}
	if err := Verify(tmp); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("uncommitted checkpoint verified: %v", err)
	}
}

// A lazy restore checks the files the runtime reads up front before the
// sandbox runs, and the memory it loads afterwards: together, every file.
func TestVerifyExceptAndOpenCheckSplitTheFiles(t *testing.T) {
	_, final := commitSample(t)
	pages := []string{filepath.Join("sub", "pages.img")}
	os.Truncate(filepath.Join(final, "sub", "pages.img"), 2)
	if err := VerifyExcept(final, pages); err != nil {
		t.Fatalf("VerifyExcept of the intact files: %v", err)
	}
	p, err := OpenCheck(final, pages)
	if err != nil {
		t.Fatal(err)
	}
	// The check runs on what was opened, even once the snapshot is gone.
	os.RemoveAll(final + ".gone")
	if err := os.Rename(final, final+".gone"); err != nil {
		t.Fatal(err)
	}
	if err := p.Run(); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("check of the damaged pages file = %v, want ErrCorrupt", err)
	}
	os.Rename(final+".gone", final)
	if _, err := OpenCheck(final, []string{"nope.img"}); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("OpenCheck of a file the manifest lacks = %v, want ErrCorrupt", err)
	}
	if p, err := OpenCheck(final, []string{"checkpoint.img"}); err != nil || p.Run() != nil {
		t.Fatalf("check of an intact file: %v", err)
	}
	b, _ := os.ReadFile(filepath.Join(final, "checkpoint.img"))
	b[0] ^= 1
	os.WriteFile(filepath.Join(final, "checkpoint.img"), b, 0o600)
	if err := VerifyExcept(final, pages); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("VerifyExcept with a damaged state file = %v, want ErrCorrupt", err)
	}
}

// A seal given up (its checkpoint made garbage by a resume or a delete)
// reports why and writes no manifest: the directory is never trusted.
func TestSealContextCanceled(t *testing.T) {
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "checkpoint.img"), []byte(strings.Repeat("memory", 1000)), 0o600)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := SealContext(ctx, dir); !errors.Is(err, context.Canceled) {
		t.Fatalf("SealContext with a canceled context = %v, want context.Canceled", err)
	}
	if _, err := os.Stat(filepath.Join(dir, ManifestName)); !os.IsNotExist(err) {
		t.Fatalf("a canceled seal wrote a manifest (stat: %v)", err)
	}
	if err := Verify(dir); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("Verify after a canceled seal = %v, want ErrCorrupt", err)
	}
	if _, err := SealContext(context.Background(), dir); err != nil {
		t.Fatalf("sealing the same files afterwards: %v", err)
	}
	if err := Verify(dir); err != nil {
		t.Fatalf("Verify after sealing: %v", err)
	}
}
