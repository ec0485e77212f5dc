#!/usr/bin/env bash
# Regenerates the Go code of E2B's envd services from internal/e2b/envdpb/*/*.proto.
# Needs protoc (Debian: protobuf-compiler) and the pinned plugins:
#   go install google.golang.org/protobuf/cmd/protoc-gen-go@v1.36.12
#   go install connectrpc.com/connect/cmd/protoc-gen-connect-go@v1.21.1
# The output is committed, so building stasis never needs protoc.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../internal/e2b/envdpb"
PATH="$(go env GOPATH)/bin:$PATH"
protoc -I . -I /usr/include \
	--go_out=. --go_opt=paths=source_relative \
	--connect-go_out=. --connect-go_opt=paths=source_relative \
	process/process.proto filesystem/filesystem.proto
