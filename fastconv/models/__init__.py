"""Run Keras models saved to files, with fastconv's ops and no TensorFlow.

:func:`load_model` reads a Keras 3 ``.keras`` archive, a legacy ``.h5`` model
(Keras 2 or 3), or an architecture JSON plus a ``.weights.h5`` file, using
only ``json``, ``zipfile`` and ``h5py``; model files are untrusted data:
nothing in a file is ever imported, evaluated or executed (``Lambda`` layers
and serialized functions are refused), nothing outside the given files is
read, and sizes are bounded by :class:`Limits` (the threat model and the
checks are listed in :mod:`fastconv.models._io`). The returned :class:`Model`
runs Sequential and Functional graphs (several inputs/outputs, residual
connections, shared layers, nested models) with Keras's inference semantics.
:func:`from_config` builds a model from an architecture alone with seeded
random weights (for benchmarks and tests). Custom layers are registered in
code with :func:`register_layer`, never by a file.

See :func:`supported_layers` for the layer classes it can run.
"""

from ._io import Limits
from .errors import (ArchiveError, CorruptModelError, LimitExceededError, ModelFormatError,
                     UnknownFormatError, UnsafeModelError, UnsafeReferenceError, UnsupportedLayerError,
                     WeightMismatchError)
from .layers import Layer, register_layer, supported_layers, unregister_layer
from .model import Model, load_model
from ._random import from_config

__all__ = ["load_model", "from_config", "Model", "Limits", "Layer", "register_layer", "unregister_layer",
           "supported_layers", "ModelFormatError", "UnknownFormatError", "CorruptModelError", "ArchiveError",
           "LimitExceededError", "WeightMismatchError", "UnsafeModelError", "UnsafeReferenceError",
           "UnsupportedLayerError"]
