# raftkv image: the member (`raftkv`), the CLI (`raftkvctl`) and the operator (`raftkv-operator`).
#
# Two stages: the builder resolves and installs every wheel into a virtualenv; the final stage
# copies only that virtualenv onto a fresh slim Python, so no compiler, pip cache or source tree
# ships. The operator sets each member pod's full command, so the image needs no entrypoint
# script; the default command prints the server's help.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/raftkv
WORKDIR /src
# Dependencies first (cached while only the sources change), then the package itself.
COPY pyproject.toml README.md ./
COPY server ./server
COPY operator ./operator
RUN /opt/raftkv/bin/pip install '.[operator]' \
 && /opt/raftkv/bin/pip uninstall -y pip setuptools wheel \
 && find /opt/raftkv -name '__pycache__' -prune -exec rm -rf {} +

FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="raftkv" \
      org.opencontainers.image.description="Raft key-value store speaking the etcd v3 API, with its Kubernetes operator" \
      org.opencontainers.image.licenses="Apache-2.0"
# A fixed numeric user, so `runAsNonRoot` can verify it without reading /etc/passwd.
RUN groupadd --system --gid 10001 raftkv \
 && useradd --system --uid 10001 --gid raftkv --home-dir /var/lib/raftkv --no-create-home raftkv \
 && mkdir -p /var/lib/raftkv && chown raftkv:raftkv /var/lib/raftkv
COPY --from=build /opt/raftkv /opt/raftkv
ENV PATH=/opt/raftkv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
USER 10001:10001
WORKDIR /var/lib/raftkv
# Client (gRPC + HTTP), peer, operator metrics.
EXPOSE 2379 2380 8080
CMD ["raftkv", "--help"]
