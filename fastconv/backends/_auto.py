"""How ``backend="auto"`` picks a backend for each kernel call.

The choice is made per call, from the kernel-contract operation and a *shape
class* of its arguments (:func:`shape_class`), by the table :data:`RULE`: for
each class, the compiled backends in order of preference. The table was filled
by measuring numba against cython on this project's benchmark cases (2-core
AMD EPYC, see README "backend='auto'"); the reference backend is never chosen
while a compiled backend implements the op. A backend that is not available,
or lacks the op, is skipped.
"""

import math

from . import _load

#: Shape class -> compiled backends, fastest first (measured; README "backend='auto'").
RULE = {
    # numba's register tiles (session 5: cython/numba 1.07-1.09 in three runs, 0.90 before;
    # MobileNetV2 4.5% and ResNet50 2.5% faster by an A/B of the rule)
    "conv/pointwise": ("numba", "cython"),
    "conv/few_channels": ("cython", "numba"),
    "conv/few_pixels": ("numba", "cython"),
    "conv/grouped": ("cython", "numba"),
    "conv/large_kernel": ("cython", "numba"),
    "conv/dense": ("cython", "numba"),
    "conv_transpose": ("cython", "numba"),
    "depthwise_conv/small": ("cython", "numba"),
    "depthwise_conv/large": ("cython", "numba"),
    # numba's fused kernel (depthwise rows, then register-tiled 1x1 while they are in cache)
    # against cython's depthwise and 1x1 kernels one after the other (see backends.implements)
    "separable_conv": ("numba", "cython"),
    "max_pool": ("cython", "numba"),
    "avg_pool": ("cython", "numba"),
    "global_max_pool": ("cython", "numba"),
    "global_avg_pool": ("cython", "numba"),
}

#: Fewer input channels per group than this, in a convolution without groups: "few_channels".
FEW_CHANNELS = 8
#: At most this many output pixels (all images together): "few_pixels" (e.g. ResNet50's
#: 7x7 stage, where the weights, not the pixels, are the work).
FEW_PIXELS = 64
#: Depthwise convolutions producing fewer output values than this: "depthwise_conv/small".
SMALL_DEPTHWISE = 1 << 18


def shape_class(op, args):
    """The shape class of a kernel call (``args`` as the kernel contract passes them).

    >>> import numpy as np
    >>> x, w = np.zeros((1, 1, 8, 8, 3)), np.zeros((1, 3, 3, 3, 16))
    >>> shape_class("conv", (x, w, None, (1, 1, 1), (1, 1, 1), ((0, 0),) * 3, 1, (1, 6, 6)))
    'conv/few_channels'
    """
    if op == "depthwise_conv":
        x, w, out = args[0], args[1], args[6]
        work = x.shape[0] * math.prod(out) * w.shape[3] * w.shape[4]
        return "depthwise_conv/small" if work < SMALL_DEPTHWISE else "depthwise_conv/large"
    if op != "conv":
        return op
    x, w, _, strides, dilation, pads, groups = args[:7]
    if groups > 1:
        return "conv/grouped"
    if tuple(w.shape[:3]) == (1, 1, 1) and tuple(strides) == (1, 1, 1) \
            and not any(lo or hi for lo, hi in pads):
        return "conv/pointwise"
    if _large_kernel(x, w, strides, dilation, pads, groups, args[7]):
        return "conv/large_kernel"
    if w.shape[3] < FEW_CHANNELS:
        return "conv/few_channels"
    if x.shape[0] * math.prod(args[7]) <= FEW_PIXELS:
        return "conv/few_pixels"
    return "conv/dense"


def _large_kernel(x, w, strides, dilation, pads, groups, out_shape):
    # long kernels where the Cython backend's cost model prefers its FFT algorithm
    if max(w.shape[:3]) < 7:
        return False
    mod = _load("cython")
    if mod is None:
        return False
    from . import _cython_conv
    return _cython_conv.choose_algorithm(x.shape, w.shape, strides, dilation, groups, pads, out_shape) == "fft"


def choose(op, args):
    """The name of the backend ``auto`` runs kernel-contract ``op`` on for these ``args``."""
    for name in RULE.get(shape_class(op, args), ()) + ("numba", "cython", "reference"):
        mod = _load(name)
        if mod is not None and op in mod.OPS:
            return name
    raise AssertionError(f"no backend implements {op!r}")  # reference implements all
