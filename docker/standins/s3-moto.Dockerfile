# Stand-in for the `s3` service (SeaweedFS) where Docker Hub is unreachable: moto's standalone
# S3 server, the same S3-protocol server the unit tests run on loopback. Built FROM the local
# python stand-in; used only through docker/compose.e2e.yml. It accepts any credentials.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm
FROM ${PYTHON_IMAGE}
ARG MOTO_VERSION=5.2.5
RUN python -m venv /opt/moto \
 && /opt/moto/bin/pip install --no-cache-dir --disable-pip-version-check "moto[server]==${MOTO_VERSION}"
EXPOSE 8333
ENTRYPOINT ["/opt/moto/bin/moto_server"]
CMD ["-H", "0.0.0.0", "-p", "8333"]
