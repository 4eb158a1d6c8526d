# raftkv — see README.md. Every target installs what it needs into .venv first.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PROTOS := $(shell find proto -name '*.proto')

.PHONY: run test lint proto bench robustness-long fuzz clean system-deps minio chart-tools e2e-tools e2e-local e2e-kind

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev,operator]'
	touch $(STAMP)

# Debian's etcd 3.4 (the reference implementation the comparison tests run against) and
# Prometheus (prometheus and promtool: dashboards are checked against a real scrape, alert rules
# with `promtool test rules`).
system-deps:
	@if ! command -v etcd >/dev/null || ! command -v etcdctl >/dev/null; then \
	  echo "installing etcd-server and etcd-client from Debian"; \
	  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq etcd-server etcd-client; \
	fi
	@if ! command -v prometheus >/dev/null || ! command -v promtool >/dev/null; then \
	  echo "installing prometheus from Debian"; \
	  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends prometheus; \
	fi
	@if ! command -v openssl >/dev/null; then \
	  echo "installing openssl (the TLS tests make their certificates with it)"; \
	  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends openssl; \
	fi
	@if ! command -v curl >/dev/null; then \
	  echo "installing curl (the v2 keys comparison tests run the same curl commands against etcd and raftkv)"; \
	  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends curl; \
	fi

# MinIO, the S3-compatible server the backup tests store into, built from its Go module (a
# pinned commit; it has no semver tags) into the ignored .tools/bin. About 6 minutes from an
# empty Go cache on 2 cores; nothing is done when the binary is there.
MINIO_VERSION := v0.0.0-20260212201848-7aac2a2c5b7c
minio: .tools/bin/minio
.tools/bin/minio:
	GOBIN=$(CURDIR)/.tools/bin go install github.com/minio/minio@$(MINIO_VERSION)

# End-to-end tests (e2e/, docs/KUBERNETES.md). e2e-tools builds kube-apiserver,
# kube-controller-manager and Helm from their Go modules into .tools/bin (pinned; skipped when
# built). e2e-local runs them as a real control plane on 127.0.0.1 with a node agent that runs
# pods as local processes (storage: E2E_STORAGE=etcd or raftkv) and pytest e2e/ against it.
E2E_STORAGE ?= etcd
E2E_PYTEST := $(BIN)/pytest -q -s -p no:cacheprovider --timeout=1800 -rs e2e $(PYTEST_ARGS)
e2e-tools:
	bash e2e/local/build-tools.sh

e2e-local: $(STAMP) system-deps e2e-tools
	$(PY) -m e2e.local.tier --storage $(E2E_STORAGE) -- $(E2E_PYTEST)

# The same tests on kind (needs docker, kind, kubectl and helm; not runnable on the CI machine).
E2E_KIND_NAME ?= raftkv-e2e
E2E_KIND_KUBECONFIG := $(CURDIR)/.tools/kind-$(E2E_KIND_NAME).kubeconfig
E2E_KIND_HELM_ARGS ?= --set image.repository=raftkv --set image.tag=e2e --set image.pullPolicy=Never
e2e-kind: $(STAMP)
	kind create cluster --name $(E2E_KIND_NAME) --config e2e/kind.yaml --kubeconfig $(E2E_KIND_KUBECONFIG)
	docker build -t raftkv:e2e . && docker tag raftkv:e2e raftkv:e2e-next
	kind load docker-image --name $(E2E_KIND_NAME) raftkv:e2e raftkv:e2e-next
	KUBECONFIG=$(E2E_KIND_KUBECONFIG) E2E_ACCESS=port-forward E2E_HELM=helm \
	  E2E_HELM_ARGS="$(E2E_KIND_HELM_ARGS)" $(E2E_PYTEST); \
	  rc=$$?; kind delete cluster --name $(E2E_KIND_NAME); exit $$rc

# The chart test (tests/chart) renders the chart with Helm and validates the manifests against
# Kubernetes' OpenAPI document (api/openapi-spec of the k8s.io/kubernetes Go module). Both pinned,
# both kept in the ignored .tools/; Helm's pin is the one e2e/local/build-tools.sh uses.
HELM_VERSION := v3.16.4
KUBE_SCHEMA_VERSION := v1.33.13
chart-tools: .tools/bin/helm .tools/k8s-openapi/$(KUBE_SCHEMA_VERSION)/swagger.json
.tools/bin/helm:
	GOBIN=$(CURDIR)/.tools/bin GOFLAGS="-trimpath -buildvcs=false" go install -ldflags="-s -w" helm.sh/helm/v3/cmd/helm@$(HELM_VERSION)
	echo $(HELM_VERSION) > .tools/bin/helm.version
.tools/k8s-openapi/%/swagger.json:
	mkdir -p $(@D)
	dir=$$(cd $(@D) && GOFLAGS= go mod download -json k8s.io/kubernetes@$* | sed -n 's/^\s*"Dir": "\(.*\)",$$/\1/p') && \
	  cp "$$dir/api/openapi-spec/swagger.json" $@

run: $(STAMP)
	$(PY) -m raftkv.cli.localcluster

lint: $(STAMP)
	$(BIN)/ruff check server operator tests bench
	$(BIN)/ruff format --check server operator tests bench
	$(BIN)/lint-imports

test: $(STAMP) system-deps minio chart-tools lint
	$(BIN)/pytest -q -p no:cacheprovider $(PYTEST_ARGS)

proto: $(STAMP)
	$(PY) -m grpc_tools.protoc -Iproto --python_out=server --pyi_out=server --grpc_python_out=server $(PROTOS)
	find server/raftkv/pb -type d -exec touch {}/__init__.py \;

bench: $(STAMP) system-deps
	$(PY) -m bench.run

# Fault injection with every check (tests/robustness, docs/ROBUSTNESS.md) for 30 minutes of faults
# and a fresh seed; `make test` runs the same test for 80 s with a fixed seed.
robustness-long: $(STAMP)
	ROBUSTNESS_DURATION=$${ROBUSTNESS_DURATION:-1800} ROBUSTNESS_SEED=$${ROBUSTNESS_SEED:-$$(date +%s)} \
	  $(BIN)/pytest -q -s -p no:cacheprovider tests/robustness/test_robustness.py $(PYTEST_ARGS)

# Longer fuzzing (tests/fuzz): after the fixed examples `make test` runs, each target keeps
# drawing fresh random examples for RAFTKV_FUZZ_SECONDS (default 300) seconds.
fuzz: $(STAMP)
	RAFTKV_FUZZ_SECONDS=$${RAFTKV_FUZZ_SECONDS:-300} \
	  $(BIN)/pytest -q -p no:cacheprovider tests/fuzz $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache
