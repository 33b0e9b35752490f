# bpfbridge: build, test, demo. `make test` and `make demo` need root (others: sudo make …).

GO          ?= go
BIN         := $(CURDIR)/bin
VERSION     ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
COMMIT      ?= $(shell git rev-parse --short HEAD 2>/dev/null || echo unknown)
LDFLAGS     := -X main.buildVersion=$(VERSION) -X main.buildCommit=$(COMMIT)
CNI_BIN_DIR ?= /opt/cni/bin
STATICCHECK := honnef.co/go/tools/cmd/staticcheck@v0.8.2
TEST_FLAGS  ?= -count=1 -timeout 15m

.PHONY: build tools deps test demo install lint clean require-root

## build: the plugins into bin/ (no clang or cgo needed)
build:
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $(BIN)/ ./cmd/...

## tools: cnitool and the reference plugins (from their Go modules) for tests and benchmarks
tools:
	bash test/tools.sh $(BIN)

## deps: system packages the tests and demo use (a fresh machine of our kind lacks some)
deps:
	@command -v nsenter >/dev/null && command -v ip >/dev/null || \
	  (apt-get update -qq && apt-get install -y -qq --no-install-recommends iproute2 util-linux)

## test: every test, unit and end to end (root: they create network namespaces)
test: require-root deps build tools
	$(GO) test $(TEST_FLAGS) ./...

## demo: the DC/OS config on throwaway namespaces, driven by cnitool
demo: require-root deps build tools
	$(GO) run ./test/demo

## install: the plugins into $(DESTDIR)$(CNI_BIN_DIR)
install: build
	install -d $(DESTDIR)$(CNI_BIN_DIR)
	install -m 0755 $(BIN)/bridge $(BIN)/host-local $(DESTDIR)$(CNI_BIN_DIR)/

## lint: gofmt, go vet and staticcheck
lint:
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...
	$(GO) run $(STATICCHECK) ./...

clean:
	rm -rf $(BIN)

require-root:
	@[ "$$(id -u)" = 0 ] || { echo "this target creates network namespaces: run it as root (sudo make $(MAKECMDGOALS))"; exit 1; }
