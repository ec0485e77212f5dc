package sandbox

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"sync"

	"github.com/stasis-sandbox/stasis/internal/agentclient"
)

// Where a sandbox finds the egress CA that secret injection presents
// certificates from: alone, and added to the system bundle (Debian's
// path, which SSL_CERT_FILE and friends name whatever the image's own).
const (
	EgressCAPath    = "/etc/ssl/certs/stasis-egress-ca.pem"
	TrustBundlePath = "/etc/ssl/certs/ca-certificates.crt"
)

// systemBundles are where images keep their CA bundle, Debian's first.
var systemBundles = []string{TrustBundlePath, "/etc/pki/tls/certs/ca-bundle.crt", "/etc/ssl/cert.pem", "/etc/ssl/ca-bundle.pem"}

// trustEnv points TLS libraries at the bundles: OpenSSL and Go
// (SSL_CERT_FILE), Python requests, curl, and Node (extra CAs).
func trustEnv() map[string]string {
	return map[string]string{
		"SSL_CERT_FILE":       TrustBundlePath,
		"REQUESTS_CA_BUNDLE":  TrustBundlePath,
		"CURL_CA_BUNDLE":      TrustBundlePath,
		"NODE_EXTRA_CA_CERTS": EgressCAPath,
	}
}

// installTrust adds the egress CA to a new sandbox's trust store before
// any user process runs; its filesystem (and so every fork, snapshot and
// template made from it) keeps it.
func (s *Service) installTrust(ctx context.Context, c *agentclient.Client) error {
	ca := s.cfg.EgressCA
	if len(ca) == 0 {
		return nil
	}
	// Each agent request is a round trip into a sandbox that has only just
	// started: the candidate bundles are read at once, and the CA file is
	// written alongside the bundle.
	caDone := make(chan error, 1)
	go func() { caDone <- writeBytes(ctx, c, EgressCAPath, ca) }()
	err := installBundle(ctx, c, ca)
	if caErr := <-caDone; err == nil {
		err = caErr
	}
	return err
}

// installBundle adds ca to the image's system bundle (the first of
// systemBundles it has), and makes sure TrustBundlePath holds it too.
func installBundle(ctx context.Context, c *agentclient.Client, ca []byte) error {
	bundles := make([][]byte, len(systemBundles))
	var wg sync.WaitGroup
	for i, p := range systemBundles {
		wg.Add(1)
		go func() {
			defer wg.Done()
			bundles[i], _ = readSmall(ctx, c, p) // absent, or not a file: none there
		}()
	}
	wg.Wait()
	var base []byte
	for i, p := range systemBundles {
		if b := bundles[i]; len(b) > 0 {
			if !bytes.Contains(b, ca) && p != TrustBundlePath {
				if err := writeBytes(ctx, c, p, appendPEM(b, ca)); err != nil {
					return err
				}
			}
			base = b
			break
		}
	}
	if !bytes.Contains(base, ca) {
		return writeBytes(ctx, c, TrustBundlePath, appendPEM(base, ca))
	}
	return nil
}

func appendPEM(bundle, ca []byte) []byte {
	out := append([]byte(nil), bundle...)
	if len(out) > 0 && out[len(out)-1] != '\n' {
		out = append(out, '\n')
	}
	return append(out, ca...)
}

// readSmall reads a file of at most 16 MiB; the agent refuses a directory or
// anything but a regular file.
func readSmall(ctx context.Context, c *agentclient.Client, path string) ([]byte, error) {
	rc, _, err := c.ReadFile(ctx, path)
	if err != nil {
		return nil, err
	}
	defer rc.Close()
	return io.ReadAll(io.LimitReader(rc, 16<<20))
}

func writeBytes(ctx context.Context, c *agentclient.Client, path string, b []byte) error {
	if err := c.WriteFile(ctx, path, bytes.NewReader(b), int64(len(b))); err != nil {
		return fmt.Errorf("installing the egress CA at %s: %w", path, err)
	}
	return nil
}
