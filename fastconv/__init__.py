"""fastconv: Keras-exact convolutions and pooling on NumPy arrays, with fast CPU backends.

>>> import numpy as np, fastconv
>>> fastconv.conv2d(np.ones((1, 5, 5, 3)), np.ones((3, 3, 3, 8)), padding="same").shape
(1, 5, 5, 8)
"""

# Before any kernel module: loads the OpenMP runtime with a short idle spin (see _openmp).
from . import _openmp  # noqa: F401
# glibc keeps freed large arrays' memory for the next calls' outputs (see _malloc).
from . import _malloc  # noqa: F401,E402

from . import activations, errors  # noqa: E402
from ._threads import get_num_threads, set_num_threads
from .backends import available_backends
from ._explain import explain
from . import cost
from .errors import (BackendError, BackendUnavailableError, FastconvError, InvalidArgumentError,
                     InvalidDTypeError, InvalidShapeError, NotSupportedError)
from .ops import *  # noqa: F401,F403
from .ops import __all__ as _ops_all
from . import models
from .models import Model, load_model

__version__ = "0.1.0"

__all__ = list(_ops_all) + [
    "cost",
    "activations", "errors", "available_backends", "explain", "get_num_threads", "set_num_threads",
    "FastconvError", "InvalidArgumentError", "InvalidShapeError", "InvalidDTypeError",
    "BackendError", "BackendUnavailableError", "NotSupportedError", "__version__",
    "models", "load_model", "Model",
]
