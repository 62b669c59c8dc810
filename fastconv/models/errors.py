"""Errors raised while loading or running a saved Keras model.

They extend the :mod:`fastconv.errors` hierarchy, so ``except FastconvError``
(or the matching built-in class) catches them too.
"""

from ..errors import FastconvError, NotSupportedError

__all__ = ["ModelFormatError", "UnsafeModelError", "UnsupportedLayerError"]


class ModelFormatError(FastconvError, ValueError):
    """A model file is unreadable, malformed or inconsistent (the message says where)."""


class UnsafeModelError(ModelFormatError):
    """A model file asks for code to be run (a ``Lambda`` layer, serialized Python
    bytecode or functions); fastconv never executes anything from a file."""


class UnsupportedLayerError(NotSupportedError):
    """A layer (or a layer option) that fastconv's model engine does not implement."""
