"""`sweep submit` against a real two-node Ray cluster on loopback, results in a real S3 server.

Both nodes are `ray start` processes on this machine (2 CPUs each, token auth on), started with the
S3 settings in their environment, as a cluster's nodes would have them. Teardown kills exactly the
processes these `ray start` calls made (their process groups and descendants): `ray stop` would
kill every Ray process on the machine, other tests' included.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import boto3
import pytest
from conftest import FOREIGN_VARS, TEST_ENV, free_port

from job import catalog
from job.credentials import StorageSettings
from job.storage import Store

pytestmark = [pytest.mark.slow, pytest.mark.cluster]

REPO = Path(__file__).resolve().parents[1]
SMOKE = REPO / "specs" / "smoke.yaml"
BIN = Path(sys.executable).parent  # ray and sweep of this virtualenv
START_TIMEOUT_S = 90  # `ray start` on 2 busy cores takes 10-20 s
SWEEP_TIMEOUT_S = 240
# Three trials (the smoke spec's variants, no search) of 2 CPUs each: one fills a node, so the first
# two run on different nodes, and the sweep stays short on CI's 2 cores.
ONE_TRIAL_PER_NODE = ["search.space={}", "resources.cpus=2"]


@dataclass
class Cluster:
    address: str  # the dashboard: what `sweep submit --address` takes
    env: dict[str, str]  # RAY_AUTH_* for clients; the nodes also got the S3 variables
    head_group: int
    worker_group: int
    log: Path
    root: Path  # both nodes' Ray temp dirs: session folders, logs, runtime envs


def _ray_start(args: list[str], env: dict[str, str], log: Path) -> int:
    """Run `ray start ARGS` in a new process group, which its daemons keep; returns the group id."""
    with log.open("ab") as out:
        start = subprocess.Popen([str(BIN / "ray"), "start", *args], env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        assert start.wait(timeout=START_TIMEOUT_S) == 0, log.read_text()[-3000:]
    return start.pid


def _process_table() -> dict[int, tuple[int, int]]:
    """pid -> (parent pid, process group) of live processes (zombies left out), from /proc."""
    table = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            fields = stat[stat.rindex(")") + 2 :].split()
            if fields[0] != "Z":
                table[int(entry)] = (int(fields[1]), int(fields[2]))
    return table


def _started_by(groups: set[int]) -> set[int]:
    """Every live process in these process groups, plus their descendants (Ray workers set their own group)."""
    table = _process_table()
    pids = {pid for pid, (_, group) in table.items() if group in groups}
    while more := {pid for pid, (parent, _) in table.items() if parent in pids} - pids:
        pids |= more
    return pids


def _kill(groups: set[int], grace_s: float = 0.0) -> None:
    """SIGTERM (with a grace period), then SIGKILL, to exactly the processes these groups started."""
    pids = _started_by(groups)  # snapshot first: orphans get re-parented once their raylet dies
    for sig, wait_s in ([(signal.SIGTERM, grace_s)] if grace_s else []) + [(signal.SIGKILL, 10.0)]:
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline and pids & set(_process_table()):
            time.sleep(0.2)


def _api(cluster: Cluster, path: str, method: str = "GET") -> dict:
    headers = {"Authorization": f"Bearer {cluster.env['RAY_AUTH_TOKEN']}"}
    request = urllib.request.Request(f"{cluster.address}{path}", headers=headers, method=method)
    with urllib.request.urlopen(request, timeout=10) as reply:
        return json.load(reply)


def _stop_job(cluster: Cluster, job_id: str) -> None:
    """Stop a Ray job and wait until it has ended: the next submit of the same sweep would be refused."""
    _api(cluster, f"/api/jobs/{job_id}/stop", method="POST")
    deadline = time.monotonic() + 60
    while _api(cluster, f"/api/jobs/{job_id}")["status"] not in {"STOPPED", "SUCCEEDED", "FAILED"}:
        assert time.monotonic() < deadline, f"{job_id} did not stop"
        time.sleep(1)


def _nodes(cluster: Cluster) -> dict[str, str]:
    """node id -> "head" or "node2" (dead nodes included), from the dashboard's state API."""
    nodes = _api(cluster, "/api/v0/nodes")["data"]["result"]["result"]
    return {n["node_id"]: ("head" if n["is_head_node"] else "node2") for n in nodes}


def _alive_nodes(cluster: Cluster) -> int:
    nodes = _api(cluster, "/api/v0/nodes")["data"]["result"]["result"]
    return sum(node["state"] == "ALIVE" for node in nodes)


