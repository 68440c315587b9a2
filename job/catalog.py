"""A sweep's runs in storage, through a `Store`: the commit (report, then the manifest that vouches for it,
then latest.json) and reading runs back (listing, manifests, verification, the verified best checkpoint).
Must not import an S3 client or torch: bytes move through the Store."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from job.results import FileEntry, Manifest
from job.spec import SpecError
from job.storage import Store, digest_file

MANIFEST = "manifest.json"
LATEST = "latest.json"
BEST = "report/best"  # the best trial's checkpoint, in the run's folder


@dataclass(frozen=True)
class RunInfo:
    """A run in a listing: committed (its manifest read), incomplete (no manifest) or corrupt (and why)."""

    run_id: str
    status: Literal["committed", "incomplete", "corrupt"]
    manifest: Manifest | None = None
    problem: str = ""


def split_sweep_uri(uri: str) -> tuple[str, str]:
    """`<storage.uri>/<name>` -> (`<storage.uri>`, `<name>`), for s3:// URIs and local folders."""
    root, _, name = uri.rstrip("/").rpartition("/")
    if not name or root == "s3:/":
        raise SpecError([f"{uri}: no sweep name at the end. Use <storage.uri>/<spec name>, e.g. s3://sweeps/cifar10/cifar10-mlp-variants"])
    return root or ("/" if uri.startswith("/") else "."), name


def is_committed(store: Store, name: str, run_id: str) -> bool:
    return store.read_optional(f"{name}/{run_id}/report/{MANIFEST}") is not None


def read_manifest(store: Store, name: str, run_id: str) -> Manifest | None:
    """None for a run without one (incomplete); a damaged one is a one-line `SpecError` naming it."""
    rel = f"{name}/{run_id}/report/{MANIFEST}"
    data = store.read_optional(rel)
    return None if data is None else _parse_manifest(store, rel, data)


def latest(store: Store, name: str) -> str | None:
    """The run latest.json points at (the newest that finished with results); None when there is none."""
    rel = f"{name}/{LATEST}"
    data = store.read_optional(rel)
    fix = "Pick a run with --run; the next run with results rewrites it"
    return None if data is None else _parse(_pointed_run_id, data, store.url(rel), fix)


def runs(store: Store, name: str) -> list[RunInfo]:
    """One row per run, oldest first; a run without a manifest is incomplete and never read further."""
    return [_run_info(store, name, run_id) for run_id in store.run_ids(name)]


def _run_info(store: Store, name: str, run_id: str) -> RunInfo:
    rel = f"{name}/{run_id}/report/{MANIFEST}"
    data = store.read_optional(rel)  # a storage failure is not a corrupt run: it propagates
    if data is None:
        return RunInfo(run_id, "incomplete")
    try:
        return RunInfo(run_id, "committed", _parse_manifest(store, rel, data))
    except SpecError as err:
        return RunInfo(run_id, "corrupt", problem=err.problems[0])


def _parse_manifest(store: Store, rel: str, data: bytes) -> Manifest:
    return _parse(Manifest.from_dict, data, store.url(rel), "The run is corrupt or was cut short: rerun the sweep, or pick another --run")


def verify_run(store: Store, name: str, run_id: str, manifest: Manifest) -> list[str]:
    """Every file the manifest lists, read back and hashed: one line per file that is missing or differs."""
    problems = []
    for entry in manifest.files:
        rel = f"{name}/{run_id}/{entry.path}"
        if wrong := entry.mismatch(*store.digest(rel)):
            problems.append(f"{store.url(rel)}: {wrong}")
    return problems


def download_best(store: Store, name: str, run_id: str, manifest: Manifest, dest: Path) -> list[Path]:
    """The run's best checkpoint folder into `dest`, every file checked against the manifest: one that
    differs, is missing or is not listed is refused, and the files downloaded are removed."""
    got = store.download(f"{name}/{run_id}/{BEST}", dest)
    found = {f"{BEST}/{path.relative_to(dest).as_posix()}": path for path in got}
    problems = []
    for rel, entry in manifest.entries(BEST).items():
        local = found.pop(rel, None)
        if wrong := entry.mismatch(*(digest_file(local) if local else (None, ""))):
            problems.append(f"{store.url(f'{name}/{run_id}/{rel}')}: {wrong}")
    problems += [
        f"{store.url(f'{name}/{run_id}/{rel}')}: not listed in the manifest (got {path.stat().st_size} bytes)" for rel, path in sorted(found.items())
    ]
    if problems:
        for path in got:
            path.unlink(missing_ok=True)
        raise SpecError(
            [f"{line}. Refused, and removed from {dest}: the run changed after it committed; rerun it or pick another --run" for line in problems]
        )
    return got


def commit_run(store: Store, name: str, run_id: str, report_dir: Path, manifest: Manifest) -> Manifest:
    """Upload the report, then the manifest (last: it vouches for every file), then latest.json, which
    moves only for a run with results (`manifest.best_trial`): a run whose every trial failed keeps it."""
    report = f"{name}/{run_id}/report"
    files = {p.relative_to(report_dir).as_posix(): p for p in sorted(report_dir.rglob("*")) if p.is_file()}
    assert MANIFEST not in files, f"{report_dir} already holds a {MANIFEST}; commit_run writes it"
    store.delete([f"{report}/{MANIFEST}"])  # uncommit first: an old manifest must not vouch for new files
    store.delete(sorted(set(store.files(report)) - {f"{report}/{rel}" for rel in files}))
    entries = []
    for rel, path in files.items():
        entries.append(FileEntry(f"report/{rel}", *digest_file(path)))
        store.upload(f"{report}/{rel}", path)
    now = datetime.now(UTC).isoformat(timespec="seconds")
    written = replace(manifest, files=tuple(entries), committed_at=now)
    store.write_bytes(f"{report}/{MANIFEST}", json.dumps(written.to_dict(), indent=2).encode())
    if written.best_trial is not None:
        _point_latest(store, name, run_id, written)
    return written


def _point_latest(store: Store, name: str, run_id: str, manifest: Manifest) -> None:
    try:
        if (latest(store, name) or "") > run_id:
            return  # an older run finished late (a resume): latest keeps pointing at the newest
    except SpecError:
        pass  # a damaged pointer: ours to rewrite
    pointer = {
        "run_id": run_id,
        "manifest": f"{run_id}/report/{MANIFEST}",
        "committed_at": manifest.committed_at,
        "metric": manifest.metric,
        "best_trial": manifest.best_trial,
    }
    store.write_bytes(f"{name}/{LATEST}", json.dumps(pointer, indent=2).encode())


def _parse(build: Callable[[Any], Any], data: bytes, where: str, fix: str) -> Any:
    """JSON we wrote, read back: garbage, truncated, empty or of the wrong shape is one line naming the object."""
    try:
        return build(json.loads(data))
    except json.JSONDecodeError as err:
        problem = f"not JSON ({err.msg} at byte {err.pos})"
    except ValueError as err:  # not UTF-8, or the wrong shape (`build` names the field)
        problem = f"not valid ({' '.join(str(err).split())[:200]})"
    raise SpecError([f"{where}: {problem} (got {len(data)} bytes). {fix}"])


def _pointed_run_id(pointer: Any) -> str:
    run_id = pointer.get("run_id") if isinstance(pointer, dict) else None
    if not isinstance(run_id, str) or not run_id.strip(".") or "/" in run_id:
        raise ValueError(f"run_id is not a run folder's name (got {run_id!r})")
    return run_id
