"""sweep-job: a Ray Tune sweep of model variants and hyperparameters, results in S3-compatible storage."""

__version__ = "0.1.0"
