# sweep-job: one image for laptops (CPU) and GPU clusters (KubeRay, the Ray cluster launcher).
#
# torch comes from the package index: its default Linux wheel is a CUDA build that uses the GPU on
# NVIDIA hosts (through the NVIDIA container toolkit) and runs on the CPU everywhere else.
# Layers go from slow-changing to fast-changing: OS packages, torch, the other dependencies (read
# from pyproject.toml alone), and only then the code, so editing job/ does not reinstall torch.
#
# Needs BuildKit (RUN --mount for the build secrets below): the default builder of Docker >= 23 and
# Compose v2; on Docker 20.10 (Debian's docker.io) set DOCKER_BUILDKIT=1. No `# syntax=` line on
# purpose: it would fetch the Dockerfile frontend from Docker Hub, and the built-in one suffices.
#
# Build:           docker build -t sweep-job .
# A mirror:        docker build --build-arg PIP_INDEX_URL=https://mirror.example/simple -t sweep-job .
# Local wheels:    docker build --network host --build-arg PIP_FIND_LINKS=http://127.0.0.1:8000/ -t sweep-job .
# A mirror with credentials in its URL (https://user:token@host/simple) or a whole pip.conf: pass it
# as a build secret, never as --build-arg (build args show in `docker history`; secrets are mounted
# for the RUN alone and stored in no layer):
#   PIP_INDEX_URL=https://user:token@mirror.example/simple \
#     docker build --secret id=pip_index_url,env=PIP_INDEX_URL -t sweep-job .
#   docker build --secret id=pip_conf,src="$HOME/.config/pip/pip.conf" -t sweep-job .
# Credentials for S3 are never build inputs: they come from the environment at run time.

# Pinned by tag and digest (the digest of the multi-arch index, so it works on amd64 and arm64).
# To bump: docker buildx imagetools inspect python:3.11-slim-bookworm   (copy the top "Digest:")
# PYTHON_IMAGE overrides it: a registry mirror (mirror.example/library/python:3.11-slim-bookworm),
# or the local stand-in of the e2e test (scripts/docker_e2e.sh), which cannot carry Docker Hub's
# digest. An empty PYTHON_IMAGE (what Compose v1 passes for an unset variable) means the default.
ARG PYTHON_IMAGE_DEFAULT=python:3.11-slim-bookworm@sha256:2e32f7d302adc1c37428355c1e646897c0c53f4fd60b6a551245fb90ee129f91
ARG PYTHON_IMAGE=
FROM ${PYTHON_IMAGE:-$PYTHON_IMAGE_DEFAULT}

