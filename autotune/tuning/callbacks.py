"""The loop's observers that ship with autotune: MLflow tracking (:class:`TrackingCallback`).

The loop (:class:`autotune.tuning.worker.Worker`) knows only :class:`autotune.tuning.loop.LoopCallback`; the
façade (:mod:`autotune.tuning.tuner`) hands it these, so MLflow stays out of the loop's imports.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from autotune.job.spec import Job
from autotune.record.study import StudyRecord, TrialView
from autotune.review.tracking import Tracker
from autotune.tuning.loop import LoopCallback


class TrackingCallback(LoopCallback):
    """Writes the loop's trials to MLflow (:class:`autotune.review.tracking.Tracker`): the parent run at
    the start (catching up on trials MLflow missed when no other worker writes), a nested run
    per trial, rank tags and artifacts at the end.  MLflow being down never stops the loop."""

    def __init__(self, job: Job) -> None:
        self.job = job
        self.tracker: Tracker | None = None
        self._synced = 0
        self._finish = True

    @property  # type: ignore[override]
    def error(self) -> str | None:
        return self.tracker.last_error if self.tracker is not None else None

    def _tracker(self, record: StudyRecord) -> Tracker:
        if self.tracker is None or self.tracker.record is not record:
            self.tracker = Tracker(self.job, record)
        return self.tracker

    def on_loop_start(self, record: StudyRecord, baseline: Mapping[str, float] | None, *,
                      catch_up: bool, finished: bool) -> None:
        tracker = self._tracker(record)
        tracker.start(record.attr("fingerprint"), baseline)
        self._synced = tracker.sync(record.trials()) if catch_up else 0
        # an already finished study gets its artifacts again only when MLflow missed trials
        self._finish = not finished or tracker.needs_finish()

    def on_trial_end(self, record: StudyRecord, view: TrialView,
                     views: Sequence[TrialView]) -> None:
        # the study's view of it carries "vs <hand recipe>" (autotune.record.study.references)
        view = next((v for v in views if v.number == view.number), view)
        self._tracker(record).log_trial(view, views=views)

    def on_loop_end(self, record: StudyRecord, views: Sequence[TrialView], *,
                    new_trials: int) -> None:
        if self._finish or self._synced:
            self._tracker(record).finish(views)
