# vmpersona — build, test and run. Every target installs what it needs.
GO      ?= go
BIN     := bin
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo 0.1.0-dev)

# Debian packages the host daemon builds with (cgo against libvirt).
BUILD_DEBS := gcc libc6-dev pkg-config libvirt-dev
# And those the tests need besides: promtool, QEMU for the QMP tests, shells for completion tests,
# etcd for the fleet tier.
TEST_DEBS := $(BUILD_DEBS) prometheus qemu-system-x86 zsh fish systemd lintian etcd-server etcd-client

.PHONY: all build test lint fuzz bench demo clean deps-build deps-test

all: build

# The flags live in scripts/build-programs, which the tests build through too.
build: deps-build
	GO=$(GO) scripts/build-programs $(BIN) $(VERSION)

deps-build:
	@scripts/ensure-deps $(BUILD_DEBS)

deps-test:
	@scripts/ensure-deps $(TEST_DEBS)
	@echo "vmpersona: fetching Go modules"; $(GO) mod download

# Every test, with the race detector, against the programs of `make build`.
# The build runs beside `go test`, holding bin/.lock; the tests that run the
# programs (BIN_TESTS) wait for that lock in internal/testbin (a failed
# build leaves no older program behind for them). Those tests take longest
# and their test binaries need nearly every package: they are listed first,
# then the longest of the others (go test compiles and runs in command-line
# order),
# and `go test` runs at a lower priority (nice) than the build, so that the
# programs are ready when their test binaries are, and the short packages
# fill the cores while the long ones run. -p 4: test runs that wait (for
# etcd, a timeout) hold a slot too. Test binaries are linked without DWARF
# (stack traces and race reports do not use it).
# The compiler and linker run with GOGC=400 (COMPILE_GOGC: about 15 % less
# CPU with an empty build cache, the same output); the test binaries, and the
# daemons they start, run with the Go default (-exec 'env -u GOGC').
# TestGeneratedClientIsCurrent compiles oapi-codegen: it runs in
# `make lint`, and so does vet.
BIN_TESTS := integration/reliability hostd/cmd/vmpersonactl hostd/fleet hostd/cmd/vmpersona-hostd packaging \
	hostd/api guestd/cmd/vmpersona-guestd hostd/agents hostd/reconcile
# The longest of the other packages, next.
LONG_TESTS := hostd/store internal/testetcd guestd/activation guestd/audit
FIRST_TESTS := $(BIN_TESTS) $(LONG_TESTS)
empty :=
space := $(empty) $(empty)
COMPILE_GOGC ?= 400
TEST_FLAGS := -race -vet=off -count=1 -timeout 25m -p 4 -ldflags=-w -gcflags=all=-dwarf=false \
	-skip '^TestGeneratedClientIsCurrent$$'
test: deps-test
	@mkdir -p $(BIN); exec 9>$(BIN)/.lock; flock 9; \
	  rm -f $(BIN)/vmpersona-guestd $(BIN)/vmpersona-hostd $(BIN)/vmpersonactl; \
	  $(MAKE) --no-print-directory build & build=$$!; exec 9>&-; \
	  pkgs=$$($(GO) list ./... | grep -vE '/($(subst $(space),|,$(strip $(FIRST_TESTS))))$$'); \
	  echo "go test $(TEST_FLAGS) ./... (the programs' tests first)"; \
	  VMP_TEST_BIN_DIR=$(CURDIR)/$(BIN) VMP_TEST_BIN_VERSION=$(VERSION) CGO_ENABLED=1 GOGC=$(COMPILE_GOGC) \
	    nice -n 5 $(GO) test $(TEST_FLAGS) -exec 'env -u GOGC' $(addprefix ./,$(FIRST_TESTS)) $$pkgs || r=1; \
	  wait $$build || r=1; exit $${r:-0}

