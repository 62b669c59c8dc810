"""Errors raised while loading or running a saved Keras model.

They extend the :mod:`fastconv.errors` hierarchy, so ``except FastconvError``
(or the matching built-in class) catches them too::

    ModelFormatError (ValueError)          unreadable, malformed or inconsistent file
    ├── UnknownFormatError                 empty, or not a .keras/.h5/JSON file (a PNG called .keras)
    ├── CorruptModelError                  a damaged or truncated archive, HDF5 file or JSON
    ├── ArchiveError                       a .keras zip with missing, unexpected, duplicate or
    │                                      path-like members, encryption or odd compression
    ├── LimitExceededError                 over a :class:`~fastconv.models.Limits` limit (sizes,
    │                                      parameters, decompression ratio, nesting, layers)
    ├── WeightMismatchError                weights whose number, shape or dtype don't fit the layer
    └── UnsafeModelError                   the file asks for something fastconv never does:
        ├── (itself)                       run code (Lambda layers, serialized functions/bytecode)
        └── UnsafeReferenceError           read data outside the file (HDF5 external links, soft
                                           links, external storage, virtual datasets, filter plugins)
    UnsupportedLayerError (NotSupportedError)  a layer or option the engine does not implement
"""

from ..errors import FastconvError, NotSupportedError

__all__ = ["ModelFormatError", "UnknownFormatError", "CorruptModelError", "ArchiveError",
           "LimitExceededError", "WeightMismatchError", "UnsafeModelError", "UnsafeReferenceError",
           "UnsupportedLayerError"]


class ModelFormatError(FastconvError, ValueError):
    """A model file is unreadable, malformed or inconsistent (the message says where)."""


class UnknownFormatError(ModelFormatError):
    """The file is empty or is none of the formats fastconv reads (a ``.keras`` zip, an
    HDF5 file, an architecture JSON), e.g. an image renamed ``.keras``."""


class CorruptModelError(ModelFormatError):
    """The file has a known format but is damaged: truncated, bad checksums, invalid JSON,
    an HDF5 file the library cannot read, datasets declaring more data than they store."""


class ArchiveError(ModelFormatError):
    """A ``.keras`` zip archive whose members are wrong: a required member missing, an
    unexpected, duplicated or path-like (``../``, absolute) name, encryption, or a
    compression method other than stored/deflated."""


class LimitExceededError(ModelFormatError):
    """The file asks for more than a :class:`fastconv.models.Limits` limit allows.

    Attributes
    ----------
    limit : str
        The name of the limit (a :class:`~fastconv.models.Limits` field).
    value : int
        The limit's value.
    actual : int or None
        What the file asked for (where known).
    """

    def __init__(self, message, limit=None, value=None, actual=None):
        super().__init__(message)
        self.limit = limit
        self.value = value
        self.actual = actual


class WeightMismatchError(ModelFormatError):
    """Weight arrays whose number, shape or dtype do not fit the layer's configuration."""


class UnsafeModelError(ModelFormatError):
    """A model file asks for something fastconv never does: run code (a ``Lambda`` layer,
    serialized Python bytecode or functions) or, for :class:`UnsafeReferenceError`, read
    data from outside the file."""


class UnsafeReferenceError(UnsafeModelError):
    """An HDF5 file refers to data outside the weights it holds: external links, soft
    links, externally stored or virtual datasets, or filters that would load a plugin."""


class UnsupportedLayerError(NotSupportedError):
    """A layer (or a layer option) that fastconv's model engine does not implement."""
