package health

import (
	"context"
	"errors"
	"path/filepath"
	"strings"
	"testing"
)

func TestReport(t *testing.T) {
	dir := t.TempDir()
	storeOK := func(context.Context) error { return nil }
	ctx := context.Background()

	c := New(Config{Store: storeOK, Runsc: "/bin/true", DataDir: dir, MinFreeBytes: 1})
	r := c.Check(ctx)
	if !r.OK() || !r.Store.OK || !r.Runtime.OK || !r.Disk.OK || r.Disk.FreeBytes == 0 {
		t.Fatalf("healthy: %+v", r)
	}
	if err := c.Room(); err != nil {
		t.Fatalf("Room: %v", err)
	}

	// Each failing check makes the report unhealthy and says why.
	c = New(Config{Store: func(context.Context) error { return errors.New("database is locked") },
		Runsc: filepath.Join(dir, "no-runsc"), DataDir: dir, MinFreeBytes: 1 << 62})
	r = c.Check(ctx)
	if r.OK() || r.Store.OK || !strings.Contains(r.Store.Error, "database is locked") {
		t.Errorf("store: %+v", r.Store)
	}
	if r.Runtime.OK || !strings.Contains(r.Runtime.Error, "no-runsc") {
		t.Errorf("runtime: %+v", r.Runtime)
	}
	if r.Disk.OK || !strings.Contains(r.Disk.Error, "--min-free-disk-mib") || r.Disk.MinFreeBytes != 1<<62 {
		t.Errorf("disk: %+v", r.Disk)
	}
	if err := c.Room(); err == nil {
		t.Error("Room: nil with less free space than the minimum")
	}
}
