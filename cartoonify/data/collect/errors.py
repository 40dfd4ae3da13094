"""The exceptions of the collect step."""

from __future__ import annotations


class FetchError(Exception):
    """A download failed; ``transient`` errors (timeouts, refused connections, 5xx) are worth retrying."""

    def __init__(self, message: str, transient: bool = False):
        super().__init__(message)
        self.transient = transient


class OutputError(RuntimeError):
    """Writing into ``out_dir`` failed (disk full, permissions): an error of the run, not a verdict."""


class Reject(Exception):
    """Stops processing an input with a verdict (normally ``rejected``), a code and a reason; ``facts``
    are manifest fields known so far (format, size, ...)."""

    def __init__(self, code: str, reason: str, verdict: str = "rejected", facts: dict | None = None):
        super().__init__(reason)
        self.code, self.reason, self.verdict, self.facts = code, reason, verdict, facts or {}


class NothingCollectedError(ValueError):
    """A collect run kept no image: nothing to train on. The message gives the manifest's reasons and what to
    put where (:meth:`~cartoonify.data.collect.CollectResult.check_kept`)."""