# Static checks (CI runs them): vet and staticcheck (pinned) over every build
# tag's files, go.mod tidy, gofmt, and that the generated API client is what
# oapi-codegen makes of openapi.json.
STATICCHECK := honnef.co/go/tools/cmd/staticcheck@v0.8.2
LINT_TAGS   := integration,integration_full,reliability
lint:
	$(GO) vet -tags $(LINT_TAGS) ./...
	$(GO) run $(STATICCHECK) -tags $(LINT_TAGS) ./...
	$(GO) mod tidy -diff
	@files=$$(gofmt -l .); if [ -n "$$files" ]; then echo "gofmt: not formatted:"; echo "$$files"; exit 1; fi
	$(GO) test -count=1 -run '^TestGeneratedClientIsCurrent$$' ./hostd/api

# Fuzz the frame decoder (FUZZTIME=5m for a long run).
FUZZTIME ?= 60s
fuzz:
	$(GO) test ./protocol -run '^$$' -fuzz FuzzReader -fuzztime $(FUZZTIME) -parallel 1 -fuzzminimizetime 5s

# vmpersona beside qemu-guest-agent and the machine's limits (one table);
# BENCHFLAGS=-quick for a scaled-down run.
bench:
	$(GO) run ./integration/bench $(BENCHFLAGS)

# The real-VM tier: TCG VMs under libvirt, the real guest and host daemons (root; see integration/doc.go).
.PHONY: integration
integration: build
	integration/image/build.sh --guestd $(BIN)/vmpersona-guestd --env-out $(BIN)/image.env
	VMP_IMAGE_ENV=$(CURDIR)/$(BIN)/image.env $(GO) test -tags integration -count=1 -v -timeout 30m ./integration

# A VM under libvirt, two personas, routed/overridden/refused commands, audit and metrics; removes all it started.
demo:
	integration/demo/demo.sh

# Fleet mode: three etcd members, two hosts with guests on unix sockets, a persona shared through etcd,
# rolled out on both, the fleet-wide instance table, a quorum loss; stops by PID all it started.
.PHONY: demo-fleet
demo-fleet:
	integration/demo/demo-fleet.sh

# Debian packages in dist/: vmpersona-hostd and vmpersona-guestd (reproducible: SOURCE_DATE_EPOCH
# is the last commit's time; version from a vX.Y.Z tag or packaging/changelog).
.PHONY: deb integration-full
deb: deps-build
	@scripts/ensure-deps dpkg-dev
	rm -rf dist
	$(MAKE) build BIN=dist/bin VERSION=$$(packaging/version.sh)
	packaging/build-deb.sh --bin dist/bin --out dist

# The packages on a real Debian 12 guest booted by systemd under libvirt, and the host package in a
# Debian 12 chroot (root; see integration/debian/doc.go).
integration-full: deb
	VMP_DEB_DIR=$(CURDIR)/dist VMP_BIN_DIR=$(CURDIR)/dist/bin $(GO) test -tags integration_full -count=1 -v -timeout 40m ./integration/debian/...

clean:
	rm -rf $(BIN)

# Reliability and security suites at full size (build tag reliability: kill -9
# loops, transport faults, hostile guests, 100 clients × 50 guests for 60 s),
# then each REST API fuzzer for RELIABILITY_FUZZTIME. RELIABILITY_* variables
# resize the suites (see integration/reliability). About 10 minutes.
RELIABILITY_FUZZTIME ?= 2m
.PHONY: reliability
reliability: deps-test
	CGO_ENABLED=1 $(GO) test -race -count=1 -tags reliability -timeout 20m -v ./integration/reliability/
	$(GO) test ./hostd/api -run '^$$' -fuzz '^FuzzPersonaBody$$' -fuzztime $(RELIABILITY_FUZZTIME)
	$(GO) test ./hostd/api -run '^$$' -fuzz '^FuzzAPIRequest$$' -fuzztime $(RELIABILITY_FUZZTIME)
