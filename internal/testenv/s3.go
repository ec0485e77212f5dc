package testenv

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/credentials"

	"github.com/stasis-sandbox/stasis/internal/objstore"
)

// S3 is a real S3-compatible server process (versitygw) serving a temporary
// directory on a loopback port, with one bucket.
type S3 struct {
	Endpoint  string // http://127.0.0.1:PORT
	AccessKey string
	SecretKey string
	Region    string
	Bucket    string

	t    testing.TB // nil outside tests
	addr string
	dir  string
	cmd  *exec.Cmd
	done chan struct{}
	logs *lockedBuffer
}

// VersityGW is the versitygw binary scripts/setup.sh installs
// ($STASIS_VERSITYGW overrides it).
func VersityGW() string {
	if p := os.Getenv("STASIS_VERSITYGW"); p != "" {
		return p
	}
	return filepath.Join(RepoRoot(), ".cache", "versitygw", "bin", "versitygw")
}

// StartS3 starts versitygw with a fresh directory and a bucket, and stops
// it (removing the directory) when the test ends.
func StartS3(t testing.TB) *S3 {
	t.Helper()
	s, err := LaunchS3(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	s.t = t
	t.Cleanup(func() {
		s.Stop()
		if t.Failed() {
			t.Logf("versitygw logs:\n%s", s.logs.String())
		}
	})
	return s
}

// LaunchS3 starts versitygw on a free loopback port keeping its bucket
// under dir, and creates the bucket; the caller stops it (Stop). For
// programs other than tests (stasis-bench); tests use StartS3.
func LaunchS3(dir string) (*S3, error) {
	bin := VersityGW()
	if _, err := os.Stat(bin); err != nil {
		return nil, fmt.Errorf("versitygw is missing (%v): run scripts/setup.sh, which installs it into .cache/versitygw", err)
	}
	addr, err := freeLoopbackAddr()
	if err != nil {
		return nil, err
	}
	s := &S3{AccessKey: "stasis" + randomHex(4), SecretKey: randomHex(16), Region: "us-east-1",
		Bucket: "stasis-test", addr: addr, dir: filepath.Join(dir, "data")}
	s.Endpoint = "http://" + s.addr
	if err := os.Mkdir(s.dir, 0o700); err != nil {
		return nil, err
	}
	if err := s.start(); err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	b, err := s.Client("")
	if err == nil {
		err = b.CreateBucket(ctx)
	}
	if err != nil {
		s.Stop()
		return nil, err
	}
	return s, nil
}

// Start (re)starts the server on the same address and directory and waits
// until it accepts connections (a test fails if it cannot).
func (s *S3) Start() {
	if err := s.start(); err != nil {
		if s.t == nil {
			panic(err)
		}
		s.t.Helper()
		s.t.Fatal(err)
	}
}

func (s *S3) start() error {
	if s.cmd != nil {
		select {
		case <-s.done:
		default:
			return nil // running
		}
	}
	s.logs = &lockedBuffer{}
	cmd := exec.Command(VersityGW(), "--port", s.addr, "posix", s.dir)
	cmd.Env = append(os.Environ(), "ROOT_ACCESS_KEY_ID="+s.AccessKey, "ROOT_SECRET_ACCESS_KEY="+s.SecretKey,
		"VGW_REGION="+s.Region)
	cmd.Stdout, cmd.Stderr = s.logs, s.logs
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start versitygw: %w", err)
	}
	s.cmd, s.done = cmd, make(chan struct{})
	go func() { cmd.Wait(); close(s.done) }()
	deadline := time.Now().Add(time.Minute)
	for {
		c, err := net.DialTimeout("tcp", s.addr, time.Second)
		if err == nil {
			c.Close()
			return nil
		}
		select {
		case <-s.done:
			return fmt.Errorf("versitygw exited at start: %s", s.logs.String())
		default:
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("versitygw does not listen on %s: %v\n%s", s.addr, err, s.logs.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// Stop kills the server (as an outage would) and waits for it to exit; the
// directory, and so the bucket's objects, stay for Start.
func (s *S3) Stop() {
	if s.cmd == nil {
		return
	}
	select {
	case <-s.done:
	default:
		s.cmd.Process.Signal(syscall.SIGKILL)
		<-s.done
	}
}

// Env is the AWS environment a process needs to use the server.
func (s *S3) Env() []string {
	return []string{"AWS_ACCESS_KEY_ID=" + s.AccessKey, "AWS_SECRET_ACCESS_KEY=" + s.SecretKey,
		"AWS_REGION=" + s.Region, "AWS_ENDPOINT_URL_S3=" + s.Endpoint}
}

// URL is the --snapshot-url of prefix in the bucket.
func (s *S3) URL(prefix string) string { return "s3://" + s.Bucket + "/" + prefix }

// Blobs is a client of prefix in the bucket, configured explicitly (not
// from this process's environment).
func (s *S3) Blobs(t testing.TB, prefix string) *objstore.S3 {
	t.Helper()
	b, err := s.Client(prefix)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// Client is Blobs for programs other than tests.
func (s *S3) Client(prefix string) (*objstore.S3, error) {
	return objstore.NewS3(context.Background(), s.Bucket, prefix,
		config.WithBaseEndpoint(s.Endpoint), config.WithRegion(s.Region),
		config.WithCredentialsProvider(credentials.NewStaticCredentialsProvider(s.AccessKey, s.SecretKey, "")),
		config.WithRetryMaxAttempts(1))
}

// Dir is the directory the server keeps the bucket in (tests corrupt
// objects there directly).
func (s *S3) Dir() string { return s.dir }

func freeLoopbackAddr() (string, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer ln.Close()
	return ln.Addr().String(), nil
}
