"""Per-trial overhead: the same short trials through `sweep run` and through a plain Ray Tune script.

(a) ours: `python -m job run SPEC --set storage.uri=<tmp>` as a subprocess, local storage.
(b) plain Tune, written the way Ray's Tune docs teach: a function trainable, `tune.Tuner(...).fit()` with
    default settings (one CPU per trial, new worker per trial), the same loop via `job.train.train_trial`,
    `tune.report` each epoch with a checkpoint each epoch (as the docs' examples do).
(c) optional, `--before DIR`: (a) run from another checkout of this repo (e.g. `git worktree add DIR REV`).
The trials: the smoke spec's synthetic data and three variants x an 8-value learning-rate grid = 24
trials of `--epochs` tiny epochs. Each contender is a fresh process timed from its start, run one after
another (`--repeats` rounds, order rotated), on the same machine. Definitions, printed with the results:
  training  = sum of `epoch_s` over all trials / concurrent slots (CPUs // cpus per trial): the wall time
              perfect packing of the same epochs would take;
  overhead  = (wall - training) / trials;
  first     = from process start to the first epoch result (ours: its progress line on stdout; plain: the
              worker's time.time() when it reported, which a user sees later, if at all).
Usage:

    python benchmarks/sweep_overhead.py [--epochs 1] [--repeats 1] [--before /tmp/before]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
LRS = [1e-4, 2e-4, 5e-4, 1e-3, 2e-3, 3e-3, 5e-3, 1e-2]  # 8 values x 3 variants = 24 trials


@dataclass
class Timing:
    name: str
    wall_s: float
    first_s: float
    epoch_s: list[float]
    trials: int
    marks: dict[str, float]  # ours only: seconds from start to each phase's first line


def write_spec(folder: Path, epochs: int) -> Path:
    spec = yaml.safe_load((REPO / "specs" / "smoke.yaml").read_text())
    spec["name"] = "overhead"
    spec["optim"]["epochs"] = epochs
    spec["search"]["space"] = {"optim.lr": {"grid": LRS}}
    path = folder / "overhead.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def environment(tree: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "AWS_"))}
    env.update(RAY_USAGE_STATS_ENABLED="0", PYTHONUNBUFFERED="1", PYTHONPATH=str(tree))
    return env


def run_ours(tree: Path, spec: Path, out: Path, name: str) -> Timing:
    start = time.monotonic()
    proc = subprocess.Popen(
        [sys.executable, "-m", "job", "run", str(spec), "--set", f"storage.uri={out}"],
        cwd=tree,
        env=environment(tree),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    marks: dict[str, float] = {}
    lines = []
    for line in proc.stdout:
        lines.append(line)
        at = time.monotonic() - start
        for phase, text in (
            ("run line", "starting run"),
            ("first trial start", "] start "),
            ("first epoch", "] epoch "),
            ("last trial done", "] done "),
            ("results line", "results: "),
        ):
            if text in line and (phase not in marks or phase == "last trial done"):
                marks[phase] = at
    wall = time.monotonic() - start
    assert proc.wait() == 0, "".join(lines)[-3000:]
    rows = [json.loads(r) for p in out.glob("overhead/*/tune/*/result.json") for r in p.read_text().splitlines() if r.strip()]
    return Timing(name, wall, marks["first epoch"], [r["epoch_s"] for r in rows], len({r["trial_id"] for r in rows}), marks)


def run_plain(spec: Path, out: Path) -> Timing:
    start = time.monotonic()
    started_at = time.time()
    done = subprocess.run(
        [sys.executable, __file__, "--plain-tune", str(spec), str(out)], cwd=REPO, env=environment(REPO), capture_output=True, text=True
    )
    wall = time.monotonic() - start
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    rows = [json.loads(r) for p in out.glob("plain/*/result.json") for r in p.read_text().splitlines() if r.strip()]
    first = min(r["reported_at"] for r in rows) - started_at
    return Timing("(b) plain Tune", wall, first, [r["epoch_s"] for r in rows], len({r["trial_id"] for r in rows}), {})


def plain_tune(spec_path: str, out: str) -> None:
    """(b): what Ray's Tune getting-started guide and function-API examples write, with our loop inside."""
    import torch
    from ray import tune

    from job import train
    from job.spec import load_spec, resolve_trial

    job_spec = load_spec(Path(spec_path), [])

    def train_fn(config: dict) -> None:
        trial = resolve_trial(job_spec, config["variant"], {"optim.lr": config["lr"]})
        for metrics, state in train.train_trial(trial, torch.device("cpu")):
            with tempfile.TemporaryDirectory() as folder:
                torch.save({"model": state.model.state_dict(), "optimizer": state.optimizer.state_dict()}, f"{folder}/model.pt")
                tune.report({**metrics.to_dict(), "reported_at": time.time()}, checkpoint=tune.Checkpoint.from_directory(folder))

    tuner = tune.Tuner(
        train_fn,
        param_space={"variant": tune.grid_search(list(job_spec.variants)), "lr": tune.grid_search(LRS)},
        tune_config=tune.TuneConfig(metric="test_acc", mode="max"),
        run_config=tune.RunConfig(storage_path=out, name="plain"),
    )
    tuner.fit()


