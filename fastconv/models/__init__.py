"""Run Keras models saved to files, with fastconv's ops and no TensorFlow.

:func:`load_model` reads a Keras 3 ``.keras`` archive, a legacy ``.h5`` model
(Keras 2 or 3), or an architecture JSON plus a ``.weights.h5`` file, using
only ``json``, ``zipfile`` and ``h5py``; nothing in a file is ever imported,
evaluated or executed (``Lambda`` layers and serialized functions are
refused). The returned :class:`Model` runs Sequential and Functional graphs
(several inputs/outputs, residual connections, shared layers, nested models)
with Keras's inference semantics.

See :func:`supported_layers` for the layer classes it can run.
"""

from .errors import ModelFormatError, UnsafeModelError, UnsupportedLayerError
from .layers import supported_layers
from .model import Model, load_model

__all__ = ["load_model", "Model", "supported_layers", "ModelFormatError", "UnsafeModelError",
           "UnsupportedLayerError"]
