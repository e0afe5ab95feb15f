#!/usr/bin/env bash
# Builds the local control plane's binaries from Go modules, once, into a cache outside the repo.
#
#   hack/localcluster/build.sh          # prints the bin directory (builds what is missing)
#
# The cache is keyed by every version below; change a version and a fresh directory is built.
# Binaries: etcd, kube-apiserver, kube-controller-manager, kube-scheduler, kubectl, kwok, helm; for the real
# nodes kubelet, kube-proxy and coredns (with the plugins the cluster uses: gomod/coredns); plus KWOK's own node stages (kwok-node-stages.yaml) and Logs CRD
# (kwok-logs-crd.yaml), taken from the same kwok module. Kueue goes into kueue/ (the controller, and its
# config/components/crd and config/components/webhook from the same module); kueue/VERSION keys that folder
# by its own version, so changing KUEUE_VERSION rebuilds Kueue alone.
set -euo pipefail

K8S_VERSION=v1.34.4        # kube-apiserver, controller manager, scheduler, kubectl, kubelet, kube-proxy
ETCD_VERSION=v3.6.16       # the 3.6 line Kubernetes 1.34 supports (>= 3.5.13)
KWOK_VERSION=v0.8.0
HELM_VERSION=v3.22.0
COREDNS_VERSION=v1.12.4
KUEUE_VERSION=v0.15.2      # the newest Kueue built against k8s.io/* v0.34 (v0.16 moved to v0.35)

KEY="k8s-${K8S_VERSION}_etcd-${ETCD_VERSION}_kwok-${KWOK_VERSION}_helm-${HELM_VERSION}_coredns-${COREDNS_VERSION}"
CACHE_ROOT=${LONGALIGN_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/longalign}
BIN=$CACHE_ROOT/cluster-bin/$KEY
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
K8S=(kube-apiserver kube-controller-manager kube-scheduler kubectl kubelet kube-proxy)
ALL=(etcd "${K8S[@]}" kwok helm coredns)

