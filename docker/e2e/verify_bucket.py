"""Checks what a `sweep run` left in S3, for scripts/docker_e2e.sh.

Runs inside the job image (it has boto3 and PyYAML) on the compose network, with the same AWS_*
variables as the job. Usage: python verify_bucket.py SPEC_FILE STORAGE_URI. Prints a bucket
listing; exits 1 with one line per problem when the run's contract is broken, or when any object
holds the access key or the secret key the job ran with (the e2e test makes them unique canaries).
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from urllib.parse import urlparse

import boto3
import yaml
from botocore.exceptions import ClientError


def main(spec_file: str, storage_uri: str) -> int:
    name = yaml.safe_load(open(spec_file))["name"]
    uri = urlparse(storage_uri)
    bucket, prefix = uri.netloc, uri.path.strip("/")
    sweep = f"{prefix}/{name}" if prefix else name
    s3 = boto3.client("s3")

    try:
        objects = {o["Key"]: o["Size"] for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket) for o in page.get("Contents", [])}
    except ClientError as err:  # e.g. NoSuchBucket: the job never wrote anything
        return fail([f"s3://{bucket}: cannot list ({err.response['Error']['Code']})"])
    print(f"bucket listing: s3://{bucket} ({len(objects)} objects)")
    for key in sorted(objects):
        print(f"  {objects[key]:>10}  {key}")

    leaks = find_credentials(s3, bucket, objects)
    if not leaks:
        print(f"ok: none of the {len(objects)} objects holds the access key or the secret key")

    latest_key = f"{sweep}/latest.json"
    if latest_key not in objects:
        return fail(leaks + [f"{latest_key}: missing; the run was never committed"])
    run_id = json.loads(read(s3, bucket, latest_key))["run_id"]
    run = f"{sweep}/{run_id}"
    manifest_key = next((k for k in (f"{run}/report/manifest.json", f"{run}/manifest.json") if k in objects), None)
    if manifest_key is None:
        return fail(leaks + [f"{run}/report/manifest.json: missing for run_id {run_id} named by latest.json"])
    manifest = json.loads(read(s3, bucket, manifest_key))

    files = manifest.get("files") or []
    problems = [] if files else [f"{manifest_key}: lists no files"]
    for entry in files:
        key = f"{run}/{entry['path']}"
        if key not in objects:
            problems.append(f"{key}: listed in the manifest but not in the bucket")
        elif objects[key] != entry["size"]:
            problems.append(f"{key}: size {objects[key]} in the bucket, {entry['size']} in the manifest")
        elif entry.get("sha256") and hashlib.sha256(read(s3, bucket, key)).hexdigest() != entry["sha256"]:
            problems.append(f"{key}: sha256 differs from the manifest")
    if problems or leaks:
        return fail(leaks + problems)
    print(f"ok: run {run_id}: {manifest_key} lists {len(files)} files, all present with their size and sha256")
    return 0


def find_credentials(s3, bucket: str, objects: dict[str, int]) -> list[str]:
    """One line per object that contains the job's access key or secret key, in plain bytes."""
    canaries = {name: os.environ[name].encode() for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")}
    leaks = []
    for key in sorted(objects):
        data = read(s3, bucket, key)
        leaks += [f"s3://{bucket}/{key}: holds the value of {name}" for name, value in canaries.items() if value in data]
    return leaks


def read(s3, bucket: str, key: str) -> bytes:
    return s3.get_object(Bucket=bucket, Key=key)["Body"].read()


def fail(problems: list[str]) -> int:
    for line in problems:
        print(f"FAIL: {line}")
    return 1


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
