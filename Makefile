# bpfbridge: build, test, demo. `make test` and `make demo` need root (others: sudo make …).

GO          ?= go
BIN         := $(CURDIR)/bin
VERSION     ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
COMMIT      ?= $(shell git rev-parse --short HEAD 2>/dev/null || echo unknown)
LDFLAGS     := -X main.buildVersion=$(VERSION) -X main.buildCommit=$(COMMIT)
CNI_BIN_DIR ?= /opt/cni/bin
STATICCHECK := honnef.co/go/tools/cmd/staticcheck@v0.8.2
# The generated bpf2go files are committed; each clang version emits other
# bytes, so regeneration uses this one.
CLANG       := clang-19
TEST_FLAGS  ?= -count=1 -timeout 15m

.PHONY: build tools deps runtimes test demo bench bench-scale install lint generate check-generated clean require-root

## build: the plugins into bin/ (no clang or cgo needed)
build:
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $(BIN)/ ./cmd/...

## tools: cnitool and the reference plugins (from their Go modules) for tests and benchmarks
tools:
	bash test/tools.sh $(BIN)

## deps: system packages the tests and demo use (a fresh machine of our kind lacks some):
## nsenter, ip, iptables-save/nft to show that no firewall rule is ever created, iperf3 for cnibench
deps:
	@command -v nsenter >/dev/null && command -v ip >/dev/null && \
	  command -v iptables-save >/dev/null && command -v nft >/dev/null && command -v iperf3 >/dev/null || \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
	    iproute2 util-linux iptables nftables iperf3)

## runtimes: podman, containerd, runc and busybox for the real-runtime suites (test/runtimes/install.sh)
runtimes:
	@bash test/runtimes/install.sh

## test: every test, unit and end to end (root: they create network namespaces), the
## real-runtime suites (podman, containerd's CRI: TestRuntime*) included, with the fast path
## between containers on (whatever br_netfilter says); the end-to-end suite runs again with
## programs attached as tcx links instead of cls_bpf filters and without the fast path (the
## runtime suites once: they exercise the runtimes, not the attach mode)
test: require-root deps runtimes build tools
	BPFBRIDGE_FASTPATH=true $(GO) test $(TEST_FLAGS) ./...
	BPFBRIDGE_ATTACH=tcx BPFBRIDGE_FASTPATH=false $(GO) test $(TEST_FLAGS) -skip '^TestRuntime' ./test/e2e

## generate: rebuild the bpf2go files in datapath/program from bpf/ with the pinned clang
generate:
	@command -v $(CLANG) >/dev/null || (apt-get update -qq && \
	  apt-get install -y -qq --no-install-recommends clang-19 llvm-19 libbpf-dev linux-libc-dev)
	$(GO) generate ./datapath/program

## check-generated: fail if the committed generated files are not what bpf/ compiles to
check-generated: generate
	@git diff --exit-code --stat -- datapath/program || \
	  { echo "generated files are stale: run make generate and commit"; exit 1; }

## demo: the DC/OS config on throwaway namespaces, driven by cnitool
demo: require-root deps build tools
	$(GO) run ./test/demo

## bench: cnibench, bpfbridge against the reference plugins and the floor (an empty plugin) side by
## side on throwaway namespaces: ADD/DEL at N up to 200 with ipMasq false and true, one at a time and
## 16 at a time (a boot storm), where bpfbridge's time goes (its phase trace), datapath state,
## traffic with and without masquerade and to a published port, each beside a bare veth pair (the
## physical limit), iperf3 cross-check; writes test/results/cnibench.{md,json,svg}
## (about 6 minutes on 2 cores)
bench: require-root deps build tools
	$(BIN)/cnibench --plugins $(BIN) --compare $(BIN)/reference -n 1,50,200 --ipmasq false,true \
	  --concurrency 1,16 --duration 2s --iperf3 -o test/results

## bench-scale: the scale phase alone up to N = 1,000, with ipMasq false and true (about 25 minutes
## on 2 cores); writes test/results/scale/cnibench.{md,json,svg}
bench-scale: require-root deps build tools
	$(BIN)/cnibench --plugins $(BIN) --compare $(BIN)/reference -n 1,50,200,500,1000 --ipmasq false,true \
	  --traffic=false -o test/results/scale

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
