#!/usr/bin/env bash
# The local cluster path (kind + CPU images), scripted:
#   images/kind.sh up      kind cluster "nlpjobs" with the add-ons the chart needs (the JobSet controller,
#                          and Kueue with a LocalQueue "nlpjobs" in namespace default), SeaweedFS (S3) in
#                          namespace nlpjobs-dev, bucket "nlpjobs", and the Secret "nlpjobs-storage" the
#                          chart reads credentials from
#   images/kind.sh load    kind load docker-image of the CPU task images (after `make images`)
#   images/kind.sh down    delete the cluster
# Then: make submit TASK=ner VALUES=images/kind/values.yaml   (preset local: offline data, CPU-sized)
# Needs kind, kubectl and docker on PATH; SeaweedFS's image is pulled from Docker Hub (SEAWEEDFS_IMAGE), the
# JobSet and Kueue manifests from their GitHub releases (the versions the control-plane tier tests).
set -euo pipefail
cd "$(dirname "$0")/.."
CLUSTER="${KIND_CLUSTER:-nlpjobs}"
TASKS="${TASKS:-ner qa mlm translation summarization clm}"
VERSION="$(sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml)"
JOBSET_VERSION="${JOBSET_VERSION:-v0.12.0}"
KUEUE_VERSION="${KUEUE_VERSION:-v0.17.0}"
fail() { echo "kind.sh: $*" >&2; exit 1; }
for tool in kind kubectl docker; do
  command -v "$tool" >/dev/null || { echo "$tool not found on PATH (https://kind.sigs.k8s.io/docs/user/quick-start/)" >&2; exit 1; }
done
case "${1:-}" in
  up)
    kind get clusters | grep -qx "$CLUSTER" || kind create cluster --name "$CLUSTER"
    kubectl config use-context "kind-$CLUSTER"
    kubectl apply --server-side -f "https://github.com/kubernetes-sigs/jobset/releases/download/$JOBSET_VERSION/manifests.yaml"
    kubectl -n jobset-system rollout status deploy/jobset-controller-manager --timeout=300s
    kubectl apply --server-side -f "https://github.com/kubernetes-sigs/kueue/releases/download/$KUEUE_VERSION/manifests.yaml"
    kubectl -n kueue-system rollout status deploy/kueue-controller-manager --timeout=300s
    kubectl apply --server-side -f images/kind/kueue.yaml
    kubectl apply -f images/kind/seaweedfs.yaml
    kubectl -n nlpjobs-dev rollout status deploy/seaweedfs --timeout=300s
    buckets() { kubectl -n nlpjobs-dev exec deploy/seaweedfs -- sh -c 'echo "s3.bucket.list" | weed shell'; }
    if ! buckets | grep -qw nlpjobs; then
      kubectl -n nlpjobs-dev exec deploy/seaweedfs -- sh -c 'echo "s3.bucket.create -name nlpjobs" | weed shell' \
        || fail "creating the bucket nlpjobs in SeaweedFS failed (kubectl -n nlpjobs-dev logs deploy/seaweedfs)"
      buckets | grep -qw nlpjobs || fail "the bucket nlpjobs is missing after its creation (kubectl -n nlpjobs-dev logs deploy/seaweedfs)"
    fi
    kubectl create secret generic nlpjobs-storage --from-literal=AWS_ACCESS_KEY_ID=nlpjobs \
      --from-literal=AWS_SECRET_ACCESS_KEY=nlpjobs-dev-secret --dry-run=client -o yaml | kubectl apply -f -
    echo "ready: make images && make kind-load && make submit TASK=ner VALUES=images/kind/values.yaml"
    ;;
  load)
    for task in $TASKS; do kind load docker-image --name "$CLUSTER" "nlpjobs-$task:$VERSION-cpu"; done
    ;;
  down)
    kind delete cluster --name "$CLUSTER"
    ;;
  *) echo "usage: $0 up|load|down" >&2; exit 2 ;;
esac