# bash and wget: KubeRay's default readiness/liveness probes exec wget in the Ray container, and
# Ray's own start scripts use bash; an image without them crash-loops (kuberay issues 2063, 3837).
# openssh-client and rsync: the cluster launcher's autoscaler (deploy/aws) reaches workers with them.
# gcc and libc6-dev: Triton, behind torch.compile on CUDA (optim.compile), builds its launcher with them.
# tini: PID 1 of the container under Compose, `docker run` and Kubernetes alike (see ENTRYPOINT).
RUN apt-get update \
 && apt-get install -y --no-install-recommends bash wget ca-certificates openssh-client rsync gcc libc6-dev tini \
 && rm -rf /var/lib/apt/lists/*

# uid 1000: the usual first user on laptops, so bind-mounted result folders stay readable.
RUN useradd --create-home --uid 1000 --user-group --shell /bin/bash sweep \
 && mkdir -p /home/sweep/.cache/sweep-job \
 && chown -R sweep:sweep /home/sweep

ENV VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    MPLBACKEND=Agg \
    RAY_USAGE_STATS_ENABLED=0

# Package sources for offline or mirrored builds, without credentials (build args are recorded in
# `docker history`): pip reads these variables, space-separated lists; empty ones it ignores, so
# the default is the public index. PIP_TRUSTED_HOST: a plain-http mirror that is not on loopback.
# They are part of the cache key of every layer below: keep them stable between builds (fixed host
# and port) to reuse the torch layer. Secret sources are build secrets (see the top): the two RUNs
# that reach an index mount them, if given, at /run/secrets/, for that RUN only; pip reads
# PIP_CONFIG_FILE after /etc/pip.conf, and PIP_INDEX_URL over both.
ARG PIP_INDEX_URL=""
ARG PIP_EXTRA_INDEX_URL=""
ARG PIP_FIND_LINKS=""
ARG PIP_TRUSTED_HOST=""
ARG TORCH_VERSION=2.14.1
ARG TORCHVISION_VERSION=0.29.1

# setuptools>=68 is pyproject's build backend; installing it here lets the code layer build offline.
RUN --mount=type=secret,id=pip_conf --mount=type=secret,id=pip_index_url \
    if [ -s /run/secrets/pip_conf ]; then export PIP_CONFIG_FILE=/run/secrets/pip_conf; fi \
 && if [ -s /run/secrets/pip_index_url ]; then PIP_INDEX_URL=$(cat /run/secrets/pip_index_url); export PIP_INDEX_URL; fi \
 && python -m venv "$VIRTUAL_ENV" \
 && pip install "setuptools>=68" wheel \
 && pip install "torch==${TORCH_VERSION}" "torchvision==${TORCHVISION_VERSION}"

# The rest of the dependencies, from pyproject.toml alone; torch stays at the version above.
COPY pyproject.toml /tmp/deps/pyproject.toml
RUN --mount=type=secret,id=pip_conf --mount=type=secret,id=pip_index_url \
    if [ -s /run/secrets/pip_conf ]; then export PIP_CONFIG_FILE=/run/secrets/pip_conf; fi \
 && if [ -s /run/secrets/pip_index_url ]; then PIP_INDEX_URL=$(cat /run/secrets/pip_index_url); export PIP_INDEX_URL; fi \
 && python -c "import tomllib; deps = tomllib.load(open('/tmp/deps/pyproject.toml', 'rb'))['project']['dependencies']; open('/tmp/deps/requirements.txt', 'w').write('\n'.join(deps) + '\n')" \
 && printf 'torch==%s\ntorchvision==%s\n' "$TORCH_VERSION" "$TORCHVISION_VERSION" > /tmp/deps/constraints.txt \
 && pip install -r /tmp/deps/requirements.txt -c /tmp/deps/constraints.txt \
 && rm -rf /tmp/deps

# The code: a change here rebuilds only these layers (seconds, no network).
WORKDIR /app
COPY pyproject.toml README.m[d] ./
COPY job/ job/
COPY specs/ specs/
RUN pip install --no-deps --no-build-isolation . \
 && rm -rf build ./*.egg-info \
 && python -c "import job"

# Login shells reset PATH in Debian's /etc/profile, dropping the virtualenv: KubeRay starts Ray pods
# with `bash -lc 'ray start ...'` and the cluster launcher runs `bash --login -c -i`, so without this
# neither finds `ray`. profile.d puts it back for every login shell.
RUN mkdir -p /etc/profile.d \
 && printf 'export PATH="%s/bin:$PATH"\n' "$VIRTUAL_ENV" > /etc/profile.d/sweep-job-venv.sh

USER sweep
ENV HOME=/home/sweep
# The dataset cache (data.root defaults to ~/.cache/sweep-job) is a plain folder owned by sweep, so
# a named volume mounted there starts with the right owner; no VOLUME line, which would leave an
# anonymous volume behind after every `docker run`.

# tini is PID 1 and runs `sweep` as its only child: it reaps the orphaned processes Ray leaves
# (raylets, workers) and passes `docker stop`'s SIGTERM (and Ctrl-C) to the sweep driver alone, not
# to the process group (no -g): the driver stops its trials itself, saves the run and exits 143.
# -s (subreaper) keeps the reaping when something else is PID 1 (`docker run --init`, a pod with a
# shared process namespace) instead of a warning. Kubernetes `command:` and `docker run
# --entrypoint` replace this line (KubeRay's Ray pods do: they run `ray start`, not the sweep);
# Kubernetes `args:` and `docker run IMAGE ARGS` keep it.
ENTRYPOINT ["tini", "-s", "--", "sweep"]
CMD ["run", "specs/cifar10.yaml"]