@pytest.fixture(scope="module")
def cluster(s3_server: str) -> Iterator[Cluster]:
    root = Path(tempfile.mkdtemp(prefix="ray-", dir="/tmp"))  # short: Ray's socket paths must fit 107 bytes
    token = secrets.token_hex(32)
    base = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "AWS_")) and k not in FOREIGN_VARS}
    clients = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token}
    nodes = {
        **base,
        **clients,
        "AWS_ENDPOINT_URL": s3_server,
        **TEST_ENV,
        "PATH": f"{BIN}:{base['PATH']}",
        "RAY_USAGE_STATS_ENABLED": "0",
        # GCS declares a silent node dead after 1 s x 3 checks instead of 3 s x 5: the node-loss test waits less.
        "RAY_health_check_period_ms": "1000",
        "RAY_health_check_failure_threshold": "3",
    }
    port, dashboard = free_port(), free_port()
    # One temp dir per node, as on separate machines: nodes sharing one would share (and garbage-
    # collect) each other's runtime-env folders, such as the job's working_dir.
    common = ["--node-ip-address=127.0.0.1", "--num-cpus=2", "--object-store-memory=200000000", "--disable-usage-stats"]
    log = root / "ray-start.log"
    groups: set[int] = set()
    try:
        head = _ray_start(
            [
                "--head",
                f"--port={port}",
                "--dashboard-host=127.0.0.1",
                f"--dashboard-port={dashboard}",
                f"--ray-client-server-port={free_port()}",
                f"--dashboard-agent-listen-port={free_port()}",
                f"--temp-dir={root / 'head'}",
                "--num-gpus=0",
                *common,
            ],
            nodes,
            log,
        )
        groups.add(head)
        worker = _ray_start(
            [
                # One logical GPU on this CPU machine: trials that ask for GPUs must land here, and run on its CPU.
                f"--address=127.0.0.1:{port}",
                f"--dashboard-agent-listen-port={free_port()}",
                f"--temp-dir={root / 'node2'}",
                "--num-gpus=1",
                *common,
            ],
            nodes,
            log,
        )
        groups.add(worker)
        found = Cluster(f"http://127.0.0.1:{dashboard}", clients, head, worker, log, root)
        deadline = time.monotonic() + START_TIMEOUT_S
        while _alive_nodes(found) < 2:
            assert time.monotonic() < deadline, "the second node never joined"
            time.sleep(1)
        yield found
    finally:
        _kill(groups, grace_s=5)
        shutil.rmtree(root, ignore_errors=True)


def _submit(cluster: Cluster, overrides: list[str]) -> subprocess.Popen[str]:
    sets = [arg for item in overrides for arg in ("--set", item)]
    command = [str(BIN / "sweep"), "submit", "--address", cluster.address, str(SMOKE), *sets]
    return subprocess.Popen(command, env={**os.environ, **cluster.env}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _manifest(bucket_uri: str, name: str = "smoke") -> dict:
    store = Store(bucket_uri, StorageSettings.from_env(os.environ))
    runs = catalog.runs(store, name)
    assert len(runs) == 1 and runs[0].status == "committed", runs
    return runs[0].manifest.to_dict()


def _reports_per_trial(bucket_uri: str) -> dict[str, list[tuple[int, str]]]:
    """trial id -> (epoch, node id) of every report, read from Tune's result.json files in S3."""
    bucket, _, prefix = bucket_uri.removeprefix("s3://").partition("/")
    s3 = boto3.client("s3", endpoint_url=os.environ["AWS_ENDPOINT_URL"])
    keys = [
        o["Key"]
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        for o in page.get("Contents", [])
        if o["Key"].endswith("/result.json")
    ]
    history: dict[str, list[tuple[int, str]]] = {}
    for key in keys:
        for line in s3.get_object(Bucket=bucket, Key=key)["Body"].read().decode().splitlines():
            row = json.loads(line)
            history.setdefault(row["trial_id"], []).append((row["epoch"], row["node"]))
    return history


def test_submit_runs_the_sweep_across_both_nodes(cluster: Cluster, bucket_uri: str) -> None:
    sweep = _submit(cluster, [f"storage.uri={bucket_uri}", *ONE_TRIAL_PER_NODE])
    output, _ = sweep.communicate(timeout=SWEEP_TIMEOUT_S)
    print(output)  # what a user of `sweep submit` sees (shown with -s)
    assert sweep.returncode == 0, output
    assert "SUCCEEDED" in output and "ray job logs --address" in output, output
    trials = _manifest(bucket_uri)["trials"]
    assert len(trials) == 3 and {t["status"] for t in trials} == {"TERMINATED"}, trials
    names = _nodes(cluster)
    per_node = Counter(names.get(t["node"], t["node"]) for t in trials)
    print(f"trials per node: {dict(per_node)}")
    assert set(per_node) == {"head", "node2"}, f"trials did not spread over both nodes: {per_node}"
    secret = TEST_ENV["AWS_SECRET_ACCESS_KEY"].encode()
    assert secret not in output.encode()
    bucket, _, prefix = bucket_uri.removeprefix("s3://").partition("/")
    s3 = boto3.client("s3", endpoint_url=os.environ["AWS_ENDPOINT_URL"])
    keys = [o["Key"] for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket) for o in page.get("Contents", [])]
    assert len(keys) > 20 and not [k for k in keys if secret in s3.get_object(Bucket=bucket, Key=k)["Body"].read()]
    files = [p for p in cluster.root.rglob("*") if p.is_file() and not p.is_symlink() and not p.name.endswith(".sock")]
    leaked = [str(p) for p in files if secret in _read_quietly(p)]
    assert len(files) > 50 and not leaked, f"the S3 secret is in {leaked}"


