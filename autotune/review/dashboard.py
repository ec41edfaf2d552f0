"""``autotune dashboard``: optuna-dashboard on a job's study, best trials among feasible ones.

optuna-dashboard 0.21 shows the objectives' names (``study.set_metric_names``, written by
:class:`~autotune.record.study.StudyRecord`), the constraint values (the ``constraints`` system attr,
also written there) and every ``metric.<name>`` user attr as a sortable column.  What it does not
do is respect constraints when it picks the "Best Trial(s)": it takes the Pareto front (or the
single best value) of *all* complete trials, so an infeasible trial that beats every feasible one
is labelled best.  :func:`install_feasible_best` makes the dashboard's own selection run over the
feasible trials only, and :func:`serve` runs the dashboard with it; nothing else of the dashboard
changes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from autotune.errors import AutotuneError

_PATCHED = "_autotune_feasible_best"


def is_feasible(trial: Any) -> bool:
    """A complete trial with every constraint value ``<= 0`` (Optuna's own rule)."""
    return all(v <= 0 for v in trial.constraints.values())


def _feasible_front(original: Callable[..., list[Any]]) -> Callable[..., list[Any]]:
    def get_pareto_front_trials(trials: Sequence[Any], directions: Sequence[Any]) -> list[Any]:
        return original([t for t in trials if is_feasible(t)], directions)

    setattr(get_pareto_front_trials, _PATCHED, True)
    return get_pareto_front_trials


def install_feasible_best() -> None:
    """Make optuna-dashboard's multi-objective "Best Trials" the Pareto front of the feasible
    trials (idempotent).  Raises :class:`~autotune.errors.AutotuneError` if the installed
    optuna-dashboard does not have the function this relies on (it was written against 0.21)."""
    try:
        from optuna_dashboard import _app
    except ImportError:
        raise AutotuneError(
            "optuna-dashboard is not installed; install it with "
            "'pip install -c constraints.txt optuna-dashboard'."
        ) from None
    original = getattr(_app, "get_pareto_front_trials", None)
    if original is None:
        import optuna_dashboard

        raise AutotuneError(
            f"optuna-dashboard {optuna_dashboard.__version__} has no "
            "_app.get_pareto_front_trials (autotune supports 0.21); install the pinned version "
            "with 'pip install -c constraints.txt optuna-dashboard'."
        )
    if not getattr(original, _PATCHED, False):
        _app.get_pareto_front_trials = _feasible_front(original)


def feasible_storage(storage: Any) -> Any:
    """``storage`` whose ``get_best_trial`` (what the dashboard calls for a single-objective
    study) returns the best *feasible* complete trial."""
    from optuna.study import StudyDirection
    from optuna.trial import TrialState

    def get_best_trial(study_id: int) -> Any:
        trials = [t for t in storage.get_all_trials(study_id, deepcopy=False,
                                                     states=[TrialState.COMPLETE])
                  if is_feasible(t)]
        if not trials:
            raise ValueError("No feasible trial is completed yet.")
        sign = -1.0 if storage.get_study_directions(study_id)[0] == StudyDirection.MAXIMIZE \
            else 1.0
        return min(trials, key=lambda t: (sign * t.values[0], t.number))

    storage.get_best_trial = get_best_trial
    return storage


def app(storage_url: str) -> Any:
    """The dashboard's WSGI application over ``storage_url``, best trials feasible only."""
    import optuna
    import optuna_dashboard

    install_feasible_best()
    storage = optuna.storages.get_storage(storage_url)
    return optuna_dashboard.wsgi(feasible_storage(storage))


def serve(storage_url: str, host: str = "127.0.0.1", port: int = 8080) -> None:
    """Run the dashboard in the foreground (wsgiref, threaded, like ``optuna-dashboard``)."""
    from socketserver import ThreadingMixIn
    from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

    class _Server(ThreadingMixIn, WSGIServer):
        daemon_threads = True

    class _Quiet(WSGIRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

    httpd = make_server(host, port, app(storage_url), server_class=_Server,
                        handler_class=_Quiet)
    httpd.serve_forever()
