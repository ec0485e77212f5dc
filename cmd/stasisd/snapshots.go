package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"path/filepath"

	"github.com/stasis-sandbox/stasis/internal/objstore"
	"github.com/stasis-sandbox/stasis/internal/store"
)

// snapshotFlags configure where snapshots go besides the local disk.
type snapshotFlags struct {
	url      string
	cacheDir string
	cacheMiB int64
}

func (f *snapshotFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&f.url, "snapshot-url", "", "object store for portable snapshots: s3://BUCKET/PREFIX (endpoint, region and credentials from AWS_ENDPOINT_URL_S3, AWS_REGION, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY) or file:///DIR (default: none; snapshots stay in the data dir)")
	fs.StringVar(&f.cacheDir, "snapshot-cache-dir", "", "where snapshots downloaded from --snapshot-url are kept (default DATA_DIR/snapshot-cache)")
	fs.Int64Var(&f.cacheMiB, "snapshot-cache-mib", 20480, "size limit of the snapshot cache; the least recently used snapshots go first")
}

// open returns the uploader and the download cache of --snapshot-url, or
// nils without one. The uploader reports upload states to the store.
func (f *snapshotFlags) open(ctx context.Context, dataDir string, st store.Store, log *slog.Logger) (*objstore.Uploader, *objstore.Cache, error) {
	if f.url == "" {
		return nil, nil, nil
	}
	if f.cacheMiB < 0 {
		return nil, nil, fmt.Errorf("--snapshot-cache-mib must not be negative")
	}
	blobs, err := objstore.Open(ctx, f.url)
	if err != nil {
		return nil, nil, fmt.Errorf("--snapshot-url: %w", err)
	}
	dir := f.cacheDir
	if dir == "" {
		dir = filepath.Join(dataDir, "snapshot-cache")
	}
	cache, err := objstore.NewCache(blobs, dir, f.cacheMiB<<20)
	if err != nil {
		return nil, nil, err
	}
	log.Info("portable snapshots", "store", blobs.String(), "cache", dir, "cache_mib", f.cacheMiB)
	return objstore.NewUploader(objstore.UploaderConfig{Blobs: blobs, Status: st, Logger: log}), cache, nil
}
