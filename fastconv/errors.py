"""The fastconv error hierarchy.

Every error fastconv raises on bad input derives from :class:`FastconvError`
and from the matching built-in class (``ValueError`` or ``TypeError``), so
``except ValueError`` keeps working for callers who don't know fastconv.
"""

__all__ = [
    "FastconvError",
    "InvalidArgumentError",
    "InvalidShapeError",
    "InvalidDTypeError",
    "BackendError",
    "BackendUnavailableError",
    "NotSupportedError",
]


class FastconvError(Exception):
    """Base class of every error raised by fastconv."""


class InvalidArgumentError(FastconvError, ValueError):
    """An argument has a value outside what the function accepts."""


class InvalidShapeError(InvalidArgumentError):
    """An array has the wrong rank or a shape that doesn't fit the others."""


class InvalidDTypeError(FastconvError, TypeError):
    """An array has a dtype that fastconv cannot compute with."""


class BackendError(FastconvError, ValueError):
    """A backend name is unknown."""


class BackendUnavailableError(BackendError):
    """A backend is known but cannot be used here (not built, no GPU, ...)."""


class NotSupportedError(FastconvError, NotImplementedError):
    """A feature that fastconv does not provide (yet); the message names it."""
