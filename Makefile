# Herald — make targets. `make demo` runs the whole system once; `make test` passes all tests.
GO ?= go
BIN ?= bin
PREFIX ?= /usr
DESTDIR ?=
FUZZTIME ?= 30s
CMDS := heraldd herald herald-server

.PHONY: all build test vet demo bench fuzz install deb check-deb clean deps

# Debian packages land in $(DIST) (dpkg-buildpackage writes them to ..; `deb` moves them).
DIST ?= dist

all: build

build:
	@mkdir -p $(BIN)
	$(GO) build -o $(BIN)/ ./cmd/...

deps:
	scripts/deps.sh test

vet:
	$(GO) vet ./...

test: deps vet
	$(GO) test -race -timeout 30m ./...

demo: build
	scripts/deps.sh demo
	scripts/demo.sh $(BIN)

bench: build
	$(GO) run ./tests/bench -bin $(BIN) -out bench-results.json

fuzz:
	scripts/fuzz.sh $(FUZZTIME)

install: build
	scripts/install.sh "$(DESTDIR)" "$(PREFIX)" $(BIN)

deb:
	scripts/deps.sh deb
	@dpkg-checkbuilddeps 2>/dev/null || { \
		if [ "$$(id -u)" -eq 0 ]; then DEBIAN_FRONTEND=noninteractive apt-get build-dep -y -q ./ >/dev/null; \
		else dpkg-checkbuilddeps; exit 1; fi; }
	dpkg-buildpackage -us -uc -b
	@mkdir -p $(DIST)
	@v=$$(dpkg-parsechangelog -SVersion) a=$$(dpkg-architecture -qDEB_HOST_ARCH); \
	for f in ../herald_$${v}_$$a.changes ../herald_$${v}_$$a.buildinfo ../herald_$${v}_$$a.deb \
		../herald-server_$${v}_$$a.deb ../herald-dbgsym_$${v}_$$a.deb ../herald-server-dbgsym_$${v}_$$a.deb; do \
		if [ -e "$$f" ]; then mv -f "$$f" $(DIST)/; fi; \
	done; echo "deb: packages in $(DIST)/:"; ls $(DIST)

# Builds the packages, runs lintian, installs and removes them (needs root).
check-deb:
	scripts/check-deb.sh

clean:
	rm -rf $(BIN) bench-results.json $(DIST)
