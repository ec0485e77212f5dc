package main

import (
	"context"
	"crypto/rand"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/aws/aws-sdk-go-v2/service/s3/types"
	"golang.org/x/sync/errgroup"

	"github.com/stasis-sandbox/stasis/internal/objstore"
	"github.com/stasis-sandbox/stasis/internal/testenv"
)

// ---- snapshot upload to an object store ----

// uploadPlan is the snapshot sizes (MiB) of the upload phase and the
// repetitions of each.
func (c *Config) uploadPlan() (sizes, reps []int) {
	if c.Quick {
		return []int{10}, []int{2}
	}
	return []int{10, 200, 1024}, []int{5, 3, 2}
}

// benchSnapshotUpload measures stasis's snapshot uploader (SHA-256 of every
// file, multipart, manifest last) against a bare S3 client sending the
// same files (PutObject, or multipart with the same part size and
// concurrency), alternately, to the same real S3 server (versitygw on
// loopback). The files are shaped like a checkpoint: one large memory
// file of random bytes and a few small ones.
func (b *bench) benchSnapshotUpload(ctx context.Context) error {
	tmp, err := os.MkdirTemp(b.cfg.TempDir, "stasis-bench-s3-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	srv, err := testenv.LaunchS3(tmp)
	if err != nil {
		return err
	}
	defer srv.Stop()
	blobs, err := srv.Client("bench")
	if err != nil {
		return err
	}
	up := objstore.NewUploader(objstore.UploaderConfig{Blobs: blobs})
	defer up.Close()
	sizes, reps := b.cfg.uploadPlan()
	for i, size := range sizes {
		dir := filepath.Join(tmp, fmt.Sprintf("snap-%d", size))
		if err := fakeCheckpoint(dir, int64(size)*mib); err != nil {
			return err
		}
		var sd, rd durations
		for rep := range reps[i] {
			ref := objstore.Ref{Kind: objstore.KindSandbox, ID: fmt.Sprintf("bench-%d-%d", size, rep), Snap: "snap-1"}
			d, err := timed(func() error {
				if err := up.Upload(ref, 0, dir); err != nil {
					return err
				}
				if err := up.Wait(ctx, ref.Kind, ref.ID); err != nil {
					return err
				}
				if st, _ := up.State(ref.Kind, ref.ID); st.State != objstore.StatePortable {
					return fmt.Errorf("upload of %s ended %s: %s", ref, st.State, st.Detail)
				}
				return nil
			})
			if err != nil {
				return err
			}
			sd.add(d)
			d, err = timed(func() error { return rawUpload(ctx, blobs, fmt.Sprintf("raw/%d-%d/", size, rep), dir) })
			if err != nil {
				return err
			}
			rd.add(d)
			// Keep the server's disk use to one pair of copies.
			if err := objstore.DeleteAll(ctx, blobs, ref.Kind, ref.ID); err != nil {
				return err
			}
			if err := deleteRaw(ctx, blobs, fmt.Sprintf("raw/%d-%d/", size, rep)); err != nil {
				return err
			}
		}
		ss, rs := sd.stat(), rd.stat()
		b.add(Row{Group: "snapshot-upload", Name: fmt.Sprintf("upload %d MB snapshot to S3", size),
			Stasis: ss, StasisOp: "objstore.Uploader: SHA-256 per file, multipart, manifest last",
			Raw: rs, RawOp: "aws-sdk-go-v2 PutObject / multipart of the same files",
			Extra: map[string]any{"stasis_mb_per_s": throughput(int64(size)*mib, ss),
				"raw_mb_per_s": throughput(int64(size)*mib, rs)}})
	}
	os.RemoveAll(tmp)
	return nil
}

// fakeCheckpoint writes a directory shaped like a gVisor checkpoint.
func fakeCheckpoint(dir string, bytes int64) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	f, err := os.Create(filepath.Join(dir, "pages.img"))
	if err != nil {
		return err
	}
	_, err = io.CopyN(f, rand.Reader, bytes)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return err
	}
	for name, n := range map[string]int{"checkpoint.img": 256 << 10, "pages_meta.img": 64 << 10, "stasis-manifest.json": 300} {
		b := make([]byte, n)
		rand.Read(b)
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o600); err != nil {
			return err
		}
	}
	return nil
}

// rawUpload sends dir's files under prefix with the bare S3 client: one
// PutObject per small file, multipart (same part size and concurrency as
// the uploader) for large ones.
func rawUpload(ctx context.Context, blobs *objstore.S3, prefix, dir string) error {
	return filepath.WalkDir(dir, func(path string, de fs.DirEntry, err error) error {
		if err != nil || !de.Type().IsRegular() {
			return err
		}
		rel, _ := filepath.Rel(dir, path)
		key := blobs.Prefix + "/" + prefix + filepath.ToSlash(rel)
		f, err := os.Open(path)
		if err != nil {
			return err
		}
		defer f.Close()
		fi, err := f.Stat()
		if err != nil {
			return err
		}
		size := fi.Size()
		if size <= blobs.PartSize {
			_, err = blobs.Client.PutObject(ctx, &s3.PutObjectInput{Bucket: &blobs.Bucket, Key: &key,
				Body: io.NewSectionReader(f, 0, size), ContentLength: aws.Int64(size)})
			return err
		}
		up, err := blobs.Client.CreateMultipartUpload(ctx, &s3.CreateMultipartUploadInput{Bucket: &blobs.Bucket, Key: &key})
		if err != nil {
			return err
		}
		n := int((size + blobs.PartSize - 1) / blobs.PartSize)
		parts := make([]types.CompletedPart, n)
		g, gctx := errgroup.WithContext(ctx)
		g.SetLimit(blobs.PartConcurrency)
		for i := range n {
			off := int64(i) * blobs.PartSize
			g.Go(func() error {
				num := int32(i + 1)
				out, err := blobs.Client.UploadPart(gctx, &s3.UploadPartInput{Bucket: &blobs.Bucket, Key: &key,
					UploadId: up.UploadId, PartNumber: &num,
					Body:          io.NewSectionReader(f, off, min(blobs.PartSize, size-off)),
					ContentLength: aws.Int64(min(blobs.PartSize, size-off))})
				if err == nil {
					parts[i] = types.CompletedPart{ETag: out.ETag, PartNumber: &num}
				}
				return err
			})
		}
		if err := g.Wait(); err != nil {
			return err
		}
		_, err = blobs.Client.CompleteMultipartUpload(ctx, &s3.CompleteMultipartUploadInput{Bucket: &blobs.Bucket,
			Key: &key, UploadId: up.UploadId, MultipartUpload: &types.CompletedMultipartUpload{Parts: parts}})
		return err
	})
}

func deleteRaw(ctx context.Context, blobs *objstore.S3, prefix string) error {
	keys, err := blobs.List(ctx, prefix)
	if err != nil {
		return err
	}
	return blobs.Delete(ctx, keys...)
}
