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

.PHONY: all setup build test run cluster bench bench-quick bench-density fmt vet clean

all: build

setup:
	scripts/setup.sh

build:
	$(GOBUILD) -o bin/stasisd ./cmd/stasisd
	$(GOBUILD) -o bin/stasis ./cmd/stasis
	GO=$(GO) scripts/build-agent.sh bin/stasis-agent
	$(GOBUILD) -o bin/stasis-applets ./cmd/stasis-applets

test: setup build
	scripts/test.sh

run: setup build
	scripts/run.sh

# cluster: PostgreSQL + versitygw + 3 stasisd nodes on this machine, until Ctrl-C.
cluster: setup build
	scripts/cluster.sh

# bench: about 10 minutes against a real stasisd and raw runsc; rewrites
# docs/BENCHMARKS.md and docs/benchmarks.json. bench-quick only checks that
# the harness works (under 2 minutes) and writes to a temp dir.
BENCH_FLAGS = -runsc $(RUNSC) -images-dir $(IMAGES_DIR) -stasisd $(CURDIR)/bin/stasisd -agent $(CURDIR)/bin/stasis-agent

bench: setup build
	$(GO) run ./cmd/stasis-bench $(BENCH_FLAGS) -out docs

bench-quick: setup build
	$(GO) run ./cmd/stasis-bench $(BENCH_FLAGS) -quick

# bench-density: make bench with the density phase at scale (300 active,
# 2,000 paused sandboxes; 20-40 minutes more), opt in.
bench-density: setup build
	$(GO) run ./cmd/stasis-bench $(BENCH_FLAGS) -density-large -out docs

fmt:
	gofmt -s -w cmd internal $(wildcard test/*.go)

vet:
	$(GO) vet ./...

clean:
	rm -rf bin
