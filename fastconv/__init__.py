"""fastconv: Keras-exact convolutions and pooling on NumPy arrays, with fast CPU backends.

>>> import numpy as np, fastconv
>>> fastconv.conv2d(np.ones((1, 5, 5, 3)), np.ones((3, 3, 3, 8)), padding="same").shape
(1, 5, 5, 8)
"""

import os as _os

# The kernels alternate between OpenMP-parallel loops (Numba, Cython) and BLAS's
# own threads. Idle OpenMP threads that spin keep the cores from BLAS (measured
# on 2 cores: a 3x3 conv after a depthwise conv took 9.4 ms instead of 2.0 ms).
# Set before any OpenMP runtime starts; a value the user set is kept.
_os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

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
