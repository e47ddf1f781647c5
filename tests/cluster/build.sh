#!/usr/bin/env bash
# Build a kubelet-less Kubernetes control plane for the nlpjobs test suite from
# the real upstream Go modules (no docker, no kind):
#   kube-apiserver, kube-controller-manager, kube-scheduler  (k8s.io/kubernetes)
#   etcd                                                     (go.etcd.io/etcd/server/v3)
#   jobset  (JobSet controller manager)                      (sigs.k8s.io/jobset)
#   kueue   (Kueue controller manager)                       (sigs.k8s.io/kueue)
#   kwok    (fake nodes / pods)                              (sigs.k8s.io/kwok)
# plus the CRDs, webhook configurations and kwok stages extracted from the
# same module versions.
#
# Output: ${NLPJOBS_CLUSTER_CACHE:-$HOME/.cache/nlpjobs/cluster}/<key>/{bin,manifests,_SUCCESS}: the user cache,
# not $NLPJOBS_CACHE (the tests and .ci/run point that at throwaway folders), so a fresh clone reuses it.
# Idempotent: every binary / manifest dir that already exists is skipped.
# Usage: tests/cluster/build.sh [--print-dir]
set -euo pipefail

# ---- pinned versions -------------------------------------------------------
K8S_VERSION=v1.35.4          # Kueue v0.17 supports 1.33-1.35, JobSet v0.12 the latest 3 (1.34-1.36)
JOBSET_VERSION=v0.12.0
KUEUE_VERSION=v0.17.0
KWOK_VERSION=v0.8.0
ETCD_VERSION=v3.6.6          # what k8s 1.35's hack/lib/etcd.sh tests against
KUSTOMIZE_VERSION=v5.8.1     # build tool only: renders the CRD/webhook kustomizations of jobset/kueue
# -----------------------------------------------------------------------------

KEY="k8s-${K8S_VERSION}_jobset-${JOBSET_VERSION}_kueue-${KUEUE_VERSION}_kwok-${KWOK_VERSION}_etcd-${ETCD_VERSION}"
CACHE_ROOT="${NLPJOBS_CLUSTER_CACHE:-$HOME/.cache/nlpjobs/cluster}"
OUT="${CACHE_ROOT}/${KEY}"
BIN="${OUT}/bin"
MAN="${OUT}/manifests"
WORK="${CACHE_ROOT}/build-modules"   # throwaway build modules (one per component group)

if [[ "${1:-}" == "--print-dir" ]]; then
  echo "${OUT}"
  exit 0
fi

export GOFLAGS="${GOFLAGS:--buildvcs=false -modcacherw}"
# Go's build and module caches for Kubernetes take several GB: unless the caller chose them, they live
# under WORK and go with it once the binaries are built (a rebuild happens only for new pinned versions).
OWN_GO_CACHES=0
if [[ -z "${GOCACHE:-}" && -z "${GOMODCACHE:-}" ]]; then
  export GOCACHE="${WORK}/go-build" GOMODCACHE="${WORK}/go-mod"
  OWN_GO_CACHES=1
fi
export GOTOOLCHAIN="${GOTOOLCHAIN:-local}"
export CGO_ENABLED="${CGO_ENABLED:-0}"
GO="${GO:-go}"

mkdir -p "${BIN}" "${MAN}" "${WORK}"

if [[ ! -f "${OUT}/_SUCCESS" ]]; then
  # jobset v0.12 and kwok v0.8 declare `go 1.26.0`
  gov=$("${GO}" env GOVERSION 2>/dev/null || true)
  if [[ ! "${gov}" =~ ^go1\.(2[6-9]|[3-9][0-9]) ]] && [[ "${GOTOOLCHAIN}" == local ]]; then
    echo "[build] needs Go >= 1.26 (found '${gov:-no go}'); install it or set GOTOOLCHAIN=auto" >&2
    exit 1
  fi
fi

if [[ -f "${OUT}/_SUCCESS" ]]; then
  echo "[build] up to date: ${OUT}"
  exit 0
