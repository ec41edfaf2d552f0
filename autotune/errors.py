"""User-facing errors.

A small hierarchy: everything a user can cause derives from :class:`AutotuneError`, and the CLI
prints those as one paragraph without a traceback.  Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class AutotuneError(Exception):
    """Base class for errors a user can fix."""


class SpecError(AutotuneError):
    """A job file (or search-space preset) is invalid.

    Carries where the problem is (file, line, field path), what was expected and what was found,
    so the message reads as one paragraph a person can act on.
    """

    def __init__(
        self,
        message: str,
        *,
        file: str | None = None,
        line: int | None = None,
        path: str | None = None,
        hint: str | None = None,
    ) -> None:
        self.file = file
        self.line = line
        self.path = path
        self.hint = hint
        self.reason = message
        where = ""
        if file:
            where = f"{file}"
            if line:
                where += f", line {line}"
        if path:
            where += f"{', ' if where else ''}field '{path}'"
        text = f"{where}: {message}" if where else message
        if hint:
            text += f" {hint}"
        super().__init__(text)


class DependencyError(AutotuneError):
    """An optional dependency (or a device / runtime) that a job asks for is not available."""


class TrialFailed(AutotuneError):
    """A candidate configuration could not be applied or measured.

    The tuner records the trial as failed with this reason; the study goes on.
    """


class StudyError(AutotuneError):
    """The study storage holds something that does not fit the job (e.g. other objectives)."""
