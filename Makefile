# mabeam — the two commands are `make demo` and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
PROTOS := $(wildcard proto/mabeam/v1/*.proto)

.PHONY: setup demo test test-fast test-hosts proto proto-check proto-tools lint typecheck bench clean postgres promtool install install-etcd

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# Installs the project and its dev tools into .venv (re-run when pyproject.toml changes).
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

setup: $(VENV)/.installed

demo: setup
	$(BIN)/python -m mabeam.dev.demo

test: setup postgres promtool proto-check lint typecheck sdk-build sdk-test
	MABEAM_SDK_CONFORMANCE='$(SDK_LANGS)' $(BIN)/python -m pytest -q $(PYTEST_ARGS)

# tests/integration/test_daemon_metrics.py checks every daemon's /metrics with promtool (Debian's prometheus
# package, STACK-NOTES): installed when missing where apt-get can run (CI runs as root); else that check is skipped.
promtool:
	@command -v promtool >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
		{ echo "installing promtool (apt-get install prometheus)"; apt-get update -qq && \
		  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null; }; } || \
		echo "promtool is not installed: the /metrics exposition check will be skipped"

# The runs store's tests start a private PostgreSQL server (mabeam/dev/postgres.py): install the Debian
# package when the server binaries are missing (CI runs as root on a fresh machine).
postgres:
	@ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null 2>&1 || \
		{ echo "installing PostgreSQL (apt-get)"; apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null; }

test-fast: setup
	$(BIN)/python -m pytest -q tests/unit $(PYTEST_ARGS)

# The multi-host test bed's scenarios only (network namespaces: needs root; docs/testbed.md). `make test` runs
# them too; elsewhere they skip, saying why.
test-hosts: setup
	$(BIN)/python -m pytest -q -m hosts tests/hosts $(PYTEST_ARGS)

# Code generators of the other languages, pinned: Go plugins into clients/go/.bin, protoc-gen-es from
# clients/typescript's package-lock.json; Rust's generator is built by cargo from clients/rust/Cargo.lock.
GO_BIN := clients/go/.bin
PROTOC_GEN_GO := google.golang.org/protobuf/cmd/protoc-gen-go@v1.36.11
PROTOC_GEN_GO_GRPC := google.golang.org/grpc/cmd/protoc-gen-go-grpc@v1.6.1
TS_DIR := clients/typescript

$(GO_BIN)/protoc-gen-go:
	GOBIN=$(abspath $(GO_BIN)) nice go install $(PROTOC_GEN_GO)
$(GO_BIN)/protoc-gen-go-grpc:
	GOBIN=$(abspath $(GO_BIN)) nice go install $(PROTOC_GEN_GO_GRPC)
$(TS_DIR)/node_modules/.installed: $(TS_DIR)/package-lock.json
	cd $(TS_DIR) && npm ci --no-audit --no-fund --loglevel=error
	touch $@

# SDKs: unit tests and the conformance runners (the conformance suite itself runs in pytest,
# tests/conformance, against one live cluster for every language).
.PHONY: sdk-build sdk-test test-go test-go-unit test-ts test-ts-unit test-rust test-rust-unit test-sdk-conformance
SDK_LANGS := python go typescript rust
# One cargo target dir per machine (as tools/protogen.sh): worktrees and clean clones share the build.
export CARGO_TARGET_DIR ?= $(or $(XDG_CACHE_HOME),$(HOME)/.cache)/mabeam/cargo-target
RUST_RUNNER := $(CARGO_TARGET_DIR)/debug/mabeam-conformance
sdk-build: $(GO_BIN)/mabeam-conformance $(TS_DIR)/dist/.built $(RUST_RUNNER)
sdk-test: test-go-unit test-ts-unit test-rust-unit

$(GO_BIN)/mabeam-conformance: $(shell find clients/go -name '*.go') clients/go/go.mod clients/go/go.sum
	cd clients/go && nice go build -o .bin/mabeam-conformance ./cmd/mabeam-conformance

test-go-unit:
	cd clients/go && nice go vet ./... && nice go test ./...

$(TS_DIR)/dist/.built: $(TS_DIR)/node_modules/.installed $(shell find $(TS_DIR)/src $(TS_DIR)/test $(TS_DIR)/conformance -name '*.ts') $(TS_DIR)/tsconfig.json
	cd $(TS_DIR) && nice npx tsc -p .
	touch $@

test-ts-unit: $(TS_DIR)/dist/.built
	cd $(TS_DIR) && node --test dist/test/

# One language's conformance run (make test-go, ...): its unit tests, then the scenarios.
test-go: setup test-go-unit $(GO_BIN)/mabeam-conformance
	MABEAM_SDK_CONFORMANCE=go $(BIN)/python -m pytest -q tests/conformance -k go

$(RUST_RUNNER): $(shell find clients/rust/mabeam clients/rust/conformance -name '*.rs' -o -name Cargo.toml) clients/rust/Cargo.lock
	cd clients/rust && nice cargo build -q -p mabeam-conformance && nice cargo build -q -p mabeam --examples

test-rust-unit:
	cd clients/rust && nice cargo test -q -p mabeam

test-rust: setup test-rust-unit $(RUST_RUNNER)
	MABEAM_SDK_CONFORMANCE=rust $(BIN)/python -m pytest -q tests/conformance -k rust

test-ts: setup test-ts-unit
	MABEAM_SDK_CONFORMANCE=typescript $(BIN)/python -m pytest -q tests/conformance -k typescript

test-sdk-conformance: setup sdk-build
	MABEAM_SDK_CONFORMANCE='$(SDK_LANGS)' $(BIN)/python -m pytest -q tests/conformance

proto-tools: $(GO_BIN)/protoc-gen-go $(GO_BIN)/protoc-gen-go-grpc $(TS_DIR)/node_modules/.installed

proto: setup proto-tools
	BIN=$(BIN) tools/protogen.sh

# Regenerates into a temp dir and fails if the committed code differs.
proto-check: setup proto-tools
	BIN=$(BIN) tools/protogen.sh check

# ruff, then the import contracts of pyproject.toml ([tool.importlinter]).
lint: setup
	$(BIN)/ruff check .
	$(BIN)/lint-imports --no-cache --no-logo

# mypy --strict on the pure cores (STYLE.md); the daemons' I/O shells are checked by tests.
# One line per core, so parallel work adds lines instead of editing one.
STRICT := mabeam/keys.py mabeam/errors.py mabeam/etcd meshd/view.py meshd/validation.py coordinator/mechanisms
STRICT += agentd/supervision.py
STRICT += agentd/models/types.py agentd/models/breaker.py agentd/models/retry.py agentd/models/limits.py
STRICT += agentd/models/budget.py agentd/models/cache.py agentd/models/sse.py
STRICT += agentd/tools agentd/pipelines mabeam/pipelines
STRICT += mabeam/runchain.py agentd/runs/model.py agentd/runs/state.py agentd/runs/frames.py agentd/runs/upcasters.py
STRICT += agentd/runs/retention.py agentd/runs/validation.py agentd/runs/scan.py agentd/runs/config.py
STRICT += mabeam/dev/hostbed/invariants.py
STRICT += agentd/frames.py coordinator/plugins.py
STRICT += mabeam/systemd.py mabeam/logs.py mabeam/dev/units.py
STRICT += coordinator/ledger.py coordinator/variables.py coordinator/batching.py coordinator/instances.py coordinator/keys.py
STRICT += mabeam/dataplane/envelope.py mabeam/dataplane/message.py mabeam/dataplane/errors.py mabeam/dataplane/zmqio.py
STRICT += meshd/dataplane/chunking.py meshd/dataplane/dedup.py meshd/dataplane/failure.py meshd/dataplane/scheduler.py
STRICT += mabeam/grpcutil.py mabeam/structs.py mabeam/config.py agentd/errors.py agentd/mailbox.py agentd/codec.py
# The Python SDK, whole.
STRICT += clients/python/mabeam_client
# The one daemon bootstrap (boot, issue 11).
STRICT += mabeam/daemon.py mabeam/startup.py
# The data plane's metrics (its rejected-frames collector).
STRICT += meshd/dataplane/metrics.py
# Tokens, rights, audit, quotas, TLS (security, issue 16).
STRICT += mabeam/security mabeam/ids.py
# Tenant quotas (issue 16 item 3): agentd's share (agents, runs).
STRICT += agentd/quotas.py
# Imports of the listed modules are read for their types, their own errors not reported: a core is strict
# even when the package it sits in (meshd.dataplane) also holds I/O shells that are not.
typecheck: setup
	$(BIN)/mypy --strict --follow-imports=silent $(STRICT)

bench: setup
	$(BIN)/python -m bench $(BENCH)

# Installs this checkout as systemd services on this host (root; deploy/README.md):
#   make install ADDRESS=10.0.0.11 NETWORK=10.0.0.0/24 ETCD=10.0.0.11:2379,10.0.0.12:2379,10.0.0.13:2379 \
#       PKI=/root/pki TOKEN_KEY=/root/issuer/k1.pub \
#       [NODE_ID=host-a] [CLUSTER=prod] [GRPC=loopback|network] [PREFIX=/opt/mabeam] [PY=/usr/bin/python3]
# Runs with the system Python (no .venv needed); repeat it from a newer checkout to upgrade.
PREFIX ?= /opt/mabeam
install:
	$(PY) deploy/install.py --prefix '$(PREFIX)' $(if $(NODE_ID),--node-id '$(NODE_ID)') \
		$(if $(ADDRESS),--address '$(ADDRESS)') $(if $(ETCD),--etcd '$(ETCD)') $(if $(CLUSTER),--cluster '$(CLUSTER)') \
		$(if $(NETWORK),--network '$(NETWORK)') $(if $(GRPC),--grpc '$(GRPC)') \
		$(if $(PKI),--pki '$(PKI)') $(if $(TOKEN_KEY),--token-key '$(TOKEN_KEY)')

# One etcd member on this host (root; an etcd v3.5 binary at /usr/local/bin/etcd first, deploy/README.md):
#   make install-etcd ETCD_MEMBER=host-a ETCD_PEERS=host-a=10.0.0.11,host-b=10.0.0.12,host-c=10.0.0.13 NETWORK=10.0.0.0/24
install-etcd:
	$(PY) deploy/install.py --etcd-member '$(ETCD_MEMBER)' --etcd-peers '$(ETCD_PEERS)' $(if $(CLUSTER),--cluster '$(CLUSTER)') \
		$(if $(NETWORK),--network '$(NETWORK)')

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache
