"""The `sweep` command: validate, schema, train, run, submit, results; exit codes.

The only module that reads argv, spec files and the environment. Imported by nothing but
`job.__main__` and the console script.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

from job.results import METRIC_MODES, Regression, find_regression
from job.spec import JobSpec, SpecError, TrialSpec, UserError, json_schema, load_spec, resolve_trial

if TYPE_CHECKING:  # imported where used: `sweep validate` must not load boto3 and pyarrow
    from job import catalog

EXIT_OK, EXIT_FAILED, EXIT_USER, EXIT_WORSE = 0, 1, 2, 3  # 3: `results --fail-if-worse` found a regression


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sweep", description="Ray Tune sweeps of model variants, results in S3-compatible storage.")
    verbs = parser.add_subparsers(dest="verb", required=True, metavar="VERB")

    def with_spec(name: str, help: str, optional: bool = False) -> argparse.ArgumentParser:
        verb = verbs.add_parser(name, help=help, description=help)
        verb.add_argument("spec", nargs="?" if optional else None, help="job spec (YAML)")
        verb.add_argument(
            "--set",
            dest="overrides",
            action="append",
            default=[],
            metavar="PATH=VALUE",
            help="override a spec field, e.g. --set optim.epochs=3 (repeatable)",
        )
        return verb

    with_spec("validate", "check a spec and summarise its trials")
    verbs.add_parser("schema", help="print the spec's JSON Schema")
    train = with_spec("train", "run one trial in plain PyTorch (no Ray needed)", optional=True)
    train.add_argument("--variant", help="variant name from the spec (default: the first)")
    train.add_argument("--checkpoint", type=Path, metavar="DIR", help="save the last epoch's checkpoint here")
    train.add_argument("--evaluate", type=Path, metavar="DIR", help="evaluate a saved checkpoint instead of training")
    run = with_spec("run", "run the sweep with Ray Tune and commit results to storage")
    run.add_argument("--new", action="store_true", help="start a fresh run instead of resuming an unfinished one")
    submit = with_spec("submit", "submit `sweep run` to a Ray cluster through the Ray Jobs API")
    submit.add_argument("--address", required=True, help="Ray dashboard address, e.g. http://HEAD:8265")
    submit.add_argument("--no-wait", action="store_true", help="print the job id and return")
    results = verbs.add_parser("results", help="list a sweep's runs and print a leaderboard", description="URI is <storage.uri>/<spec name>")
    results.add_argument("uri", help="the sweep's folder: s3://bucket/prefix/NAME or a local folder")
    results.add_argument("--run", help="run id (default: the newest committed run)")
    results.add_argument("--download-best", type=Path, metavar="DIR", help="download the best trial's checkpoint (verified against the manifest)")
    results.add_argument("--verify", action="store_true", help="re-hash every file of the run against its manifest; exit 1 when any differs")
    results.add_argument("--trend", type=Path, nargs="?", const=Path("trend.png"), metavar="PNG", help="plot the best metric across runs")
    results.add_argument(
        "--fail-if-worse",
        metavar="X",
        help="exit 3 when the newest committed run's best metric is worse than the "
        "best earlier run's by more than X (in the metric's units, e.g. 1.0 for one point of test_acc)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # The AWS SDKs' newer default sends uploads aws-chunked with a trailing checksum, which S3-compatible
    # stores may keep as the object's bytes (moto does, when keys come from a credentials file): checksums
    # only where S3 requires them. Set here, before Ray starts, so the local Ray's workers inherit it.
    os.environ.setdefault("AWS_REQUEST_CHECKSUM_CALCULATION", "when_required")
    os.environ.setdefault("AWS_RESPONSE_CHECKSUM_VALIDATION", "when_required")
    try:
        return VERBS[args.verb](args)
    except UserError as err:
        for line in err.problems:
            print(f"error: {line}", file=sys.stderr)
        return EXIT_USER
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 128 + signal.SIGINT


def cmd_validate(args: argparse.Namespace) -> int:
    from job.spec import short_repr, shown  # text from the spec reaches the terminal escaped and bounded

    job = load_spec(args.spec, args.overrides)
    print(f"{args.spec}: ok: {job.name}")
    for name, model in job.variants.items():
        print(f"  variant {name}: {model.model_dump(exclude={'kind'})} ({model.kind})")
    for path, domain in job.search.space.items():
        print(f"  search {path}: {short_repr(domain.model_dump(), limit=200)}")
    for name, own in job.search.variants.items():
        for path, domain in own.items():
            print(f"  search {path} for {name} only: {short_repr(domain.model_dump(), limit=200)}")
    print(f"  optim: {job.optim.model_dump()}")
    print(f"  metric: {job.search.metric} ({METRIC_MODES[job.search.metric]}), scheduler: {job.search.scheduler.kind}")
    per_variant = f" ({', '.join(f'{v} {n}' for v, n in job.trials_per_variant().items())})" if job.search.variants else ""
    print(f"  trials: {job.trial_count()}{per_variant}  storage: {shown(job.storage.uri)}")
    return EXIT_OK


def cmd_schema(args: argparse.Namespace) -> int:
    print(json.dumps(json_schema(), indent=2))
    return EXIT_OK


def cmd_train(args: argparse.Namespace) -> int:
    from job import train

    device = train.choose_device()
    print(f"device: {device} ({train.device_name(device)})", flush=True)
    if args.evaluate:
        trial, loss, acc = train.evaluate_checkpoint(_existing(args.evaluate, "--evaluate"), device)
        print(f"{trial.variant} {trial.params}: test_loss {loss:.4f} test_acc {acc:.2f}%")
        return EXIT_OK
    job = _load(args)
    trial = _trial_for(job, args.variant)
    state = None
    for metrics, state in train.train_trial(trial, device):
        print(
            f"epoch {metrics.epoch:3d}  train_loss {metrics.train_loss:.4f}  train_acc {metrics.train_acc:6.2f}  "
            f"test_loss {metrics.test_loss:.4f}  test_acc {metrics.test_acc:6.2f}  {metrics.epoch_s:6.2f} s  "
            f"{metrics.samples_per_s:,.0f} samples/s",
            flush=True,
        )
        if args.checkpoint:
            train.save_checkpoint(args.checkpoint, state, trial, metrics)
    return EXIT_OK


def cmd_run(args: argparse.Namespace) -> int:
    from job import credentials, storage, sweep

    job = load_spec(args.spec, args.overrides)
    # Tune's own banner and tables would drown the sweep's one-line progress; its legacy reporter at
    # verbose=0 prints nothing.
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    # SIGINT, like SIGTERM, goes to the sweep's own handler, which stops Tune through SIGUSR1.
    os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"
    # A local Ray prestarts a worker per CPU, but Tune's trainables ask for their own runtime_env, so none
    # of those would ever run a trial: they only take CPU while the first trials start. (A Ray we join
    # keeps its own settings.)
    os.environ.setdefault("RAY_prestart_worker_first_driver", "0")
    # Else Ray copies the keys into every trial's logged runtime_env. Before the Store: a filesystem built
    # while the keys were in the environment loses them when they leave it.
    keys = credentials.move_env_keys_to_file(os.environ)
    store = storage.Store(job.storage.uri, credentials.StorageSettings.from_env(os.environ))
    try:
        result = sweep.run_sweep(job, store, fresh=args.new, joins_cluster=bool(os.environ.get("RAY_ADDRESS")))
    except sweep.Interrupted as stop:
        print(f"interrupted: run {stop.run_id} saved; rerun the same command to resume", flush=True)
        _exit_now(128 + stop.signum, keys)
    failed = [t for t in result.trials if t.status == "ERROR"]  # STOPPED: the time budget ran out, as asked
    if failed and len(failed) == len(result.trials):
        print(
            f"error: all {len(failed)} trials failed; the first: {failed[0].error}. "
            "Fix the cause and rerun the same command: the trials resume from their last checkpoints",
            file=sys.stderr,
        )
    _exit_now(EXIT_FAILED if failed else EXIT_OK, keys)


def _exit_now(code: int, keys: Path | None) -> NoReturn:
    """Exit at once, skipping Python's teardown. After a clean stop: Tune has saved the run and the lease
    is released; Ray's exit handlers would stop the local Ray one process at a time with grace periods
    (5 s idle, 20 s on a busy machine), past docker's 10 s, and its processes follow the driver out on
    their own. After a finished sweep: the run is committed and Ray stopped; unloading torch and Ray's
    modules would only add seconds."""
    if keys is not None:
        shutil.rmtree(keys.parent, ignore_errors=True)  # atexit would have; os._exit skips it
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def cmd_submit(args: argparse.Namespace) -> int:
    from job import submit

    job = load_spec(args.spec, args.overrides)
    return submit.submit(job, args.address, wait=not args.no_wait)


def cmd_results(args: argparse.Namespace) -> int:
    from job import catalog, credentials, report, storage

    tolerance = _tolerance(args.fail_if_worse)
    root, name = catalog.split_sweep_uri(args.uri)
    store = storage.Store(root, credentials.StorageSettings.from_env(os.environ))
    store.check(create=False)  # a dead endpoint: one line in seconds, before pyarrow's patient retries
    runs = catalog.runs(store, name)
    if not runs:
        raise SpecError([f"{args.uri}: no runs found. The URI is <storage.uri>/<spec name>"])
    rows = [_run_row(r) for r in runs]
    print(report.format_table(rows, ["run_id", "status", "trials", "metric", "best"]))
    committed = [r for r in rows if r["status"] == "committed" and r["best"] != ""]
    metric = committed[-1]["metric"] if committed else "test_acc"
    points = [(r["run_id"], r["best"]) for r in committed if r["metric"] == metric]  # runs that chose another metric don't compare
    regression = _regression(tolerance, points, metric)
    if args.trend:
        print(f"trend: {report.render_trend(points, metric, args.trend, regression)}")
    run_id = args.run or catalog.latest(store, name) or (committed[-1]["run_id"] if committed else None)
    manifest = catalog.read_manifest(store, name, run_id) if run_id else None
    if manifest is None:
        raise SpecError([f"--run: no committed run (got {run_id}). An incomplete run has no manifest.json; pick one listed as committed"])
    print(f"\nleaderboard of {run_id} (best first by {manifest.metric}):")
    trials = [{**t, **{f"best_{k}": v for k, v in t["best"].items()}} for t in manifest.to_dict()["trials"]]
    print(report.format_table(trials, ["trial_id", "variant", "params", "status", "epochs", "best_test_acc", "best_test_loss"]))
    if manifest.ended_by:
        print(f"ended early: {manifest.ended_by}; STOPPED trials did not finish")
    if args.verify and not _verified(catalog.verify_run(store, name, run_id, manifest), len(manifest.files)):
        return EXIT_FAILED
    if args.download_best:
        catalog.download_best(store, name, run_id, manifest, args.download_best)
        print(f"best checkpoint ({manifest.best_trial}) -> {args.download_best}; evaluate: sweep train --evaluate {args.download_best}")
    if regression is not None:
        print(f"error: {regression.line(metric)}", file=sys.stderr)
        return EXIT_WORSE
    return EXIT_OK


def _tolerance(text: str | None) -> float | None:
    """`--fail-if-worse X`: how much worse the newest run may be, in the metric's units."""
    if text is None:
        return None
    try:
        tolerance = float(text)
    except ValueError:
        tolerance = -1.0
    if not 0 <= tolerance < float("inf"):
        raise SpecError(
            [
                f"--fail-if-worse: not a number >= 0 (got {text!r}). Give how much worse the newest run's best "
                "metric may be than the best earlier run's, in the metric's units, e.g. --fail-if-worse 1.0"
            ]
        )
    return tolerance


def _regression(tolerance: float | None, points: list[tuple[str, float]], metric: str) -> Regression | None:
    """The newest run against the best earlier one; says the outcome when there is none."""
    if tolerance is None:
        return None
    regression = find_regression(points, metric, tolerance)
    if regression is None and len(points) < 2:
        print(f"fail-if-worse: {len(points)} committed run(s) with {metric}: nothing to compare yet")
    elif regression is None:
        print(f"fail-if-worse: run {points[-1][0]} best {metric} {points[-1][1]:g} is within {tolerance:g} of the best earlier run")
    return regression


def _verified(problems: list[str], files: int) -> bool:
    """Print what `catalog.verify_run` found: each bad file, then the count."""
    for line in problems:
        print(f"bad: {line}")
    print(f"verified: {files - len(problems)} files ok" + (f", {len(problems)} bad: rerun the sweep or pick another --run" if problems else ""))
    return not problems


def _run_row(run: catalog.RunInfo) -> dict:
    manifest = run.manifest
    if manifest is None:
        return {"run_id": run.run_id, "status": run.status, "trials": "", "metric": "", "best": ""}
    best = next((t.best.get(manifest.metric) for t in manifest.trials if t.trial_id == manifest.best_trial), None)
    return {
        "run_id": run.run_id,
        "status": run.status,
        "trials": len(manifest.trials) or "",
        "metric": manifest.metric,
        "best": "" if best is None else best,
    }


def _load(args: argparse.Namespace) -> JobSpec:
    if not args.spec:
        raise SpecError(["spec: missing. Name a spec file, e.g. sweep train specs/smoke.yaml"])
    return load_spec(args.spec, args.overrides)


def _trial_for(job: JobSpec, variant: str | None) -> TrialSpec:
    name = variant or next(iter(job.variants))
    if name not in job.variants:
        raise SpecError([f"--variant: no such variant (got '{name}'). Choose one of {', '.join(job.variants)}"])
    return resolve_trial(job, name, {})


def _existing(path: Path, flag: str) -> Path:
    if not (path / "trial.json").is_file():
        raise SpecError([f"{flag}: not a checkpoint folder (got {path}). Use a folder from --checkpoint or --download-best"])
    return path


VERBS = {"validate": cmd_validate, "schema": cmd_schema, "train": cmd_train, "run": cmd_run, "submit": cmd_submit, "results": cmd_results}
