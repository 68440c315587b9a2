"""How many trials Optuna's TPE (`search.algorithm: optuna`) needs to come within `--within` points of
the best of a random search of `--trials` trials over the same space, on real CIFAR-10, per seed.

Both searches are `sweep run` subprocesses with local storage, the seed's `basic` MLP, the same space
(learning rate log-uniform, hidden width), short trials (`--epochs`), two trials at a time (optuna
through `search.max_concurrent: 2`, so it learns from finished trials). A trial's rank in the search is
its `start` line's place in the sweep's output; its score is its best test accuracy in the committed
leaderboard.csv.

    python benchmarks/optuna_vs_random.py --mirror ../shared/data/cifar-10-python.tar.gz [--seeds 0 1 2]
"""

from __future__ import annotations

import argparse
import csv
import re
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SPACE = "search.space={optim.lr: {loguniform: [1.0e-5, 1.0e-1]}, model.hidden: {choice: [32, 64, 128, 256, 512]}}"
START = re.compile(r"\] start  (\S+) ")


def run(algorithm: str, seed: int, args: argparse.Namespace, out: Path) -> tuple[list[str], dict[str, float]]:
    """The trials in the order they started, and each one's best test accuracy."""
    digest = Path(f"{args.mirror}.sha256").read_text().split()[0]
    sets = [
        f"storage.uri={out}",
        f"seed={seed}",
        f"data.source={Path(args.mirror).resolve()}",
        f"data.sha256={digest}",
        "variants={basic: {kind: mlp, hidden: 128}}",
        f"optim.epochs={args.epochs}",
        "optim.batch_size=64",
        "resources.gpus=0",
        SPACE,
        f"search.samples={args.trials}",
        f"search.algorithm={algorithm}",
        "search.max_concurrent=2",
    ]
    command = [sys.executable, "-m", "job", "run", str(REPO / "specs" / "cifar10.yaml"), *[a for s in sets for a in ("--set", s)]]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        sys.exit(f"{algorithm} seed {seed} failed ({done.returncode}):\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
    order = START.findall(done.stdout)
    (board,) = out.glob("*/*/report/leaderboard.csv")
    with board.open() as rows:
        scores = {row["trial_id"]: float(row["best_test_acc"]) for row in csv.DictReader(rows)}
    return order, scores


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mirror", required=True, help="cifar-10-python.tar.gz (with its .sha256 beside it)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--trials", type=int, default=24)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--within", type=float, default=0.5, help="points of test accuracy")
    args = parser.parse_args()
    print(f"{'seed':>4}  {'random best':>11}  {'optuna best':>11}  optuna trials to within {args.within} of random's best")
    needed = []
    for seed in args.seeds:
        with tempfile.TemporaryDirectory() as scratch:
            _, random_scores = run("random", seed, args, Path(scratch) / "random")
            order, optuna_scores = run("optuna", seed, args, Path(scratch) / "optuna")
        target = max(random_scores.values()) - args.within
        hit = next((i for i, trial in enumerate(order, 1) if optuna_scores.get(trial, float("-inf")) >= target), None)
        needed.append(hit if hit is not None else args.trials + 1)
        shown = str(hit) if hit is not None else f"not within {args.trials}"
        print(f"{seed:>4}  {max(random_scores.values()):>11.2f}  {max(optuna_scores.values()):>11.2f}  {shown}", flush=True)
    print(f"mean trials needed: {sum(needed) / len(needed):.1f} of {args.trials} (a miss counts as {args.trials + 1})")


if __name__ == "__main__":
    main()
