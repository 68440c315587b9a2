#!/usr/bin/env bash
# Docker end-to-end test (`make test-docker`): builds the real image from ./Dockerfile, runs the
# real docker-compose.yml with specs/smoke.yaml, and checks what the run left in S3, that
# `compose run --rm job results ...` reads it back, that `docker stop` stops a sweep cleanly, and
# that canary credentials (the S3 secret key, a package index token passed as a build secret) appear
# nowhere: not in the bucket, logs, image history, image config, image layers or the container's files.
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
           AWS_PROFILE SPEC STORAGE_URI S3_PORT JOB_IMAGE COMPOSE_FILE COMPOSE_PROJECT_NAME \
           PYTHON_IMAGE PIP_INDEX_URL PIP_EXTRA_INDEX_URL PIP_FIND_LINKS PIP_TRUSTED_HOST; do
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
# The Dockerfile needs BuildKit (RUN --mount=type=secret). Docker >= 23 has it through the buildx
# plugin; the 20.10 CLI (Debian's docker.io) has it built in behind DOCKER_BUILDKIT=1; a newer CLI
# without buildx has neither. Put a CLI that has it first on PATH, for this script and for
# docker-compose 1.29, which runs `docker build` from PATH.
BUILD_CLI=""
for cli in $(type -ap docker); do
  if "$cli" buildx version >/dev/null 2>&1 \
     || [[ $("$cli" version -f '{{.Client.Version}}' 2>/dev/null || true) =~ ^(19|20|21|22)\. ]]; then
    BUILD_CLI=$cli; break
  fi
done
[[ -n $BUILD_CLI ]] || die "no docker CLI with BuildKit on PATH: install the buildx plugin (docker-buildx) or Debian's docker.io"
mkdir -p "$WORK/bin"
ln -sfn "$BUILD_CLI" "$WORK/bin/docker"
export PATH="$WORK/bin:$PATH" DOCKER_BUILDKIT=1
echo "docker CLI for builds: $BUILD_CLI ($(docker version -f '{{.Client.Version}}' 2>/dev/null || true))"
if docker compose version >/dev/null 2>&1; then COMPOSE=(docker compose); else COMPOSE=(docker-compose); fi
echo "compose: ${COMPOSE[*]} ($("${COMPOSE[@]}" version --short 2>/dev/null || true))"

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
trap "exit 143" TERM INT

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
PY_DEFAULT=$(sed -n 's/^ARG PYTHON_IMAGE_DEFAULT=//p' Dockerfile)
BUILD_ARGS=()
PYTHON_IMAGE_ARG=""
if [[ $STANDINS != always ]] && { have_image "$PY_DEFAULT" || try_pull "$PY_DEFAULT"; }; then
  echo "python base: $PY_DEFAULT (from the registry)"
