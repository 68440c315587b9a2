#!/usr/bin/env bash
# Docker end-to-end test (`make test-docker`): builds the real image from ./Dockerfile, runs the
# real docker-compose.yml with specs/smoke.yaml, and checks what the run left in S3.
#
# Made for a fresh clone on a CI machine, as root: installs docker.io, docker-compose and
# debootstrap when missing and starts dockerd when none runs (and stops it again). Where Docker Hub
# cannot be reached it builds local stand-ins tagged with the names the Dockerfile and compose file
# use: python:3.11-slim-bookworm from debootstrap (docker/standins/python-base.sh) and, for service
# s3, moto's S3 server (docker/standins/s3-moto.Dockerfile, swapped in by docker/compose.e2e.yml).
# Containers, networks and volumes are removed at the end; images are kept so a rerun is fast.
#
# Knobs (environment): E2E_WORK (scratch folder), E2E_STANDINS=auto|always|never,
# E2E_WHEEL_PORT (local wheel server), E2E_S3_PORT, E2E_PIP_EXTRA_INDEX_URL (overrides the local
# package indexes found under /opt/pypi*), E2E_KEEP=1 (leave the stack up for debugging).
set -euo pipefail

cd "$(dirname "$0")/.."
for var in AWS_ENDPOINT_URL AWS_ENDPOINT_URL_S3 AWS_ACCESS_KEY_ID AWS_SECRET_ACCESS_KEY AWS_REGION \
           AWS_PROFILE SPEC STORAGE_URI S3_PORT JOB_IMAGE COMPOSE_FILE COMPOSE_PROJECT_NAME; do
  unset "$var"  # exported values would override the test's env file in compose
done
REPO=$(pwd)
WORK=${E2E_WORK:-/var/tmp/sweep-job-e2e}
PROJECT=sweep-job-e2e
PY_IMAGE=python:3.11-slim-bookworm
S3_IMAGE=$(sed -n 's/^ *image: *\(chrislusf\/seaweedfs:[^ ]*\).*/\1/p' docker-compose.yml | head -n 1)
S3_STANDIN=sweep-job-s3-standin:moto
JOB_IMAGE=sweep-job:e2e
SPEC=specs/smoke.yaml
STORAGE_URI=s3://sweeps
WHEEL_PORT=${E2E_WHEEL_PORT:-38765}
S3_PORT=${E2E_S3_PORT:-18333}
STANDINS=${E2E_STANDINS:-auto}
mkdir -p "$WORK"

T0=$(date +%s)
TIMINGS=()
STEP_NAME="" STEP_T0=0
step() {  # step NAME: closes the previous step's timer and opens a new one
  local now; now=$(date +%s)
  [[ -n $STEP_NAME ]] && TIMINGS+=("$(printf '%6ss  %s' $((now - STEP_T0)) "$STEP_NAME")")
  STEP_NAME=$1 STEP_T0=$now
  echo "== $1"
}
die() { echo "docker_e2e: FAIL: $*" >&2; exit 1; }

[[ $(id -u) == 0 ]] || die "run as root (it installs packages and may start dockerd)"

