// Package objstore keeps snapshots in an object store so that they outlive
// the node that took them: a Blobs interface (S3-compatible stores, or a
// local directory), a background Uploader (per-file SHA-256 checksums,
// multipart, manifest written last, retries with backoff) and a Cache that
// downloads a snapshot by its manifest, verifies every checksum and keeps
// recent snapshots on local disk under a size limit.
package objstore

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/url"
	"strings"
)

// ErrNotFound means no object has the key.
var ErrNotFound = errors.New("objstore: no such object")

// Blobs is a flat space of immutable objects named by slash-separated keys.
type Blobs interface {
	// Put stores size bytes read from r under key, replacing any object
	// there. Large objects may be sent in parts, concurrently (hence
	// io.ReaderAt).
	Put(ctx context.Context, key string, r io.ReaderAt, size int64) error
	// Get opens the object at key (ErrNotFound if there is none).
	Get(ctx context.Context, key string) (io.ReadCloser, error)
	// List returns the keys that start with prefix.
	List(ctx context.Context, prefix string) ([]string, error)
	// Delete removes the objects at keys; missing ones are not an error.
	Delete(ctx context.Context, keys ...string) error
	// String names the store for logs and errors, e.g. s3://bucket/prefix.
	String() string
}

// Open returns the blob store that url names: s3://BUCKET/PREFIX (endpoint,
// region and credentials from the standard AWS environment variables) or
// file:///DIR.
func Open(ctx context.Context, rawURL string) (Blobs, error) {
	u, err := url.Parse(rawURL)
	if err != nil {
		return nil, fmt.Errorf("snapshot url %q: %w", rawURL, err)
	}
	switch u.Scheme {
	case "s3":
		if u.Host == "" {
			return nil, fmt.Errorf("snapshot url %q: no bucket (want s3://BUCKET/PREFIX)", rawURL)
		}
		return NewS3(ctx, u.Host, strings.Trim(u.Path, "/"))
	case "file":
		if u.Path == "" || u.Host != "" {
			return nil, fmt.Errorf("snapshot url %q: want file:///absolute/dir", rawURL)
		}
		return NewLocal(u.Path)
	default:
		return nil, fmt.Errorf("snapshot url %q: unsupported scheme (want s3://BUCKET/PREFIX or file:///DIR)", rawURL)
	}
}
