"""The record of a job: the Optuna study (:mod:`.study`, the only user of Optuna's internals)."""
