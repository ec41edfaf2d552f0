"""User-facing errors.

A small hierarchy: everything a user can cause derives from :class:`AutotuneError`, and the CLI
prints those as one paragraph without a traceback.  Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


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
        message = _tidy(message, 1500)
        path = _tidy(path, 200) if path is not None else None
        hint = _tidy(hint, 1500) if hint is not None else None
        file = _tidy(file, 4096) if file is not None else None
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


def _tidy(text: str, limit: int) -> str:
    """One paragraph of bounded length: control characters (a newline in a quoted value, ...)
    escaped, text beyond ``limit`` characters cut in the middle."""
    text = str(text)
    if any(ord(c) < 32 or 0x7F <= ord(c) < 0xA0 or c in "\u2028\u2029" for c in text):
        text = "".join(c if not (ord(c) < 32 or 0x7F <= ord(c) < 0xA0 or c in "\u2028\u2029")
                       else c.encode("unicode_escape").decode("ascii") for c in text)
    if len(text) > limit:
        keep = (limit - 5) // 2
        text = f"{text[:keep]} ... {text[-keep:]}"
    return text


class DependencyError(AutotuneError):
    """An optional dependency (or a device / runtime) that a job asks for is not available."""


class TrialFailed(AutotuneError):
    """A candidate configuration could not be applied or measured.

    The tuner records the trial as failed with this reason; the study goes on.  ``cause``: the
    parameter values that determine the failure (``{"pruning_method": "gradient"}`` when the job
    has no loss), when the configuration alone decides it: every configuration sharing them then
    fails the same way, and the study stops proposing them (:func:`autotune.job.machine.forbid_causes`).
    """

    def __init__(self, message: str = "", *, cause: Mapping[str, Any] | None = None) -> None:
        super().__init__(message)
        self.cause: dict[str, Any] | None = dict(cause) if cause else None


class StudyError(AutotuneError):
    """The study storage holds something that does not fit the job (e.g. other objectives)."""
