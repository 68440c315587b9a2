"""How trials are chosen and stopped: the Tune search space, searcher, scheduler and budgets built from
the spec. Level 3 beside `submit`; `sweep` runs what this module builds.

`search.algorithm: random` crosses every variant with the grid points and draws random domains anew
for each of `samples` repeats. `optuna` gives each variant its own TPE model of the same space, seeded
alike and asked in turn, so every variant gets `samples` trials and the comparison stays fair.
"""

from __future__ import annotations

import pickle
from typing import Any

from ray import tune
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, PopulationBasedTraining
from ray.tune.search import Searcher

from job.results import EPOCH, PER_VARIANT, VARIANT
from job.searchspec import Choice, Grid, LogUniform, Uniform
from job.spec import JobSpec, SpecError


def param_space(job_spec: JobSpec) -> dict[str, Any] | None:
    """Every variant crossed with the search space; keys are the spec's dotted paths. None for optuna,
    whose searcher holds the space itself."""
    if job_spec.search.algorithm == "optuna":
        return None
    if job_spec.search.variants:  # one grid entry per variant, each with its own space (Tune resolves nested domains)
        return {PER_VARIANT: tune.grid_search([{VARIANT: v, **_domains(job_spec, v)} for v in job_spec.variants])}
    return {VARIANT: tune.grid_search(list(job_spec.variants)), **_domains(job_spec)}


def _domains(job_spec: JobSpec, variant: str | None = None) -> dict[str, Any]:
    """Tune's domains for the shared space, or for a variant's merged one."""
    space: dict[str, Any] = {}
    for path, domain in (job_spec.search.space_for(variant) if variant else job_spec.search.space).items():
        if isinstance(domain, Grid):
            space[path] = tune.grid_search(domain.grid)
        elif isinstance(domain, Choice):
            space[path] = tune.choice(domain.choice)
        elif isinstance(domain, Uniform):
            space[path] = tune.uniform(*domain.uniform)
        elif isinstance(domain, LogUniform):
            space[path] = tune.loguniform(*domain.loguniform)
    return space


def searcher(job_spec: JobSpec) -> Searcher | None:
    """None for random search (Tune's own variant generator); for optuna, one TPE searcher per variant.
    `search.max_concurrent` is Tune's `max_concurrent_trials`, which limits either."""
    search = job_spec.search
    if search.algorithm != "optuna":
        return None
    import optuna  # an optional extra: the spec check in the driver said how to install it
    from ray.tune.search.optuna import OptunaSearch

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # a line per trial otherwise
    per_variant = {
        name: OptunaSearch(
            space=OptunaSearch.convert_search_space(_domains(job_spec, name)), metric=search.metric, mode=search.mode, seed=job_spec.seed
        )
        for name in job_spec.variants
    }
    return EachVariant(per_variant, search.samples, search.metric, search.mode)


class EachVariant(Searcher):
    """Asks the variants' own searchers in turn, `samples` trials each, and tells each only about its
    own trials. Tune saves it with the experiment, so a resumed sweep goes on from what it had learned."""

    def __init__(self, searchers: dict[str, Searcher], samples: int, metric: str, mode: str) -> None:
        super().__init__(metric=metric, mode=mode)
        self.searchers, self.samples = searchers, samples
        self.asked = dict.fromkeys(searchers, 0)
        self.owner: dict[str, str] = {}  # trial id -> variant

    def set_search_properties(self, metric: str | None, mode: str | None, config: dict, **spec: Any) -> bool:
        return True  # the space, metric and mode came from the spec already

    def suggest(self, trial_id: str) -> dict[str, Any] | str | None:
        left = [name for name, asked in self.asked.items() if asked < self.samples]
        if not left:
            return Searcher.FINISHED
        variant = min(left, key=self.asked.__getitem__)
        config = self.searchers[variant].suggest(trial_id)
        if not isinstance(config, dict):
            return config  # None: nothing to suggest now; FINISHED
        self.asked[variant] += 1
        self.owner[trial_id] = variant
        return {VARIANT: variant, **config}

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        if trial_id in self.owner:
            self.searchers[self.owner[trial_id]].on_trial_result(trial_id, result)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        if trial_id in self.owner:
            self.searchers[self.owner.pop(trial_id)].on_trial_complete(trial_id, result, error)

    def save(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "wb") as out:
            pickle.dump(self.__dict__, out)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "rb") as source:
            self.__dict__.update(pickle.load(source))


def check(job_spec: JobSpec) -> None:
    """In the driver, before Ray starts: an optional extra the spec needs is installed."""
    if job_spec.search.algorithm != "optuna":
        return
    try:
        import optuna  # noqa: F401
    except ImportError:
        raise SpecError(
            ["search.algorithm: optuna is not installed here. Run pip install 'sweep-job[optuna]', or use search.algorithm random"]
        ) from None


def scheduler(job_spec: JobSpec) -> Any:
    chosen = job_spec.search.scheduler
    if chosen.kind == "pbt":
        # Tune's PBT copies the donor's checkpoint and config into the trial and restarts it: `run_trial`
        # loads that checkpoint and gives the optimizer the new values.
        domains = _domains(job_spec)
        mutations = {path: domains[path] for path in job_spec.search.perturbed()}
        return LastEpochKept(
            job_spec.optim.epochs,
            time_attr=EPOCH,
            perturbation_interval=chosen.interval,
            hyperparam_mutations=mutations,
            quantile_fraction=chosen.quantile_fraction,
            resample_probability=chosen.resample_probability,
        )
    if chosen.kind == "asha":
        return ASHAScheduler(time_attr=EPOCH, max_t=job_spec.optim.epochs, grace_period=chosen.grace_period, reduction_factor=chosen.reduction_factor)
    return FIFOScheduler()


def trial_stop(job_spec: JobSpec) -> dict[str, float] | None:
    """`search.trial_timeout_s`: Tune stops a trial at its first result past that much training time;
    it counts as finished, with the epochs it did."""
    timeout = job_spec.search.trial_timeout_s
    return {"time_total_s": timeout} if timeout else None


class LastEpochKept(PopulationBasedTraining):
    """PBT that leaves a trial's last epoch alone: Tune's would still exploit there, and the trial would
    end as a copy of its donor's finished result instead of its own."""

    def __init__(self, epochs: int, **pbt: Any) -> None:
        super().__init__(**pbt)
        self.epochs = epochs

    def on_trial_result(self, tune_controller: Any, trial: Any, result: dict) -> str:
        if result.get(EPOCH, 0) >= trial.config.get("optim.epochs", self.epochs):
            return self.CONTINUE
        return super().on_trial_result(tune_controller, trial, result)


def checkpoint_due(job_spec: JobSpec, epoch: int) -> bool:
    """`checkpoints.every` epochs and the last; under PBT also every perturbation, which copies checkpoints."""
    chosen = job_spec.search.scheduler
    return epoch % job_spec.checkpoints.every == 0 or (chosen.kind == "pbt" and epoch % chosen.interval == 0)
