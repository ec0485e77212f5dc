package sandbox

import (
	"bytes"
	"context"
	"fmt"
	"io"

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
	var base []byte
	for _, p := range systemBundles {
		b, err := readSmall(ctx, c, p)
		if err == nil && len(b) > 0 {
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
		if err := writeBytes(ctx, c, TrustBundlePath, appendPEM(base, ca)); err != nil {
			return err
		}
	}
	return writeBytes(ctx, c, EgressCAPath, ca)
}

func appendPEM(bundle, ca []byte) []byte {
	out := append([]byte(nil), bundle...)
	if len(out) > 0 && out[len(out)-1] != '\n' {
		out = append(out, '\n')
	}
	return append(out, ca...)
}

func readSmall(ctx context.Context, c *agentclient.Client, path string) ([]byte, error) {
	if fi, err := c.Stat(ctx, path); err != nil || fi.IsDir {
		return nil, fmt.Errorf("%s: not a file", path)
	}
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