fi

T0=$(date +%s)
log() { echo "[build $(date +%H:%M:%S)] $*"; }
have() { local b; for b in "$@"; do [[ -x "${BIN}/${b}" ]] || return 1; done; }
timed() {  # timed <label> <cmd...>
  local label=$1; shift
  local s; s=$(date +%s)
  log "${label}: start"
  "$@"
  log "${label}: done in $(( $(date +%s) - s ))s"
}

moddir() {  # moddir <module>@<version>  -> prints the extracted module dir (downloads if needed)
  (cd "${WORK}" && "${GO}" mod download -json "$1" | sed -n 's/^\s*"Dir": "\(.*\)",$/\1/p')
}

# pinned_gomod <dir> <name> <module> <version> <module dir> <replace-path regex> <pinned version>
# A build module requiring <module>@<version>, whose own go.mod replaces sibling modules with local paths
# (go install refuses those): each such replace becomes a replace by the same module at <pinned version>.
pinned_gomod() {
  local dir=$1 name=$2 module=$3 version=$4 src=$5 local_path=$6 pinned=$7
  {
    echo "module nlpjobs.local/build/${name}"
    echo
    echo "go $(sed -n 's/^go \(.*\)$/\1/p' "${src}/go.mod")"
    echo
    echo "require ${module} ${version}"
    echo
    echo "replace ("
    awk -v v="${pinned}" -v p="${local_path}" '
      /^replace \(/ {r=1; next}
      r && /^\)/ {r=0}
      r && $2 == "=>" && $3 ~ p {printf "\t%s => %s %s\n", $1, $1, v}
    ' "${src}/go.mod"
    echo ")"
  } > "${dir}/go.mod"
}

