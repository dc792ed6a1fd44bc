"""Exceptions raised by smearflow.

The split between permanent and transient errors is the failure policy: a
permanent error (an unreadable image, a broken model folder) is recorded as
``failed`` and never retried; a transient one (database or broker down) is
retried with backoff by whoever runs the job.
"""


class SmearflowError(Exception):
    """Base class of every error smearflow raises on purpose."""


class PermanentError(SmearflowError):
    """Retrying cannot help: the input itself is wrong."""


class TransientError(SmearflowError):
    """A service was unavailable; the same call may succeed later."""


class BadImageError(PermanentError, ValueError):
    """An image file that cannot be analysed (unreadable, truncated, not RGB)."""


class BadSlideError(PermanentError, ValueError):
    """A slide folder that cannot be analysed (missing, empty, bad slide.json)."""


class SlideConflictError(PermanentError):
    """A slide id already stored for another patient or from another folder."""


class DatabaseNotReadyError(PermanentError):
    """The results database is missing, unreachable, or its schema is not this version's."""


class BadModelError(PermanentError, ValueError):
    """A model folder that is incomplete or inconsistent."""


class BadDatasetError(PermanentError, ValueError):
    """A dataset folder (class folders, annotations, masks) that cannot be used."""