def report(t: Timing, slots: int) -> float:
    training = sum(t.epoch_s) / slots
    overhead = (t.wall_s - training) / t.trials
    print(
        f"{t.name:<22} wall {t.wall_s:6.1f} s  first epoch {t.first_s:5.1f} s  training {training:5.2f} s  "
        f"trials {t.trials}  overhead/trial {overhead:5.2f} s"
    )
    if t.marks:
        print("    " + ", ".join(f"{phase} at {s:.1f} s" for phase, s in t.marks.items()))
    return overhead


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=1, help="epochs per trial")
    parser.add_argument("--repeats", type=int, default=1, help="rounds of every contender, order rotated")
    parser.add_argument("--before", type=Path, help="another checkout to run as (c), e.g. this repo before a change")
    parser.add_argument("--plain-tune", nargs=2, metavar=("SPEC", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.plain_tune:
        return plain_tune(*args.plain_tune)
    slots = os.cpu_count() or 1  # one CPU per trial in both (the smoke spec's resources.cpus, Tune's default)
    print(
        f"24 trials = 3 variants x {len(LRS)} learning rates, {args.epochs} epoch(s) each, synthetic 2000/500 images, "
        f"hidden 32, batch 64; {slots} concurrent slots ({os.cpu_count()} CPUs, 1 per trial); load average "
        f"{os.getloadavg()[0]:.1f} at start"
    )
    print("training = sum(epoch_s) / slots; overhead/trial = (wall - training) / trials; each timed from its process start")
    contenders = [("ours", lambda d, s: run_ours(REPO, s, d / "out", "(a) ours")), ("plain", lambda d, s: run_plain(s, d / "out"))]
    if args.before:
        contenders.append(("before", lambda d, s: run_ours(args.before.resolve(), s, d / "out", "(c) ours, --before")))
    results: dict[str, list[float]] = {name: [] for name, _ in contenders}
    for round_ in range(args.repeats):
        for name, run in contenders[round_ % len(contenders) :] + contenders[: round_ % len(contenders)]:
            with tempfile.TemporaryDirectory() as scratch:
                folder = Path(scratch)
                timing = run(folder, write_spec(folder, args.epochs))
            results[name].append(report(timing, slots))
            results[name + " wall"] = results.get(name + " wall", []) + [timing.wall_s]
    ours, plain = min(results["ours"]), min(results["plain"])
    print(
        f"best overhead/trial: ours {ours:.2f} s, plain Tune {plain:.2f} s, ratio plain/ours = {plain / ours:.1f}x; "
        f"best wall: ours {min(results['ours wall']):.1f} s, plain {min(results['plain wall']):.1f} s"
    )
    if args.before:
        print(
            f"before: best overhead/trial {min(results['before']):.2f} s, wall {min(results['before wall']):.1f} s, "
            f"ratio before/ours = {min(results['before']) / ours:.1f}x"
        )


if __name__ == "__main__":
    main()
