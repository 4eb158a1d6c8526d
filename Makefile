# raftkv — see README.md. Every target installs what it needs into .venv first.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PROTOS := $(shell find proto -name '*.proto')

.PHONY: run test lint proto bench clean system-deps minio

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

# MinIO, the S3-compatible server the backup tests store into, built from its Go module (a
# pinned commit; it has no semver tags) into the ignored .tools/bin. About 6 minutes from an
# empty Go cache on 2 cores; nothing is done when the binary is there.
MINIO_VERSION := v0.0.0-20260212201848-7aac2a2c5b7c
minio: .tools/bin/minio
.tools/bin/minio:
	GOBIN=$(CURDIR)/.tools/bin go install github.com/minio/minio@$(MINIO_VERSION)

run: $(STAMP)
	$(PY) -m raftkv.cli.localcluster

lint: $(STAMP)
	$(BIN)/ruff check server operator tests bench
	$(BIN)/ruff format --check server operator tests bench
	$(BIN)/lint-imports

test: $(STAMP) system-deps minio lint
	$(BIN)/pytest -q -p no:cacheprovider $(PYTEST_ARGS)

proto: $(STAMP)
	$(PY) -m grpc_tools.protoc -Iproto --python_out=server --pyi_out=server --grpc_python_out=server $(PROTOS)
	find server/raftkv/pb -type d -exec touch {}/__init__.py \;

bench: $(STAMP) system-deps
	$(PY) -m bench.run

clean:
	rm -rf $(VENV) .pytest_cache