# ---------------------------------------------------------------------------------------------
step "tools: docker, docker-compose, debootstrap"
missing=()
command -v dockerd >/dev/null || missing+=(docker.io)
command -v docker >/dev/null || missing+=(docker.io)
docker compose version >/dev/null 2>&1 || command -v docker-compose >/dev/null || missing+=(docker-compose)
command -v debootstrap >/dev/null || missing+=(debootstrap)
if ((${#missing[@]})); then
  echo "installing: ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
if docker compose version >/dev/null 2>&1; then COMPOSE=(docker compose); else COMPOSE=(docker-compose); fi
# Without the buildx plugin the CLI must be told to use the classic builder.
docker buildx version >/dev/null 2>&1 || export DOCKER_BUILDKIT=0

STARTED_DOCKERD=""
WHEEL_PID=""
ENV_FILE="$WORK/e2e.env"
compose() { "${COMPOSE[@]}" -p "$PROJECT" --env-file "$ENV_FILE" -f docker-compose.yml "${OVERRIDE[@]}" "$@"; }
OVERRIDE=()

cleanup() {
  local rc=$?
  set +e
  if [[ -f $ENV_FILE && -z ${E2E_KEEP:-} ]]; then
    compose down -v --remove-orphans >"$WORK/down.log" 2>&1 || cat "$WORK/down.log" >&2
  fi
  [[ -n $WHEEL_PID ]] && kill "$WHEEL_PID" 2>/dev/null
  if [[ -n $STARTED_DOCKERD && -z ${E2E_KEEP:-} ]]; then
    kill "$STARTED_DOCKERD" 2>/dev/null && wait "$STARTED_DOCKERD" 2>/dev/null
  fi
  rm -f "$ENV_FILE"
  step "done"
  printf '%s\n' "timings:" "${TIMINGS[@]}"
  printf '%6ss  total\n' $(($(date +%s) - T0))
  ((rc == 0)) && echo "docker_e2e: PASS" || echo "docker_e2e: FAIL (exit $rc)" >&2
  exit $rc
}
trap cleanup EXIT

# ---------------------------------------------------------------------------------------------
step "dockerd"
if ! docker info >/dev/null 2>&1; then
  dockerd --storage-driver overlay2 >"$WORK/dockerd.log" 2>&1 &
  STARTED_DOCKERD=$!
  for _ in $(seq 60); do docker info >/dev/null 2>&1 && break; sleep 1; done
  docker info >/dev/null 2>&1 || { tail -n 20 "$WORK/dockerd.log" >&2; die "dockerd did not start"; }
  echo "started dockerd (pid $STARTED_DOCKERD, log $WORK/dockerd.log)"
else
  echo "using the running Docker engine"
fi

# ---------------------------------------------------------------------------------------------
step "base images (pull, else local stand-ins)"
have_image() { docker image inspect "$1" >/dev/null 2>&1; }
try_pull() { [[ $STANDINS != always ]] && timeout 60 docker pull -q "$1" >/dev/null 2>&1; }
PY_DEFAULT=$(sed -n 's/^ARG PYTHON_IMAGE=//p' Dockerfile)
BUILD_ARGS=()
if [[ $STANDINS != always ]] && { have_image "$PY_DEFAULT" || try_pull "$PY_DEFAULT"; }; then
  echo "python base: $PY_DEFAULT (from the registry)"
else
  [[ $STANDINS == never ]] && die "cannot pull $PY_DEFAULT and E2E_STANDINS=never"
  # A local stand-in has no registry digest, so the digest-pinned default cannot resolve to it:
  # build against the tag alone.
  BUILD_ARGS+=(--build-arg "PYTHON_IMAGE=$PY_IMAGE")
  if have_image "$PY_IMAGE"; then
    echo "python base: $PY_IMAGE (existing local image)"
  else
    echo "python base: building a debootstrap stand-in tagged $PY_IMAGE"
    bash docker/standins/python-base.sh "$PY_IMAGE" "$WORK"
  fi
fi
if [[ $STANDINS != always ]] && { have_image "$S3_IMAGE" || try_pull "$S3_IMAGE"; }; then
  echo "s3: $S3_IMAGE (SeaweedFS from the registry)"
else
  [[ $STANDINS == never ]] && die "cannot pull $S3_IMAGE and E2E_STANDINS=never"
  OVERRIDE=(-f docker/compose.e2e.yml)
  if ! have_image "$S3_STANDIN"; then
    echo "s3: building the moto stand-in $S3_STANDIN"
    docker build --network host --build-arg "PYTHON_IMAGE=$PY_IMAGE" -t "$S3_STANDIN" \
      -f docker/standins/s3-moto.Dockerfile docker/standins >"$WORK/build-s3.log" 2>&1 \
      || { tail -n 30 "$WORK/build-s3.log" >&2; die "building $S3_STANDIN failed (log $WORK/build-s3.log)"; }
  fi
  echo "s3: $S3_STANDIN (moto stand-in, via docker/compose.e2e.yml)"
fi

# ---------------------------------------------------------------------------------------------
step "job image build"
# Serve this machine's package indexes (torch, torchvision and the CUDA wheels live there) to the
# build on loopback. The port is fixed: the URL is part of the torch layer's cache key.
INDEX_URLS=${E2E_PIP_EXTRA_INDEX_URL-}
if [[ -z ${E2E_PIP_EXTRA_INDEX_URL+set} ]]; then
  mkdir -p "$WORK/indexes"
  for d in /opt/pypi /opt/pypi-more; do
    if [[ -d $d/simple ]]; then
      ln -sfn "$d" "$WORK/indexes/${d##*/}"
      INDEX_URLS+="${INDEX_URLS:+ }http://127.0.0.1:$WHEEL_PORT/${d##*/}/simple"
    fi
  done
fi
if [[ -n $INDEX_URLS && -z ${E2E_PIP_EXTRA_INDEX_URL+set} ]]; then
  python3 -m http.server "$WHEEL_PORT" --bind 127.0.0.1 --directory "$WORK/indexes" >"$WORK/http.log" 2>&1 &
  WHEEL_PID=$!
  sleep 1
  kill -0 "$WHEEL_PID" 2>/dev/null || die "could not serve wheels on 127.0.0.1:$WHEEL_PORT (set E2E_WHEEL_PORT)"
fi
echo "extra package indexes: ${INDEX_URLS:-none}"
build_t0=$(date +%s)
previous=$(docker image inspect -f '{{.Id}}' "$JOB_IMAGE" 2>/dev/null || true)
docker build --network host "${BUILD_ARGS[@]}" --build-arg "PIP_EXTRA_INDEX_URL=$INDEX_URLS" \
  -t "$JOB_IMAGE" . >"$WORK/build-job.log" 2>&1 \
  || { tail -n 40 "$WORK/build-job.log" >&2; die "docker build failed (log $WORK/build-job.log)"; }
echo "built $JOB_IMAGE in $(($(date +%s) - build_t0))s, $(docker image inspect -f '{{.Size}}' "$JOB_IMAGE" | awk '{printf "%.2f GB", $1/1e9}')"
echo "layers from cache: $(grep -c 'Using cache' "$WORK/build-job.log" || true)"
# The image a code change replaced is only a dangling tag over the same torch layers: drop it.
if [[ -n $previous && $previous != $(docker image inspect -f '{{.Id}}' "$JOB_IMAGE") ]]; then
  docker image rm "$previous" >/dev/null 2>&1 || true
fi

# ---------------------------------------------------------------------------------------------
step "compose up (job runs $SPEC)"
# Dummy credentials, fresh each run, so finding them anywhere below means a leak.
ACCESS_KEY="e2e-access-$(od -An -N6 -tx1 /dev/urandom | tr -d ' \n')"
SECRET_KEY="e2e-secret-$(od -An -N12 -tx1 /dev/urandom | tr -d ' \n')"
umask 077
cat >"$ENV_FILE" <<EOF
AWS_ACCESS_KEY_ID=$ACCESS_KEY
AWS_SECRET_ACCESS_KEY=$SECRET_KEY
AWS_REGION=us-east-1
SPEC=$SPEC
STORAGE_URI=$STORAGE_URI
S3_PORT=$S3_PORT
JOB_IMAGE=$JOB_IMAGE
EOF
umask 022
compose down -v --remove-orphans >/dev/null 2>&1 || true   # leftovers of an interrupted run
# s3 first and on its own, so it outlives the job: the moto stand-in keeps objects in memory and
# `up --exit-code-from` stops every service it started. The job's depends_on still waits for
# s3 to be healthy.
compose up -d --no-build --no-color s3
run_t0=$(date +%s)
set +e
compose up --no-build --no-color --exit-code-from job job 2>&1 | tee "$WORK/compose.log"
UP_RC=${PIPESTATUS[0]}
set -e
echo "compose up returned $UP_RC after $(($(date +%s) - run_t0))s"
JOB_CID=$(compose ps -q job)
[[ -n $JOB_CID ]] || die "no job container was created"
docker logs "$JOB_CID" >"$WORK/job.log" 2>&1

# ---------------------------------------------------------------------------------------------
step "assertions"
FAILS=()
JOB_RC=$(docker inspect -f '{{.State.ExitCode}}' "$JOB_CID")
[[ $JOB_RC == 0 && $UP_RC == 0 ]] || FAILS+=("job exited $JOB_RC (compose up: $UP_RC); log: $WORK/job.log")

JOB_USER=$(docker inspect -f '{{.Config.User}}' "$JOB_CID")
JOB_UID=$(compose run --rm --no-deps --entrypoint id job -u 2>/dev/null | tr -d '\r\n')
if [[ $JOB_UID == 1000 && -n $JOB_USER && $JOB_USER != root && $JOB_USER != 0 ]]; then
  echo "ok: the job ran as user '$JOB_USER' (uid $JOB_UID)"
else
  FAILS+=("job user is '$JOB_USER' (uid '$JOB_UID'); expected the non-root user sweep, uid 1000")
fi

NET=$(docker inspect -f '{{range $k, $v := .NetworkSettings.Networks}}{{$k}} {{end}}' "$JOB_CID" | awk '{print $1}')
# The checker runs in the job image (boto3, PyYAML) on the compose network; the keys go in through
# the environment, not argv.
set +e
AWS_ACCESS_KEY_ID=$ACCESS_KEY AWS_SECRET_ACCESS_KEY=$SECRET_KEY \
  docker run --rm --network "$NET" --entrypoint python -v "$REPO/docker/e2e:/e2e:ro" \
    -e AWS_ENDPOINT_URL=http://s3:8333 -e AWS_REGION=us-east-1 -e AWS_ACCESS_KEY_ID -e AWS_SECRET_ACCESS_KEY \
    "$JOB_IMAGE" /e2e/verify_bucket.py "/app/$SPEC" "$STORAGE_URI" 2>&1 | tee "$WORK/bucket.log"
VERIFY_RC=${PIPESTATUS[0]}
set -e
if ((VERIFY_RC != 0)); then
  FAILS+=("bucket check: $({ grep -m3 FAIL "$WORK/bucket.log" || true; } | tr '\n' ' ')(log $WORK/bucket.log)")
fi

docker history --no-trunc "$JOB_IMAGE" >"$WORK/history.txt"
docker image inspect "$JOB_IMAGE" >>"$WORK/history.txt"
for secret in "$ACCESS_KEY" "$SECRET_KEY"; do
  for f in "$WORK/history.txt" "$WORK/job.log" "$WORK/compose.log"; do
    if grep -qF -- "$secret" "$f"; then FAILS+=("a credential value appears in $f"); fi
  done
done
((${#FAILS[@]})) || echo "ok: no credential value in docker history, image config, job log or compose output"

echo "-- job log (tail)"
tail -n 25 "$WORK/job.log"
if ((${#FAILS[@]})); then
  printf 'docker_e2e: FAIL: %s\n' "${FAILS[@]}" >&2
  exit 1
fi
if [[ -n ${E2E_KEEP:-} ]]; then
  echo "E2E_KEEP: stack left up; tear down with: ${COMPOSE[*]} -p $PROJECT ${OVERRIDE[*]} down -v"
fi
