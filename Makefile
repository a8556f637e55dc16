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

# The binaries are built the way the Debian package builds them (debian/rules
# runs this target), so that make bench measures what users run: linked with
# the system's libsqlite3, position-independent with its relocations packed
# (RELR, when the toolchain has it: PIE's ~45,000 relative relocations of Go's
# type data otherwise take 1 MB of the binary, read at every start), paths
# trimmed. debian/rules passes dpkg-buildflags' LDFLAGS and the version.
GO_TAGS ?= libsqlite3
CC ?= cc
RELR := $(shell printf 'int main(void){return 0;}\n' | $(CC) -x c - -o /dev/null -Wl,-z,pack-relative-relocs -Wl,--fatal-warnings 2>/dev/null && echo -Wl,-z,pack-relative-relocs)
EXTLDFLAGS ?= -Wl,-z,relro -Wl,-z,now
VERSION ?=
GO_LDFLAGS = -linkmode=external -extldflags '$(EXTLDFLAGS) $(RELR)'$(if $(VERSION), -X main.version=$(VERSION))

build:
	@mkdir -p $(BIN)
	$(GO) build -trimpath -tags '$(GO_TAGS)' -buildmode=pie -ldflags="$(GO_LDFLAGS)" -o $(BIN)/ ./cmd/...

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
