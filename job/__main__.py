"""`python -m job`: the same as the `sweep` command."""

from job.cli import main

raise SystemExit(main())
