#!/usr/bin/env bash
# Builds a local stand-in for python:3.11-slim-bookworm when no registry is reachable: Debian
# bookworm from debootstrap with Debian's python3.11, venv and pip, tagged with the official name.
# It carries this machine's CA bundle and a pip.conf pointing at it, because HTTPS to the package
# index passes a TLS-intercepting proxy here. Usage: python-base.sh TAG WORKDIR (as root).
set -euo pipefail

tag=${1:?usage: python-base.sh TAG WORKDIR}
work=${2:?usage: python-base.sh TAG WORKDIR}
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
ca_bundle=${HOST_CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}
rootfs="$work/python-base-rootfs"

rm -rf "$rootfs"
mkdir -p "$work"
debootstrap --variant=minbase \
  --include=python3.11,python3-venv,python3-pip,ca-certificates \
  bookworm "$rootfs" "$mirror" >"$work/debootstrap.log" 2>&1 \
  || { tail -n 30 "$work/debootstrap.log" >&2; exit 1; }

# The names the official image provides (python, pip) and its behaviour of letting pip install
# into the system interpreter (Debian marks it externally managed; the official image does not).
ln -sf /usr/bin/python3 "$rootfs/usr/local/bin/python"
ln -sf /usr/bin/pip3 "$rootfs/usr/local/bin/pip"
rm -f "$rootfs"/usr/lib/python3.11/EXTERNALLY-MANAGED

cp "$ca_bundle" "$rootfs/etc/ssl/certs/ca-certificates.crt"
printf '[global]\ncert = /etc/ssl/certs/ca-certificates.crt\n' >"$rootfs/etc/pip.conf"

# Docker supplies these at run time; the apt caches are dead weight.
rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/* \
       "$rootfs"/etc/resolv.conf "$rootfs"/etc/hostname

tar --numeric-owner --exclude='./dev/*' --exclude='./proc/*' --exclude='./sys/*' -C "$rootfs" -c . \
  | docker import \
      --change 'ENV LANG=C.UTF-8' \
      --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
      --change 'CMD ["python3"]' \
      - "$tag" >/dev/null
rm -rf "$rootfs"
echo "built stand-in $tag ($(docker image inspect -f '{{.Size}}' "$tag" | awk '{printf "%.0f MB", $1/1e6}'))"
