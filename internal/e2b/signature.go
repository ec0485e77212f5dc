package e2b

import (
	"crypto/sha256"
	"encoding/base64"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// fileSignature is what uploadUrl()/downloadUrl() put in a /files URL so
// that it works without X-Access-Token (e2b-protocol.md §3.7):
// "v1_" + base64(sha256("<path>:<read|write>:<username>:<token>[:<expiry>]"))
// without padding, the expiry in Unix seconds.
func fileSignature(path, operation, user, token, expiry string) string {
	raw := path + ":" + operation + ":" + user + ":" + token
	if expiry != "" {
		raw += ":" + expiry
	}
	sum := sha256.Sum256([]byte(raw))
	return "v1_" + strings.TrimRight(base64.StdEncoding.EncodeToString(sum[:]), "=")
}

// checkFileSignature authenticates a /files request of sandbox id by its
// signature query parameters: GET must be signed for reading, POST for
// writing, the path and user as given, and an expiry, if any, not passed.
func (s *Server) checkFileSignature(r *http.Request, id string) bool {
	if r.URL.Path != "/files" {
		return false
	}
	op := map[string]string{http.MethodGet: "read", http.MethodPost: "write"}[r.Method]
	q := r.URL.Query()
	sig := q.Get("signature")
	if op == "" || sig == "" {
		return false
	}
	expiry := q.Get("signature_expiration")
	if expiry != "" {
		sec, err := strconv.ParseInt(expiry, 10, 64)
		if err != nil || time.Now().Unix() > sec {
			return false
		}
	}
	token := s.svc.EnvdToken(id)
	if token == "" {
		return false
	}
	return tokenEqual(sig, fileSignature(q.Get("path"), op, q.Get("username"), token, expiry))
}