missing=()
for b in "${ALL[@]}"; do [ -x "$BIN/$b" ] || missing+=("$b"); done
[ -s "$BIN/kwok-node-stages.yaml" ] || missing+=(kwok-node-stages)
[ -s "$BIN/kwok-logs-crd.yaml" ] || missing+=(kwok-logs-crd)
[ "$(cat "$BIN/kueue/VERSION" 2>/dev/null)" = "$KUEUE_VERSION" ] || missing+=(kueue)
if [ ${#missing[@]} -eq 0 ]; then echo "$BIN"; exit 0; fi

pinned() {  # wrapper module, module path, version: the wrapper's go.mod must require that version
  grep -q "^[[:space:]]*\(require \)\?$2 $3\b" "$HERE/gomod/$1/go.mod" ||
    { echo "build.sh: gomod/$1/go.mod does not require $2 $3 (set both versions together)" >&2; exit 1; }
}
pinned k8s k8s.io/kubernetes "$K8S_VERSION"
pinned etcd go.etcd.io/etcd/server/v3 "$ETCD_VERSION"
pinned coredns github.com/coredns/coredns "$COREDNS_VERSION"

export GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS=-mod=mod
mkdir -p "$BIN"
# Only the binaries are kept: Go's module and build caches of this build (about 9 GB) go when it ends, unless
# GOCACHE / GOMODCACHE are set (a version change rebuilds from scratch anyway). CI's disk is shared by the
# venv, the images and the real nodes' containerd stores.
if [ -z "${GOCACHE:-}" ] || [ -z "${GOMODCACHE:-}" ]; then
  go_tmp=$(mktemp -d "$CACHE_ROOT/go-build.XXXXXX")
  trap 'chmod -R u+w "$go_tmp" 2>/dev/null || true; rm -rf "$go_tmp"' EXIT
  export GOCACHE=${GOCACHE:-$go_tmp/cache} GOMODCACHE=${GOMODCACHE:-$go_tmp/mod}
fi
log() { echo "[build $(date +%T)] $*" >&2; }
start=$(date +%s)

build_k8s() {  # commands of k8s.io/kubernetes/cmd
  # k8s.io/kubernetes cannot be `go install`ed: its go.mod points the k8s.io/* staging modules at ./staging.
  # The wrapper module in gomod/k8s replaces each with its published v0.Y.Z tag.
  local minor=${K8S_VERSION#v1.}; minor=${minor%%.*}
  local ldf="-s -w" p
  for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ldf+=" -X $p.gitVersion=$K8S_VERSION -X $p.gitMajor=1 -X $p.gitMinor=$minor"
    ldf+=" -X $p.gitTreeState=clean -X $p.buildDate=1970-01-01T00:00:00Z"
  done
  log "kubernetes $K8S_VERSION: $*"
  (cd "$HERE/gomod/k8s" && go build -p 2 -trimpath -ldflags "$ldf" -o "$BIN/" "${@/#/k8s.io/kubernetes/cmd/}")
}

build_etcd() {
  # etcd's server module also carries replace directives, hence its own wrapper module.
  log "etcd $ETCD_VERSION"
  (cd "$HERE/gomod/etcd" && go build -trimpath -ldflags "-s -w" -o "$BIN/etcd" go.etcd.io/etcd/server/v3)
}

build_go_install() {  # name module@version [ldflags]
  log "$1 ${2#*@}"
  GOBIN="$BIN" go install -trimpath -ldflags "-s -w ${3:-}" "$2"
}

helm_kube_version_flags() {
  # `helm lint`/`helm template` without a cluster assume this Kubernetes version (default: 1.20).
  local minor p out=""
  minor=${K8S_VERSION#v1.}; minor=${minor%%.*}
  for p in helm.sh/helm/v3/pkg/chartutil helm.sh/helm/v3/pkg/lint/rules; do
    out+=" -X $p.k8sVersionMajor=1 -X $p.k8sVersionMinor=$minor"
  done
  echo "$out"
}

copy_kwok_node_stages() {
  # A KWOK config that names any stage drops all default stages, node ones included, so the node
  # lifecycle (initialize + lease heartbeat) is taken verbatim from the kwok module that built the binary.
  local dir
  dir=$(go mod download -json "sigs.k8s.io/kwok@$KWOK_VERSION" | sed -n 's/.*"Dir": "\(.*\)".*/\1/p')
  { cat "$dir/kustomize/stage/node/fast/node-initialize.yaml"; echo "---"
    cat "$dir/kustomize/stage/node/heartbeat-with-lease/node-heartbeat-with-lease.yaml"; } > "$BIN/kwok-node-stages.yaml"
}

copy_kwok_logs_crd() {
  # KWOK serves a simulated container log from a file named in a Logs object (its CRD, from the same module).
  local dir
  dir=$(go mod download -json "sigs.k8s.io/kwok@$KWOK_VERSION" | sed -n 's/.*"Dir": "\(.*\)".*/\1/p')
  cp "$dir/kustomize/crd/bases/kwok.x-k8s.io_logs.yaml" "$BIN/kwok-logs-crd.yaml"
}

build_coredns() {
  # A main of our own with only the plugins coredns.py's Corefile uses (gomod/coredns/main.go).
  log "coredns $COREDNS_VERSION (plugins bind, errors, cache, kubernetes)"
  (cd "$HERE/gomod/coredns" && go build -trimpath -ldflags "-s -w" -o "$BIN/coredns" .)
}

build_kueue() {
  # Kueue's go.mod has no replace directives: `go install` builds it as published.
  local dir out="$BIN/kueue"
  log "kueue $KUEUE_VERSION"
  rm -rf "$out" && mkdir -p "$out/config"
  GOBIN="$out" go install -trimpath -ldflags "-s -w -X sigs.k8s.io/kueue/pkg/version.GitVersion=$KUEUE_VERSION" \
    "sigs.k8s.io/kueue/cmd/kueue@$KUEUE_VERSION"
  dir=$(go mod download -json "sigs.k8s.io/kueue@$KUEUE_VERSION" | sed -n 's/.*"Dir": "\(.*\)".*/\1/p')
  cp -r "$dir/config/components/crd" "$dir/config/components/webhook" "$out/config/"
  chmod -R u+w "$out/config"  # the module cache is read-only
  echo "$KUEUE_VERSION" > "$out/VERSION"
}

k8s_missing=()
for b in "${missing[@]}"; do
  case $b in
    etcd) build_etcd ;;
    kube*) k8s_missing+=("$b") ;;  # built together below
    kwok) build_go_install kwok "sigs.k8s.io/kwok/cmd/kwok@$KWOK_VERSION" \
            "-X sigs.k8s.io/kwok/pkg/consts.Version=${KWOK_VERSION#v}" ;;
    helm) build_go_install helm "helm.sh/helm/v3/cmd/helm@$HELM_VERSION" \
            "-X helm.sh/helm/v3/internal/version.version=$HELM_VERSION $(helm_kube_version_flags)" ;;
    coredns) build_coredns ;;
    kwok-node-stages) copy_kwok_node_stages ;;
    kwok-logs-crd) copy_kwok_logs_crd ;;
    kueue) build_kueue ;;
  esac
done
[ ${#k8s_missing[@]} -eq 0 ] || build_k8s "${k8s_missing[@]}"
for b in "${ALL[@]}"; do [ -x "$BIN/$b" ] || { echo "build.sh: $b was not built" >&2; exit 1; }; done
[ -s "$BIN/kwok-node-stages.yaml" ] || { echo "build.sh: kwok node stages missing" >&2; exit 1; }
[ -s "$BIN/kwok-logs-crd.yaml" ] || { echo "build.sh: kwok Logs CRD missing" >&2; exit 1; }
[ -x "$BIN/kueue/kueue" ] || { echo "build.sh: kueue was not built" >&2; exit 1; }
log "built ${missing[*]} in $(( $(date +%s) - start )) s into $BIN"
echo "$BIN"
