package sandbox

import "github.com/stasis-sandbox/stasis/internal/agentproto"

// Where a sandbox finds the egress CA: in the image root stasisd gives it
// (trustRoots), or else installed there by the new sandbox's agent before
// it answers (agent.InstallTrust, given agentproto.EnvEgressCA by spec), so
// a sandbox that is ready trusts it, and its file system (and every fork,
// snapshot and template made from it) keeps it.
const (
	EgressCAPath    = agentproto.EgressCAPath
	TrustBundlePath = agentproto.TrustBundlePath
)

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
