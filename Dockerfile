# sweep-job: one image for laptops (CPU) and GPU clusters (KubeRay, the Ray cluster launcher).
#
# torch comes from the package index: its default Linux wheel is a CUDA build that uses the GPU on
# NVIDIA hosts (through the NVIDIA container toolkit) and runs on the CPU everywhere else.
# Layers go from slow-changing to fast-changing: OS packages, torch, the other dependencies (read
# from pyproject.toml alone), and only then the code, so editing job/ does not reinstall torch.
#
# Build:        docker build -t sweep-job .
# Local wheels: docker build --network host --build-arg PIP_FIND_LINKS=http://127.0.0.1:8000/ -t sweep-job .
# Credentials are never build inputs: S3 settings come from the environment at run time.

# Pinned by tag and digest (the digest of the multi-arch index, so it works on amd64 and arm64).
# To bump: docker buildx imagetools inspect python:3.11-slim-bookworm   (copy the top "Digest:")
# The e2e test (scripts/docker_e2e.sh) builds a local stand-in tagged python:3.11-slim-bookworm
# because no registry is reachable there; a stand-in cannot carry Docker Hub's digest, so the test
# passes --build-arg PYTHON_IMAGE=python:3.11-slim-bookworm.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm@sha256:2e32f7d302adc1c37428355c1e646897c0c53f4fd60b6a551245fb90ee129f91
FROM ${PYTHON_IMAGE}

# bash and wget: KubeRay's default readiness/liveness probes exec wget in the Ray container, and
# Ray's own start scripts use bash; an image without them crash-loops (kuberay issues 2063, 3837).
# openssh-client and rsync: the cluster launcher's autoscaler (deploy/aws) reaches workers with them.
# gcc and libc6-dev: Triton, behind torch.compile on CUDA (optim.compile), builds its launcher with them.
RUN apt-get update \
 && apt-get install -y --no-install-recommends bash wget ca-certificates openssh-client rsync gcc libc6-dev \
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

# Extra package sources for offline or mirrored builds (pip reads these as space-separated lists;
# empty means the public index only). Part of the cache key of every layer below, so keep them
# stable between builds (fixed host and port) to reuse the torch layer.
ARG PIP_FIND_LINKS=""
ARG PIP_EXTRA_INDEX_URL=""
ARG TORCH_VERSION=2.14.1
ARG TORCHVISION_VERSION=0.29.1

# setuptools>=68 is pyproject's build backend; installing it here lets the code layer build offline.
RUN python -m venv "$VIRTUAL_ENV" \
 && pip install "setuptools>=68" wheel \
 && pip install "torch==${TORCH_VERSION}" "torchvision==${TORCHVISION_VERSION}"

# The rest of the dependencies, from pyproject.toml alone; torch stays at the version above.
COPY pyproject.toml /tmp/deps/pyproject.toml
RUN python -c "import tomllib; deps = tomllib.load(open('/tmp/deps/pyproject.toml', 'rb'))['project']['dependencies']; open('/tmp/deps/requirements.txt', 'w').write('\n'.join(deps) + '\n')" \
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

USER sweep
ENV HOME=/home/sweep
# The dataset cache (data.root defaults to ~/.cache/sweep-job) is a plain folder owned by sweep, so
# a named volume mounted there starts with the right owner; no VOLUME line, which would leave an
# anonymous volume behind after every `docker run`.

ENTRYPOINT ["sweep"]
CMD ["run", "specs/cifar10.yaml"]
