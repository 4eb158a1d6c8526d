#!/usr/bin/env bash
# Builds the e2e tier's Go tools into the checkout's ignored .tools/bin from their Go modules:
# kube-apiserver and kube-controller-manager from k8s.io/kubernetes (pinned), Helm v3 (pinned).
# Idempotent: each binary is rebuilt only when .tools/bin/<tool>.version does not name the pin.
#
# k8s.io/kubernetes is not meant to be consumed as a module: its go.mod requires the k8s.io/*
# staging modules at v0.0.0 and points them at ./staging with replace directives, which a
# dependent module ignores. So we generate a tiny module in .tools/src/kube whose replace
# directives pin every staging module to the matching published v0.X.Y release.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
KUBE_VERSION=${KUBE_VERSION:-v1.33.13}
HELM_VERSION=${HELM_VERSION:-v3.16.4}
BIN=$ROOT/.tools/bin
SRC=$ROOT/.tools/src/kube
mkdir -p "$BIN" "$SRC"
export GOFLAGS="-trimpath -buildvcs=false"
LDFLAGS="-s -w"

have() { [[ -x $BIN/$1 && -f $BIN/$1.version && $(cat "$BIN/$1.version") == "$2" ]]; }

start=$(date +%s)

if ! have helm "$HELM_VERSION"; then
  echo "building helm $HELM_VERSION"
  t=$(date +%s)
  GOBIN=$BIN go install -ldflags="$LDFLAGS" "helm.sh/helm/v3/cmd/helm@$HELM_VERSION"
  echo "$HELM_VERSION" >"$BIN/helm.version"
  echo "helm built in $(($(date +%s) - t)) s"
fi

if ! have kube-apiserver "$KUBE_VERSION" || ! have kube-controller-manager "$KUBE_VERSION"; then
  staging=v0.${KUBE_VERSION#v1.}
  gomod=$(cd "$SRC" && GOFLAGS= go mod download -json "k8s.io/kubernetes@$KUBE_VERSION" \
    | sed -n 's/^\s*"GoMod": "\(.*\)",$/\1/p')
  {
    echo "module raftkv.local/kubetools"
    echo
    echo "go $(sed -n 's/^go \([0-9.]*\)$/\1/p' "$gomod")"
    echo
    echo "require k8s.io/kubernetes $KUBE_VERSION"
    echo
    # Every "k8s.io/x => ./staging/src/k8s.io/x" of kubernetes' go.mod, pinned to the release.
    sed -n 's#^\s*\(k8s\.io/[a-z0-9-]*\) => \./staging/src/.*$#replace \1 => \1 '"$staging"'#p' "$gomod"
  } >"$SRC/go.mod"
  cat >"$SRC/tools.go" <<'GO'
//go:build tools

// Package kubetools only pins the commands built from k8s.io/kubernetes.
package kubetools

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
)
GO
  (cd "$SRC" && go mod tidy)
  # The version the binaries report (Helm checks charts' kubeVersion against it); without it
  # they say v0.0.0-master.
  minor=${KUBE_VERSION#v1.}
  minor=${minor%%.*}
  kube_ldflags="$LDFLAGS"
  for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    kube_ldflags+=" -X $pkg.gitVersion=$KUBE_VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor"
    kube_ldflags+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
  done
  for cmd in kube-apiserver kube-controller-manager; do
    have "$cmd" "$KUBE_VERSION" && continue
    echo "building $cmd $KUBE_VERSION"
    t=$(date +%s)
    (cd "$SRC" && go build -ldflags="$kube_ldflags" -o "$BIN/$cmd" \
      "k8s.io/kubernetes/cmd/$cmd")
    echo "$KUBE_VERSION" >"$BIN/$cmd.version"
    echo "$cmd built in $(($(date +%s) - t)) s"
  done
fi
echo "e2e tools ready in $(($(date +%s) - start)) s: $(ls "$BIN" | grep -v version | tr '\n' ' ')"
