"""The public functional API: every convolution and pooling variant as a plain function."""

from .conv import *  # noqa: F401,F403
from .conv import __all__ as _conv_all
from .pooling import *  # noqa: F401,F403
from .pooling import __all__ as _pool_all

__all__ = list(_conv_all) + list(_pool_all)
