package objstore

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"

	"github.com/aws/aws-sdk-go-v2/aws"
	awshttp "github.com/aws/aws-sdk-go-v2/aws/transport/http"
	"github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/aws/aws-sdk-go-v2/service/s3/types"
	"golang.org/x/sync/errgroup"
)

// Multipart defaults: objects above PartSize go in parts of that size,
// PartConcurrency at a time.
const (
	DefaultPartSize        = 16 << 20
	DefaultPartConcurrency = 4
)

// S3 is a Blobs in a bucket of an S3-compatible store, under a key prefix.
type S3 struct {
	Client          *s3.Client
	Bucket          string
	Prefix          string // "" or a path without slashes at either end
	PartSize        int64
	PartConcurrency int
}

// NewS3 returns the store of bucket/prefix with the client configured by
// the standard AWS environment (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY,
// AWS_REGION, AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL, shared config files),
// path-style addressing (what self-hosted stores serve) and region
// us-east-1 when none is set. opts override the environment (tests).
func NewS3(ctx context.Context, bucket, prefix string, opts ...func(*config.LoadOptions) error) (*S3, error) {
	opts = append([]func(*config.LoadOptions) error{
		// Checksums only where S3 requires them: several S3-compatible
		// stores refuse the newer default trailers. Our manifest carries
		// each file's SHA-256, checked end to end on download.
		config.WithRequestChecksumCalculation(aws.RequestChecksumCalculationWhenRequired),
		config.WithResponseChecksumValidation(aws.ResponseChecksumValidationWhenRequired),
	}, opts...)
	cfg, err := config.LoadDefaultConfig(ctx, opts...)
	if err != nil {
		return nil, fmt.Errorf("s3 config: %w", err)
	}
	if cfg.Region == "" {
		cfg.Region = "us-east-1"
	}
	client := s3.NewFromConfig(cfg, func(o *s3.Options) { o.UsePathStyle = true })
	return &S3{Client: client, Bucket: bucket, Prefix: prefix,
		PartSize: DefaultPartSize, PartConcurrency: DefaultPartConcurrency}, nil
}

func (s *S3) String() string {
	if s.Prefix == "" {
		return "s3://" + s.Bucket
	}
	return "s3://" + s.Bucket + "/" + s.Prefix
}

func (s *S3) key(k string) string {
	if s.Prefix == "" {
		return k
	}
	return s.Prefix + "/" + k
}

// Put sends a small object in one request and a large one as a multipart
// upload, aborted if any part fails (so the store keeps no orphan parts).
func (s *S3) Put(ctx context.Context, key string, r io.ReaderAt, size int64) error {
	if size <= s.PartSize {
		_, err := s.Client.PutObject(ctx, &s3.PutObjectInput{
			Bucket: &s.Bucket, Key: aws.String(s.key(key)),
			Body: io.NewSectionReader(r, 0, size), ContentLength: aws.Int64(size),
		})
		if err != nil {
			return fmt.Errorf("put %s: %w", key, err)
		}
		return nil
	}
	return s.putMultipart(ctx, key, r, size)
}

