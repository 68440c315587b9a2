#!/usr/bin/env bash
# `make gpu-wheels`: fills .whl/ (ignored) with the wheels `sweep run` needs on the lent GPU machine and
# its image lacks, for CPython 3.12 on manylinux x86_64; scripts/gpu_check.sh installs them there into
# /tmp/site. That machine has no network, and what travels to it is at most 64 MiB with the working tree.
#
# What: the pinned ray[tune] and pyproject's runtime dependencies, resolved for cp312 by pip, less what the
# GPU image already holds (torch, numpy, pandas, pyarrow, matplotlib, pyyaml, requests, ... : ON_IMAGE
# below, from that image's package list). ray[default] (dashboard, metrics agent) is left out: a
# single-node `sweep run` does not need it.
# Trimmed, each still a valid wheel (entries and RECORD rewritten):
#   ray       ray/jars/ (Java workers, ~31 MiB). The dashboard's web UI stays: where ray[default]'s
#             packages are importable, Ray serves it and fails to start without it
#   botocore  botocore/data/ down to s3 and sts plus the endpoint and retry tables: the other AWS
#             services' models (~15 MiB) are never loaded by job/storage.py
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python3)}
DEST=${DEST:-.whl}
PYVER=${PYVER:-3.12}  # the GPU image's python; another only to test the set on a machine without that one
LIMIT_MIB=56 # the tree (~1 MiB) and the wheels must stay under the 64 MiB that travels, with room to spare
# Installed on the GPU image (its `pip list`); typing_extensions is carried anyway: pydantic wants a recent one.
ON_IMAGE="numpy pandas pyarrow aiohttp matplotlib contourpy cycler fonttools kiwisolver pillow pyparsing pyyaml requests
  certifi charset-normalizer idna urllib3 filelock click msgpack packaging protobuf fsspec attrs python-dateutil six
  aiosignal frozenlist multidict yarl propcache aiohappyeyeballs grpcio prometheus-client psutil"
PLATFORM=(--only-binary=:all: --python-version "$PYVER" --implementation cp --platform manylinux_2_28_x86_64
  --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64)

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
# pyproject's dependencies, less torch/torchvision (on the image) and Ray's [default] extra
mapfile -t REQS < <("$PYTHON" - <<'EOF'
import re, tomllib
for dep in tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]:
    if not re.match(r"torch(vision)?\b", dep):
        print(re.sub(r"^ray\[[^]]*\]", "ray[tune]", dep))
EOF
)
echo "resolving for python $PYVER manylinux x86_64: ${REQS[*]}"
"$PYTHON" -m pip install -q --dry-run --ignore-installed --report "$tmp/report.json" --target "$tmp/target" "${PLATFORM[@]}" "${REQS[@]}"
mapfile -t PINS < <(ON_IMAGE="$ON_IMAGE" "$PYTHON" - "$tmp/report.json" <<'EOF'
import json, os, re, sys
norm = lambda name: re.sub(r"[-_.]+", "-", name).lower()
on_image = {norm(n) for n in os.environ["ON_IMAGE"].split()}
pins = {f"{i['metadata']['name']}=={i['metadata']['version']}": norm(i["metadata"]["name"]) in on_image for i in json.load(open(sys.argv[1]))["install"]}
print("on the image, not carried:", " ".join(pin for pin, there in pins.items() if there), file=sys.stderr)
print("\n".join(pin for pin, there in pins.items() if not there))
EOF
)
echo "carried: ${PINS[*]}"
rm -rf "$DEST"
mkdir -p "$DEST"
"$PYTHON" -m pip download -q --no-deps -d "$DEST" "${PLATFORM[@]}" "${PINS[@]}"

# Drop the trimmed entries and their RECORD lines; every other entry is copied as it was.
"$PYTHON" - "$DEST" <<'EOF'
import glob, sys, zipfile
from pathlib import Path

DROPPED = {  # wheel name prefix -> which of its files go
    "ray-": lambda name: name.startswith("ray/jars/"),
    "botocore-": lambda name: name.startswith("botocore/data/") and name.count("/") > 2 and name.split("/")[2] not in ("s3", "sts"),
}
for prefix, dropped in DROPPED.items():
    for path in glob.glob(f"{sys.argv[1]}/{prefix}[0-9]*.whl"):
        src, out = Path(path), Path(path + ".part")
        with zipfile.ZipFile(src) as zin, zipfile.ZipFile(out, "w") as zout:
            gone = {i.filename for i in zin.infolist() if dropped(i.filename)}
            for info in zin.infolist():
                if info.filename in gone:
                    continue
                data = zin.read(info)
                if info.filename.endswith(".dist-info/RECORD"):
                    lines = data.decode().splitlines(keepends=True)
                    data = "".join(line for line in lines if line.split(",", 1)[0] not in gone).encode()
                zout.writestr(info, data)  # the ZipInfo keeps compression and mode: raylet and gcs_server stay executable
        print(f"trimmed {src.name}: {len(gone)} files, {src.stat().st_size / 2**20:.1f} -> {out.stat().st_size / 2**20:.1f} MiB")
        out.replace(src)
EOF
ls -l "$DEST"
total=$(du -sm --apparent-size "$DEST" | cut -f1)
echo "$DEST: $(ls "$DEST" | wc -l) wheels, ${total} MiB"
if [ "$total" -gt "$LIMIT_MIB" ]; then
  echo "error: $DEST is ${total} MiB, over ${LIMIT_MIB} MiB: it would not travel with the tree. Trim more" >&2
  exit 1
fi
