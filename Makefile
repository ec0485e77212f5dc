# stasis — see README. Everything runs as root on Debian 12 (bookworm).

DATA_DIR   ?= $(CURDIR)/data
LISTEN     ?= 127.0.0.1:8080
IMAGES_DIR ?= $(CURDIR)/.cache/images
ifdef STASIS_RUNSC
RUNSC      ?= $(STASIS_RUNSC)
endif
RUNSC      ?= $(CURDIR)/.cache/runsc/bin/runsc
GO         ?= go

# Static binaries: the agent is bind-mounted into images that have no libc.
GOBUILD = CGO_ENABLED=0 $(GO) build -trimpath -buildvcs=false

export DATA_DIR LISTEN IMAGES_DIR RUNSC

# setup and build both write bin/stasisd: never run targets in parallel.
.NOTPARALLEL:

.PHONY: all setup build test run bench fmt vet clean

all: build

setup:
	scripts/setup.sh

build:
	$(GOBUILD) -o bin/stasisd ./cmd/stasisd
	$(GOBUILD) -o bin/stasis ./cmd/stasis
	$(GOBUILD) -o bin/stasis-agent ./cmd/stasis-agent

test: setup build
	scripts/test.sh

run: setup build
	scripts/run.sh

bench: setup build
	STASIS_RUNSC=$(RUNSC) STASIS_IMAGES_DIR=$(IMAGES_DIR) STASIS_AGENT=$(CURDIR)/bin/stasis-agent \
		$(GO) run ./cmd/stasis-bench

fmt:
	gofmt -s -w cmd internal $(wildcard test/*.go)

vet:
	$(GO) vet ./...

clean:
	rm -rf bin