# ---- Kubernetes control plane ------------------------------------------------
build_kube() {
  local want=(kube-apiserver kube-controller-manager kube-scheduler)
  if have "${want[@]}"; then log "kubernetes ${K8S_VERSION}: cached"; return; fi
  local kdir staging_ver m
  kdir=$(moddir "k8s.io/kubernetes@${K8S_VERSION}")
  staging_ver="v0.${K8S_VERSION#v1.}"          # v1.35.4 -> v0.35.4
  m="${WORK}/kubernetes-${K8S_VERSION}"
  mkdir -p "${m}"
  # every `k8s.io/x => ./staging/src/k8s.io/x` becomes `k8s.io/x => k8s.io/x v0.Y.Z`
  pinned_gomod "${m}" kubernetes "k8s.io/kubernetes" "${K8S_VERSION}" "${kdir}" '^\\./staging/' "${staging_ver}"
  cat > "${m}/build.go" <<'EOF'
// Package build only exists so that `go mod tidy` keeps the requirements of
// the kubernetes commands; the commands themselves are built by path.
package build
EOF
  local pkgs=(k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager k8s.io/kubernetes/cmd/kube-scheduler)
  local minor=${K8S_VERSION#v1.}; minor=${minor%%.*}
  local ld="-s -w" kv
  for kv in "gitVersion=${K8S_VERSION}" "gitMajor=1" "gitMinor=${minor}" "gitTreeState=clean" \
            "buildDate=$(date -u +%Y-%m-%dT%H:%M:%SZ)"; do
    ld+=" -X k8s.io/component-base/version.${kv} -X k8s.io/client-go/pkg/version.${kv}"
  done
  (
    cd "${m}"
    # resolve the full dependency graph of the three commands (with the staging replaces)
    "${GO}" get "${pkgs[@]/%/@${K8S_VERSION}}" 2> >(grep -v '^go: downloading' >&2)
    # kube-apiserver first: it is the slowest and most of its packages are shared
    "${GO}" build -trimpath -ldflags="${ld}" -o "${BIN}/kube-apiserver.tmp" k8s.io/kubernetes/cmd/kube-apiserver
    mv "${BIN}/kube-apiserver.tmp" "${BIN}/kube-apiserver"
    log "  kube-apiserver built ($(( $(date +%s) - T0 ))s since start)"
    local c
    for c in kube-controller-manager kube-scheduler; do
      "${GO}" build -trimpath -ldflags="${ld}" -o "${BIN}/${c}.tmp" "k8s.io/kubernetes/cmd/${c}"
      mv "${BIN}/${c}.tmp" "${BIN}/${c}"
      log "  ${c} built ($(( $(date +%s) - T0 ))s since start)"
    done
  )
}

# ---- etcd --------------------------------------------------------------------
build_etcd() {
  if have etcd; then log "etcd ${ETCD_VERSION}: cached"; return; fi
  local edir m
  edir=$(moddir "go.etcd.io/etcd/server/v3@${ETCD_VERSION}")
  m="${WORK}/etcd-${ETCD_VERSION}"
  mkdir -p "${m}"
  # the server module replaces its sibling modules with ../xxx: pin them to the same tag
  pinned_gomod "${m}" etcd "go.etcd.io/etcd/server/v3" "${ETCD_VERSION}" "${edir}" '^\\.\\.' "${ETCD_VERSION}"
  echo "package build" > "${m}/build.go"
  (
    cd "${m}"
    "${GO}" get "go.etcd.io/etcd/server/v3@${ETCD_VERSION}" 2> >(grep -v '^go: downloading' >&2)
    "${GO}" build -trimpath \
      -ldflags="-s -w -X go.etcd.io/etcd/api/v3/version.GitSHA=${ETCD_VERSION}" \
      -o "${BIN}/etcd.tmp" go.etcd.io/etcd/server/v3
    mv "${BIN}/etcd.tmp" "${BIN}/etcd"
  )
}

# ---- sigs.k8s.io controllers ---------------------------------------------------
# These modules have no replace directives, so a throwaway module that only
# requires them resolves exactly their own (complete, go>=1.17) go.mod.
# (`go install pkg@version` would do the same but insists on reading the
# module's @v/list for deprecation notices, which the proxy may refuse.)
build_in_module() {  # build_in_module <binary> <module> <package> <version> <ldflags>
  local name=$1 mod=$2 pkg=$3 ver=$4 ld=$5 mdir m
  if have "${name}"; then log "${name} ${ver}: cached"; return; fi
  mdir=$(moddir "${mod}@${ver}")
  m="${WORK}/${name}-${ver}"
  mkdir -p "${m}"
  printf 'module nlpjobs.local/build/%s\n\ngo %s\n\nrequire %s %s\n' \
    "${name}" "$(sed -n 's/^go \(.*\)$/\1/p' "${mdir}/go.mod")" "${mod}" "${ver}" > "${m}/go.mod"
  echo "package build" > "${m}/build.go"
  (
    cd "${m}"
    "${GO}" build -mod=mod -trimpath -ldflags="-s -w ${ld}" -o "${BIN}/${name}.tmp" "${pkg}" \
      2> >(grep -v '^go: downloading' >&2)
    mv "${BIN}/${name}.tmp" "${BIN}/${name}"
  )
}
build_jobset() {
  build_in_module jobset sigs.k8s.io/jobset sigs.k8s.io/jobset "${JOBSET_VERSION}" \
    "-X sigs.k8s.io/jobset/pkg/version.GitVersion=${JOBSET_VERSION}"
}
build_kueue() {
  build_in_module kueue sigs.k8s.io/kueue sigs.k8s.io/kueue/cmd/kueue "${KUEUE_VERSION}" \
    "-X sigs.k8s.io/kueue/pkg/version.GitVersion=${KUEUE_VERSION}"
}
build_kwok() {
  build_in_module kwok sigs.k8s.io/kwok sigs.k8s.io/kwok/cmd/kwok "${KWOK_VERSION}" \
    "-X sigs.k8s.io/kwok/pkg/consts.Version=${KWOK_VERSION} -X sigs.k8s.io/kwok/pkg/consts.KubeVersion=${K8S_VERSION}"
}

# ---- manifests -----------------------------------------------------------------
build_kustomize() {
  build_in_module kustomize sigs.k8s.io/kustomize/kustomize/v5 sigs.k8s.io/kustomize/kustomize/v5 \
    "${KUSTOMIZE_VERSION}" "-X sigs.k8s.io/kustomize/api/provenance.version=${KUSTOMIZE_VERSION}"
}
# render <out-file> <kustomization dir>: the upstream kustomization, as shipped in the module
render() {
  "${BIN}/kustomize" build "$2" > "$1.tmp"
  mv "$1.tmp" "$1"
}
extract_manifests() {
  local d
  # JobSet / Kueue: CRDs (with their conversion-webhook patches) and the webhook
  # configurations (with their selector patches), rendered by kustomize from the
  # module's config/components. controlplane.py rewrites `service:` to loopback `url:`.
  local name module
  for module in "sigs.k8s.io/jobset@${JOBSET_VERSION}" "sigs.k8s.io/kueue@${KUEUE_VERSION}"; do
    name=${module#sigs.k8s.io/}; name=${name%@*}
    [[ -f "${MAN}/${name}/.done" ]] && continue
    d=$(moddir "${module}")
    rm -rf "${MAN:?}/${name}"; mkdir -p "${MAN}/${name}"
    render "${MAN}/${name}/crds.yaml" "${d}/config/components/crd"
    render "${MAN}/${name}/webhooks.yaml" "${d}/config/components/webhook"
    touch "${MAN}/${name}/.done"
  done
  # kwok: CRDs (Stage, ...) and the upstream stage sets, kept in their layout:
  # stages/<node|pod>/<set>/*.yaml (fast, general, chaos, heartbeat-with-lease, ...)
  if [[ ! -f "${MAN}/kwok/.done" ]]; then
    d=$(moddir "sigs.k8s.io/kwok@${KWOK_VERSION}")
    rm -rf "${MAN}/kwok"; mkdir -p "${MAN}/kwok/stages"
    render "${MAN}/kwok/crds.yaml" "${d}/kustomize/crd"
    (cd "${d}/kustomize/stage" && find . -name '*.yaml' ! -path '*/testdata/*' ! -name kustomization.yaml) |
      while read -r f; do
        mkdir -p "${MAN}/kwok/stages/$(dirname "${f}")"
        cp "${d}/kustomize/stage/${f}" "${MAN}/kwok/stages/${f}"
      done
    touch "${MAN}/kwok/.done"
  fi
  chmod -R u+w "${MAN}"
}

log "output: ${OUT}"
log "versions: k8s=${K8S_VERSION} jobset=${JOBSET_VERSION} kueue=${KUEUE_VERSION} kwok=${KWOK_VERSION} etcd=${ETCD_VERSION}"
timed "kubernetes ${K8S_VERSION} (kube-apiserver, kube-controller-manager, kube-scheduler)" build_kube
timed "etcd ${ETCD_VERSION}" build_etcd
timed "kwok ${KWOK_VERSION}" build_kwok
timed "jobset ${JOBSET_VERSION}" build_jobset
timed "kueue ${KUEUE_VERSION}" build_kueue
timed "kustomize ${KUSTOMIZE_VERSION} (build tool)" build_kustomize
timed "manifests (CRDs, webhooks, kwok stages)" extract_manifests

have kube-apiserver kube-controller-manager kube-scheduler etcd kwok jobset kueue kustomize
date -u +%Y-%m-%dT%H:%M:%SZ > "${OUT}/_SUCCESS"
if [[ "${OWN_GO_CACHES}" == 1 ]]; then
  log "removing the build's Go caches ($(du -sh "${WORK}" 2>/dev/null | cut -f1))"
  chmod -R u+w "${WORK}" 2>/dev/null || true
  rm -rf "${WORK}"
fi
log "all done in $(( $(date +%s) - T0 ))s -> ${OUT}"