func (s *S3) putMultipart(ctx context.Context, key string, r io.ReaderAt, size int64) error {
	full := s.key(key)
	up, err := s.Client.CreateMultipartUpload(ctx, &s3.CreateMultipartUploadInput{Bucket: &s.Bucket, Key: &full})
	if err != nil {
		return fmt.Errorf("put %s: start multipart: %w", key, err)
	}
	n := int((size + s.PartSize - 1) / s.PartSize)
	parts := make([]types.CompletedPart, n)
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(max(1, s.PartConcurrency))
	for i := range n {
		off := int64(i) * s.PartSize
		length := min(s.PartSize, size-off)
		g.Go(func() error {
			num := int32(i + 1)
			out, err := s.Client.UploadPart(gctx, &s3.UploadPartInput{
				Bucket: &s.Bucket, Key: &full, UploadId: up.UploadId, PartNumber: &num,
				Body: io.NewSectionReader(r, off, length), ContentLength: aws.Int64(length),
			})
			if err != nil {
				return fmt.Errorf("part %d: %w", num, err)
			}
			parts[i] = types.CompletedPart{ETag: out.ETag, PartNumber: &num}
			return nil
		})
	}
	err = g.Wait()
	if err == nil {
		_, err = s.Client.CompleteMultipartUpload(ctx, &s3.CompleteMultipartUploadInput{
			Bucket: &s.Bucket, Key: &full, UploadId: up.UploadId,
			MultipartUpload: &types.CompletedMultipartUpload{Parts: parts},
		})
	}
	if err != nil {
		// Best effort, on a context of its own: ctx may be what ended.
		actx, cancel := context.WithTimeout(context.WithoutCancel(ctx), defaultOpTimeout)
		s.Client.AbortMultipartUpload(actx, &s3.AbortMultipartUploadInput{Bucket: &s.Bucket, Key: &full, UploadId: up.UploadId})
		cancel()
		return fmt.Errorf("put %s: multipart: %w", key, err)
	}
	return nil
}

func (s *S3) Get(ctx context.Context, key string) (io.ReadCloser, error) {
	out, err := s.Client.GetObject(ctx, &s3.GetObjectInput{Bucket: &s.Bucket, Key: aws.String(s.key(key))})
	if err != nil {
		if isNotFound(err) {
			return nil, fmt.Errorf("%w: %s", ErrNotFound, key)
		}
		return nil, fmt.Errorf("get %s: %w", key, err)
	}
	return out.Body, nil
}

func (s *S3) List(ctx context.Context, prefix string) ([]string, error) {
	full := s.key(prefix)
	strip := len(s.key(""))
	var keys []string
	p := s3.NewListObjectsV2Paginator(s.Client, &s3.ListObjectsV2Input{Bucket: &s.Bucket, Prefix: &full})
	for p.HasMorePages() {
		page, err := p.NextPage(ctx)
		if err != nil {
			return nil, fmt.Errorf("list %s: %w", prefix, err)
		}
		for _, o := range page.Contents {
			keys = append(keys, (*o.Key)[strip:])
		}
	}
	return keys, nil
}

// Delete removes keys in batches of S3's limit of 1000 per request.
func (s *S3) Delete(ctx context.Context, keys ...string) error {
	for len(keys) > 0 {
		batch := keys[:min(len(keys), 1000)]
		keys = keys[len(batch):]
		ids := make([]types.ObjectIdentifier, len(batch))
		for i, k := range batch {
			ids[i] = types.ObjectIdentifier{Key: aws.String(s.key(k))}
		}
		out, err := s.Client.DeleteObjects(ctx, &s3.DeleteObjectsInput{
			Bucket: &s.Bucket, Delete: &types.Delete{Objects: ids, Quiet: aws.Bool(true)},
		})
		if err != nil {
			return fmt.Errorf("delete: %w", err)
		}
		if len(out.Errors) > 0 {
			e := out.Errors[0]
			return fmt.Errorf("delete %s: %s", aws.ToString(e.Key), aws.ToString(e.Message))
		}
	}
	return nil
}

// CreateBucket creates the store's bucket (for tests and setup scripts);
// one that already exists is fine.
func (s *S3) CreateBucket(ctx context.Context) error {
	_, err := s.Client.CreateBucket(ctx, &s3.CreateBucketInput{Bucket: &s.Bucket})
	var owned *types.BucketAlreadyOwnedByYou
	var exists *types.BucketAlreadyExists
	if err != nil && !errors.As(err, &owned) && !errors.As(err, &exists) {
		return fmt.Errorf("create bucket %s: %w", s.Bucket, err)
	}
	return nil
}

func isNotFound(err error) bool {
	var nsk *types.NoSuchKey
	var re *awshttp.ResponseError
	return errors.As(err, &nsk) || errors.As(err, &re) && re.HTTPStatusCode() == http.StatusNotFound
}