def _read_quietly(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError:  # a socket or a file a node removed meanwhile
        return b""


def test_submitted_job_carries_the_spec_and_no_secrets(cluster: Cluster, bucket_uri: str) -> None:
    command = [str(BIN / "sweep"), "submit", "--address", cluster.address, str(SMOKE), "--set", f"storage.uri={bucket_uri}"]
    env = {**os.environ, **cluster.env}
    done = subprocess.run([*command, "--no-wait"], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    job_id = done.stdout.strip()
    try:
        info = _api(cluster, f"/api/jobs/{job_id}")
        assert info["entrypoint"] == "sweep run smoke.yaml"
        assert set(info["runtime_env"]) == {"working_dir"}, info["runtime_env"]
        assert TEST_ENV["AWS_SECRET_ACCESS_KEY"] not in json.dumps(info)
        again = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
        assert again.returncode == 2 and "name: a sweep named smoke is still" in again.stderr, again.stderr
    finally:
        _stop_job(cluster, job_id)


def test_a_wrong_token_is_one_line(cluster: Cluster) -> None:
    env = {**os.environ, **cluster.env, "RAY_AUTH_TOKEN": "not-the-token"}
    done = subprocess.run(
        [str(BIN / "sweep"), "submit", "--address", cluster.address, str(SMOKE), "--set", "storage.uri=s3://b/p"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2
    assert done.stderr.strip() == (
        "error: --address: the cluster refused the token (Invalid authentication token). "
        "Set RAY_AUTH_MODE=token and the cluster's token in ~/.ray/auth_token or RAY_AUTH_TOKEN."
    ), done.stderr


def test_trials_that_ask_for_a_gpu_run_only_on_the_gpu_node(cluster: Cluster, bucket_uri: str) -> None:
    sweep = _submit(cluster, [f"storage.uri={bucket_uri}", "search.space={}", "resources.gpus=0.5"])
    output, _ = sweep.communicate(timeout=SWEEP_TIMEOUT_S)
    assert sweep.returncode == 0, output
    assert "running trials on the CPU" not in output  # a cluster with a GPU node keeps the GPU request
    trials = _manifest(bucket_uri)["trials"]
    names = _nodes(cluster)
    assert len(trials) == 3 and {names[t["node"]] for t in trials} == {"node2"}, trials


def test_on_a_cluster_without_a_fitting_gpu_node_the_trials_wait_and_say_so(cluster: Cluster, bucket_uri: str) -> None:
    """Joining a cluster, GPU trials wait for a GPU node (an autoscaler's to start), never fall back to the CPU."""
    command = [
        str(BIN / "sweep"),
        "submit",
        "--address",
        cluster.address,
        str(SMOKE),
        "--no-wait",
        "--set",
        f"storage.uri={bucket_uri}",
        "--set",
        "search.space={}",
        "--set",
        "resources.gpus=2",
    ]
    done = subprocess.run(command, env={**os.environ, **cluster.env}, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    job_id = done.stdout.strip()
    try:
        deadline, logs = time.monotonic() + 120, ""
        while "waiting: no node has 1 CPUs and 2 GPUs" not in logs:
            assert time.monotonic() < deadline, logs
            time.sleep(2)
            logs = _api(cluster, f"/api/jobs/{job_id}/logs")["logs"]
        time.sleep(5)  # long enough for a trial to have started, had the sweep fallen back to the CPU
        logs = _api(cluster, f"/api/jobs/{job_id}/logs")["logs"]
        assert "] start " not in logs and "running trials on the CPU" not in logs, logs
        assert "resources.gpu_fallback: true runs them on the CPU instead" in logs
    finally:
        _stop_job(cluster, job_id)


def test_losing_a_node_mid_sweep_still_finishes_every_trial(cluster: Cluster, bucket_uri: str) -> None:
    # Slow enough epochs (~1 s here at batch 16 on 20,000 images; the smoke spec's take 0.03 s) that the
    # trial on the second node is still mid-way when the kill lands, however late the log lines arrive:
    # it must resume from a checkpoint on the head, not finish before the node dies.
    epochs = 10
    slow = ["data.synthetic_train=20000", "optim.batch_size=16"]
    overrides = [f"storage.uri={bucket_uri}", f"optim.epochs={epochs}", "failures.max_retries=3", *slow, *ONE_TRIAL_PER_NODE]
    sweep = _submit(cluster, overrides)
    lines = []
    assert sweep.stdout is not None
    reporting: set[str] = set()
    for line in sweep.stdout:  # the first two trials run one per node: kill once both have reported
        lines.append(line)
        if line.startswith("[") and "] epoch " in line:
            reporting.add(line.split("] epoch ")[1].split()[0])
        if len(reporting) == 2:
            break
    _kill({cluster.worker_group})
    print(f"killed the second node after {len(lines)} lines of the job's log")
    assert not _started_by({cluster.worker_group}), "the second node's processes survived SIGKILL"
    rest, _ = sweep.communicate(timeout=SWEEP_TIMEOUT_S)
    output = "".join(lines) + rest
    assert sweep.returncode == 0, output
    trials = _manifest(bucket_uri)["trials"]
    assert {t["status"] for t in trials} == {"TERMINATED"} and {t["epochs"] for t in trials} == {epochs}, trials
    names = _nodes(cluster)
    reports = {t: [(epoch, names[n]) for epoch, n in rows] for t, rows in _reports_per_trial(bucket_uri).items()}
    moved = {t: rows for t, rows in reports.items() if {node for _, node in rows} == {"head", "node2"}}
    print(f"after the node loss: (epoch, node) of each trial's reports: {reports}")
    assert moved, f"no trial moved from the lost node to the head: {reports}"
    for trial, rows in moved.items():  # resumed from its checkpoint: the head went on from a later epoch
        first_on_head = min(epoch for epoch, node in rows if node == "head")
        assert first_on_head > 1, f"{trial} started over on the head instead of resuming: {rows}"
    assert {names[t["node"]] for t in trials} == {"head"}, "every trial must end on the surviving node"


def test_a_local_run_starts_its_own_ray_beside_a_ray_start_cluster(tmp_path: Path) -> None:
    """`ray start --head` left running on this machine (here with a logical GPU) and no RAY_ADDRESS:
    `ray.init()` alone would join it, while the GPU fallback and resource checks take the run for a
    local one. The run starts a Ray of its own, so a GPU request falls back to this machine's CPU."""
    from test_sweep import sweep_env

    ray_tmp = Path(tempfile.mkdtemp(prefix="rt-", dir="/tmp"))  # where ray.init() looks for a running cluster; short for Ray's sockets
    env = {**sweep_env(None, tmp_path), "RAY_TMPDIR": str(ray_tmp), "PATH": f"{BIN}:{os.environ['PATH']}"}
    args = ["--head", f"--port={free_port()}", "--node-ip-address=127.0.0.1", "--num-cpus=2", "--num-gpus=1", "--include-dashboard=false"]
    groups: set[int] = set()
    try:
        groups.add(_ray_start([*args, "--disable-usage-stats"], env, tmp_path / "ray-start.log"))
        assert list(ray_tmp.glob("ray/ray_current_cluster")), "ray start left no cluster address for ray.init() to find"
        sets = [f"storage.uri={tmp_path / 'out'}", "search.space={}", "resources.gpus=0.5"]
        command = [sys.executable, "-m", "job", "run", str(SMOKE), *[arg for item in sets for arg in ("--set", item)]]
        done = subprocess.run(command, env=env, cwd=REPO, capture_output=True, text=True, timeout=SWEEP_TIMEOUT_S)
    finally:
        _kill(groups, grace_s=5)
        shutil.rmtree(ray_tmp, ignore_errors=True)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "no GPU in the Ray cluster: running trials on the CPU (resources.gpus 0.5 -> 0)" in done.stdout, done.stdout[-3000:]
