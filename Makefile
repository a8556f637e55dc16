# Herald — make targets. `make demo` runs the whole system once; `make test` passes all tests.
GO ?= go
BIN ?= bin
PREFIX ?= /usr
DESTDIR ?=
FUZZTIME ?= 30s
CMDS := heraldd herald herald-server

.PHONY: all build test vet demo bench fuzz install deb clean deps

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
	dpkg-buildpackage -us -uc -b

clean:
	rm -rf $(BIN) bench-results.json