else
  [[ $STANDINS == never ]] && die "cannot pull $PY_DEFAULT and E2E_STANDINS=never"
  # A local stand-in has no registry digest, so the digest-pinned default cannot resolve to it:
  # build against the tag alone.
  PYTHON_IMAGE_ARG=$PY_IMAGE
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
# build on loopback. They go in as build secrets with a canary token in their URLs
# (http://user:token@host/...), the way a private mirror's credentials would: pip_index_url names
# the first, pip_conf adds the public index and the rest; the token must end up in no layer. The
# http server ignores the credentials. The port is fixed, like a real mirror's host: secrets are
# not part of the cache key, but the build args are.
PIP_CANARY="e2e-pip-token-$(od -An -N12 -tx1 /dev/urandom | tr -d ' \n')"
SECRETS_DIR="$WORK/build-secrets"
rm -rf "$SECRETS_DIR"; mkdir -m 700 "$SECRETS_DIR"
printf '[global]\n# e2e canary, must not reach the image: %s\n' "$PIP_CANARY" >"$SECRETS_DIR/pip_conf"
SECRET_ARGS=(--secret "id=pip_conf,src=$SECRETS_DIR/pip_conf")
PLAIN_INDEXES=${E2E_PIP_EXTRA_INDEX_URL-}
if [[ -z ${E2E_PIP_EXTRA_INDEX_URL+set} ]]; then
  mkdir -p "$WORK/indexes"
  urls=()
  for d in /opt/pypi /opt/pypi-more; do
    if [[ -d $d/simple ]]; then
      ln -sfn "$d" "$WORK/indexes/${d##*/}"
      urls+=("http://e2e-user:$PIP_CANARY@127.0.0.1:$WHEEL_PORT/${d##*/}/simple")
    fi
  done
  if ((${#urls[@]})); then
    python3 -m http.server "$WHEEL_PORT" --bind 127.0.0.1 --directory "$WORK/indexes" >"$WORK/http.log" 2>&1 &
    WHEEL_PID=$!
    sleep 1
    kill -0 "$WHEEL_PID" 2>/dev/null || die "could not serve wheels on 127.0.0.1:$WHEEL_PORT (set E2E_WHEEL_PORT)"
    printf '%s' "${urls[0]}" >"$SECRETS_DIR/pip_index_url"
    printf 'extra-index-url = https://pypi.org/simple %s\n' "${urls[*]:1}" >>"$SECRETS_DIR/pip_conf"
    SECRET_ARGS+=(--secret "id=pip_index_url,src=$SECRETS_DIR/pip_index_url")
    echo "package indexes: ${urls[*]//$PIP_CANARY/<canary>} (build secrets), https://pypi.org/simple"
  fi
fi
# E2E_PIP_EXTRA_INDEX_URL: plain mirrors without credentials, through the build arg. Every source
# arg is passed, empty or not, exactly as compose passes them from the env file below.
SOURCE_ARGS=("PYTHON_IMAGE=$PYTHON_IMAGE_ARG" "PIP_INDEX_URL=" "PIP_EXTRA_INDEX_URL=$PLAIN_INDEXES"
             "PIP_FIND_LINKS=" "PIP_TRUSTED_HOST=")
for arg in "${SOURCE_ARGS[@]}"; do BUILD_ARGS+=(--build-arg "$arg"); done
[[ -n $PLAIN_INDEXES ]] && echo "extra package indexes (build arg): $PLAIN_INDEXES"
build_t0=$(date +%s)
previous=$(docker image inspect -f '{{.Id}}' "$JOB_IMAGE" 2>/dev/null || true)
docker build --progress=plain --network host "${BUILD_ARGS[@]}" "${SECRET_ARGS[@]}" \
  -t "$JOB_IMAGE" . >"$WORK/build-job.log" 2>&1 \
  || { tail -n 40 "$WORK/build-job.log" >&2; die "docker build failed (log $WORK/build-job.log)"; }
rm -rf "$SECRETS_DIR"
echo "built $JOB_IMAGE in $(($(date +%s) - build_t0))s, $(docker image inspect -f '{{.Size}}' "$JOB_IMAGE" | awk '{printf "%.2f GB", $1/1e9}')"
echo "steps from cache: $(grep -cE '^#[0-9]+ CACHED' "$WORK/build-job.log" || true)"
# The image a code change replaced is only a dangling tag over the same torch layers: drop it.
if [[ -n $previous && $previous != $(docker image inspect -f '{{.Id}}' "$JOB_IMAGE") ]]; then
  docker image rm "$previous" >/dev/null 2>&1 || true
fi

# ---------------------------------------------------------------------------------------------
step "compose build (build args from the env file)"
# The same build through docker-compose.yml's build.args, fed from the env file as a user's .env
# would: the dependency steps must come from the cache of the build above (same args, same cache
# keys; an arg that did not arrive would change them). Compose v1 cannot pass the build secrets;
# they are not part of the cache key. The code steps may rebuild: others may edit the tree meanwhile.
ACCESS_KEY="e2e-access-$(od -An -N6 -tx1 /dev/urandom | tr -d ' \n')"
SECRET_KEY="e2e-secret-$(od -An -N12 -tx1 /dev/urandom | tr -d ' \n')"
umask 077
cat >"$ENV_FILE" <<ENV
AWS_ACCESS_KEY_ID=$ACCESS_KEY
AWS_SECRET_ACCESS_KEY=$SECRET_KEY
AWS_REGION=us-east-1
SPEC=$SPEC
STORAGE_URI=$STORAGE_URI
S3_PORT=$S3_PORT
JOB_IMAGE=$JOB_IMAGE
$(printf '%s\n' "${SOURCE_ARGS[@]}")
ENV
umask 022
built=$(docker image inspect -f '{{.Id}}' "$JOB_IMAGE")
compose build job >"$WORK/build-compose.log" 2>&1 \
  || { tail -n 30 "$WORK/build-compose.log" >&2; die "compose build failed (log $WORK/build-compose.log)"; }
pip_steps=$(sed -n 's/^\(#[0-9]*\) \[ *[0-9]*\/[0-9]*\] RUN --mount=type=secret.*/\1/p' "$WORK/build-compose.log" | sort -u)
[[ -n $pip_steps ]] || die "compose build ran no pip step with the build secrets mounted (log $WORK/build-compose.log)"
for id in $pip_steps; do
  grep -qx "$id CACHED" "$WORK/build-compose.log" \
    || die "compose build reinstalled the dependencies (step $id): a build arg differs from docker build's (log $WORK/build-compose.log)"
done
echo "ok: compose build passed the build args and reused the cached dependency layers"
if [[ $built != $(docker image inspect -f '{{.Id}}' "$JOB_IMAGE") ]]; then
  docker image rm "$built" >/dev/null 2>&1 || true   # the tree changed in between: drop the untagged one
fi

# ---------------------------------------------------------------------------------------------
step "compose up (job runs $SPEC)"
# The env file (written above) holds fresh dummy credentials: finding them anywhere below is a leak.
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
JOB_PID1=$(docker inspect -f '{{json .Path}} {{json .Args}}' "$JOB_CID")
if [[ $JOB_PID1 == '"tini" ['*'"sweep"'* ]]; then
  echo "ok: PID 1 of the job is tini: $JOB_PID1"
else
  FAILS+=("the job's PID 1 is $JOB_PID1; expected tini running sweep")
fi

# KubeRay's Ray pods replace the entrypoint with `bash -lc 'ulimit ...; ray start ...'` and probe with
# wget; the cluster launcher runs `bash --login`. A login shell must find ray (Debian's /etc/profile
# resets PATH) and the tools.
if KUBERAY=$(docker run --rm --entrypoint /bin/bash "$JOB_IMAGE" -lc -- 'ray --version && command -v wget bash ssh rsync' 2>&1); then
  echo "ok: a login shell, as KubeRay and the launcher start it, finds $(head -n 1 <<<"$KUBERAY") and wget, ssh, rsync"
else
  FAILS+=("bash -lc in the image: $(tr '\n' ' ' <<<"$KUBERAY")")
fi

NET=$(docker inspect -f '{{range $k, $v := .NetworkSettings.Networks}}{{$k}} {{end}}' "$JOB_CID" | awk '{print $1}')
# The checker runs in the job image (boto3, PyYAML) on the compose network; the keys go in through
# the environment, not argv. It also reads every object and fails on one holding either key.
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

# ---------------------------------------------------------------------------------------------
step "canaries: S3 keys and the index token nowhere"
# Text an operator or a registry would see: logs, compose output, image history and config.
CANARIES="$WORK/canaries.txt"
( umask 077; printf '%s\n' "$ACCESS_KEY" "$SECRET_KEY" "$PIP_CANARY" >"$CANARIES" )
docker history --no-trunc "$JOB_IMAGE" >"$WORK/history.txt"
docker image inspect "$JOB_IMAGE" >"$WORK/image-inspect.json"
for f in "$WORK/history.txt" "$WORK/image-inspect.json" "$WORK/job.log" "$WORK/compose.log" "$WORK/build-job.log"; do
  if grep -qFf "$CANARIES" "$f"; then FAILS+=("a canary credential appears in $f"); fi
done
# Every file of the image's layers, and every file the job container wrote (Ray's /tmp/ray session
# logs included; /dev/shm is a tmpfs and goes with the container). With overlay2 the layers are
# folders on this disk: grep reads them in seconds, where `docker save`/`docker export` stream 7 GB
# through the daemon in minutes; with another storage driver those streams are searched instead.
leaks_in_dirs() {  # DIR...: the files whose content or name holds a canary
  { grep -rlaFf "$CANARIES" -- "$@" 2>/dev/null; find "$@" 2>/dev/null | grep -Ff "$CANARIES"; } | head -n 5 | tr '\n' ' ' || true
}
leaks_in_tar() {  # COMMAND...: the members of the tar stream it writes whose content holds a canary
  "$@" | python3 -c '
import sys, tarfile
canaries = [line.strip().encode() for line in open(sys.argv[1]) if line.strip()]
with tarfile.open(fileobj=sys.stdin.buffer, mode="r|") as tar:
    for member in tar:
        if any(c.decode() in member.name for c in canaries) or (
                member.isfile() and any(c in tar.extractfile(member).read() for c in canaries)):
            print(member.name)
' "$CANARIES" | head -n 5 | tr '\n' ' ' || true
}
[[ -n $(leaks_in_dirs "$ENV_FILE") ]] || die "the canary search does not even find the keys in $ENV_FILE"
if [[ $(docker info -f '{{.Driver}}') == overlay2 ]]; then
  image_dirs=$(docker image inspect -f '{{.GraphDriver.Data.LowerDir}}:{{.GraphDriver.Data.UpperDir}}' "$JOB_IMAGE")
  IFS=: read -r -a image_dirs <<<"$image_dirs"
  image_leaks=$(leaks_in_dirs "${image_dirs[@]}")
  container_leaks=$(leaks_in_dirs "$(docker inspect -f '{{.GraphDriver.Data.UpperDir}}' "$JOB_CID")")
else
  image_leaks=""
  if docker save "$JOB_IMAGE" | grep -aqFf "$CANARIES"; then image_leaks="(docker save | grep)"; fi
  container_leaks=$(leaks_in_tar docker export "$JOB_CID")
fi
[[ -z $image_leaks ]] || FAILS+=("a canary credential is in a layer of $JOB_IMAGE: $image_leaks")
[[ -z $container_leaks ]] || FAILS+=("a canary credential is in the job container's files: $container_leaks")
((${#FAILS[@]})) || echo "ok: no canary in the bucket, logs, compose output, image history, image config, image layers or the job container's files"

# ---------------------------------------------------------------------------------------------
step "results from the host: compose run --rm job results"
# The README's way to read results after the stack stopped: `compose run` starts s3 again through
# depends_on. SeaweedFS keeps objects in its volume; the moto stand-in keeps them in memory, so
# with the stand-in the leaderboard is read while s3 still runs, and the restart is checked apart.
NAME=$(sed -n 's/^name: *//p' "$SPEC")
results_cmd=(run --rm -T job results "$STORAGE_URI/$NAME")
if ((${#OVERRIDE[@]} == 0)); then
  compose stop >/dev/null 2>&1
fi
if compose "${results_cmd[@]}" >"$WORK/results.log" 2>&1 && grep -q '^leaderboard of ' "$WORK/results.log"; then
  echo "ok: '${COMPOSE[*]} ${results_cmd[*]}' printed the leaderboard:"
  sed -n '/^leaderboard of /,$p' "$WORK/results.log" | head -n 10
else
  FAILS+=("'${COMPOSE[*]} ${results_cmd[*]}' printed no leaderboard (log $WORK/results.log)")
fi
if ((${#OVERRIDE[@]})); then
  compose stop s3 >/dev/null 2>&1
  compose "${results_cmd[@]}" >"$WORK/results-restart.log" 2>&1 || true
  # The restarted stand-in is empty: reaching it means the one-line "no such bucket" answer.
  if [[ $(docker inspect -f '{{.State.Health.Status}}' "$(compose ps -q s3)") == healthy ]] \
     && grep -q '^error: s3://sweeps: no such bucket' "$WORK/results-restart.log"; then
    echo "ok: with s3 stopped, the same command started it again and reached it: $(grep -m1 '^error:' "$WORK/results-restart.log")"
  else
    FAILS+=("with s3 stopped, '${results_cmd[*]}' did not start and reach it (log $WORK/results-restart.log)")
  fi
fi

# ---------------------------------------------------------------------------------------------
step "docker stop: a clean stop of a running sweep"
# A longer smoke sweep; `docker stop -t 10` sends SIGTERM to tini, which hands it to the sweep driver
# alone. The driver stops its trials, saves the run and exits 143 (or 130) within the 10 s, saying
# `interrupted: run <id> saved; rerun the same command to resume`; a SIGKILL after 10 s is 137.
STOP_NAME="$PROJECT-stop"
docker rm -f "$STOP_NAME" >/dev/null 2>&1 || true
compose run -d -T --name "$STOP_NAME" job run "$SPEC" --set "storage.uri=$STORAGE_URI/stop-test" \
  --set optim.epochs=40 --set data.synthetic_train=20000 >/dev/null
for _ in $(seq 180); do
  docker logs "$STOP_NAME" 2>&1 | grep -q '\] epoch ' && break
  [[ $(docker inspect -f '{{.State.Running}}' "$STOP_NAME") == true ]] || break
  sleep 1
done
stop_t0=$(date +%s%N)
docker stop -t 10 "$STOP_NAME" >/dev/null
STOP_S=$(( ($(date +%s%N) - stop_t0) / 1000000 ))
STOP_RC=$(docker inspect -f '{{.State.ExitCode}}' "$STOP_NAME")
docker logs "$STOP_NAME" >"$WORK/stop.log" 2>&1
docker rm -f "$STOP_NAME" >/dev/null 2>&1 || true
echo "docker stop took ${STOP_S} ms; exit code $STOP_RC; last lines:"
tail -n 3 "$WORK/stop.log"
if ! grep -q '\] epoch ' "$WORK/stop.log"; then
  FAILS+=("the stop-test sweep printed no epoch line before it ended (log $WORK/stop.log)")
elif [[ $STOP_RC != 143 && $STOP_RC != 130 ]] || ! grep -q '^interrupted: run .* saved' "$WORK/stop.log"; then
  FAILS+=("docker stop: exit $STOP_RC after ${STOP_S} ms, expected 143 or 130 and 'interrupted: run <id> saved' (log $WORK/stop.log)")
else
  echo "ok: docker stop ended the sweep cleanly: exit $STOP_RC in ${STOP_S} ms"
fi

echo "-- job log (tail)"
tail -n 25 "$WORK/job.log"
if ((${#FAILS[@]})); then
  printf 'docker_e2e: FAIL: %s\n' "${FAILS[@]}" >&2
  exit 1
fi
if [[ -n ${E2E_KEEP:-} ]]; then
  echo "E2E_KEEP: stack left up; tear down with: ${COMPOSE[*]} -p $PROJECT ${OVERRIDE[*]} down -v"
fi
