"""`pops demo-stack`: the whole story over the REST API, as an operator and serving would tell it.

Registers the reference model and corpora, submits recipes, calibrates, builds and evaluates them,
rolls the best passing engine out through shadow and canary to active (each promotion approved by
a recorded demo approver), replays English traffic through `pops serve`, then injects drift (long,
non-Latin requests from traffic-multiscript) until drift analysis raises an alert and rolls back to
the last known-good engine. Finally writes a report with plots and prints where to look.

By default everything runs here on the embedded default (SQLite, in-process jobs, an MLflow file
store, the API and serving on local ports in this process). `--stack` runs the same story through
a local process stack (`pops stack up`), and `--api-url/--serve-url` through any deployment.
"""
from controlplane.demo.config import DemoConfig, DemoError, candidate_recipes
from controlplane.demo.story import Story, run_demo
from controlplane.demo.targets import Target, embedded, stack_target

__all__ = ["DemoConfig", "DemoError", "Story", "Target", "candidate_recipes", "embedded", "run_demo", "stack_target"]
