"""Convolutions: standard, grouped, pointwise, depthwise, separable, spatially
separable and transposed, in 1-D, 2-D and 3-D, with Keras 3 semantics."""

import collections

import numpy as np

from .. import activations, backends
from ..errors import InvalidArgumentError, InvalidShapeError
from . import _args as A
from ._layout import axes3, kernel_3d, run_conv_like, to_3d

__all__ = [
    "conv1d", "conv2d", "conv3d",
    "conv1d_transpose", "conv2d_transpose", "conv3d_transpose",
    "depthwise_conv1d", "depthwise_conv2d",
    "separable_conv1d", "separable_conv2d",
    "spatially_separable_conv2d", "factor_separable_kernel",
]


def _kernel(kernel, nsp, name, op, layout):
    kernel = A.as_array(kernel, name, op)
    A.check_rank(kernel, nsp + 2, name, op, layout)
    if 0 in kernel.shape[:nsp]:
        raise InvalidShapeError(f"{op}: argument `{name}` has a zero-size spatial axis: shape {kernel.shape}")
    return kernel


def _bias(bias, length, op, what):
    if bias is None:
        return None
    bias = A.as_array(bias, "bias", op)
    A.vector(bias, length, "bias", op, what)
    return bias


ConvPlan = collections.namedtuple(
    "ConvPlan", "fmt act x kernel bias spatial strides dilation groups out pads")


def conv_plan(op, nsp, x, kernel, bias, strides, padding, dilation_rate, groups, activation, data_format):
    """Validate a convolution's arguments and work out its geometry (shared by the op
    and by :mod:`fastconv.cost`, which passes zero-memory placeholder arrays)."""
    fmt = A.data_format(data_format, op)
    padding = A.padding_mode(padding, op, ("valid", "same", "causal") if nsp == 1 else ("valid", "same"),
                             explicit_axes=nsp)
    act = activations.canonical(activation)
    x = A.as_array(x, "x", op)
    spatial, cin = A.split_input(x, nsp, fmt, op)
    kernel = _kernel(kernel, nsp, "kernel", op, "(*kernel_size, in_channels // groups, filters)")
    groups = A.int_tuple(groups, 1, "groups", op)[0]
    filters = kernel.shape[-1]
    if cin % groups:
        raise InvalidArgumentError(
            f"{op}: argument `groups` ({groups}) must divide the input channels; x has {cin} channels")
    if filters % groups:
        raise InvalidArgumentError(
            f"{op}: argument `groups` ({groups}) must divide the filters; kernel has {filters} filters")
    if kernel.shape[-2] * groups != cin:
        raise InvalidShapeError(
            f"{op}: kernel expects {kernel.shape[-2] * groups} input channels "
            f"(kernel.shape[-2]={kernel.shape[-2]} x groups={groups}); x has {cin} channels")
    bias = _bias(bias, filters, op, "one per filter")
    strides = A.int_tuple(strides, nsp, "strides", op)
    dilation = A.int_tuple(dilation_rate, nsp, "dilation_rate", op)
    A.refuse_strided_dilation(strides, dilation, op)
    out, pads = A.conv_geometry(spatial, kernel.shape[:nsp], strides, dilation, padding, op)
    return ConvPlan(fmt, act, x, kernel, bias, spatial, strides, dilation, groups, out, pads)


def _operands(op, nsp, fmt, dt, x, kernel, bias):
    """The checked ``x``, ``kernel`` and ``bias`` as the backends take them: 3-D channels-last
    and kernel layouts, contiguous, of the computation dtype ``dt`` (``kernel`` may be a tuple
    of kernels)."""
    kernels = kernel if isinstance(kernel, tuple) else (kernel,)
    arr = lambda a, name: a if type(a) is np.ndarray else A.as_array(a, name, op)  # noqa: E731
    return (to_3d(arr(x, "x"), nsp, fmt, dt), *[kernel_3d(arr(k, "kernel"), nsp, dt) for k in kernels],
            None if bias is None else np.ascontiguousarray(arr(bias, "bias"), dtype=dt))


def _conv(op, nsp, x, kernel, bias, strides, padding, dilation_rate, groups,
          activation, data_format, backend):
    def geometry():
        p = conv_plan(op, nsp, x, kernel, bias, strides, padding, dilation_rate, groups, activation, data_format)
        return (p.fmt, p.act, A.compute_dtype(p.x, p.kernel, p.bias), axes3(p.strides, nsp, 1),
                axes3(p.dilation, nsp, 1), axes3(p.pads, nsp, (0, 0)), p.groups, axes3(p.out, nsp, 1))
    fmt, act, dt, *rest = A.remembered(
        A.call_key(op, (x, kernel, bias), (strides, padding, dilation_rate, groups, activation, data_format)),
        geometry)
    return run_conv_like("conv", backend, nsp, fmt, act, *_operands(op, nsp, fmt, dt, x, kernel, bias), *rest)


TransposePlan = collections.namedtuple(
    "TransposePlan", "fmt act x kernel bias spatial strides dilation out before")


def conv_transpose_plan(op, nsp, x, kernel, bias, strides, padding, output_padding, dilation_rate,
                        activation, data_format):
    """Validate a transposed convolution's arguments and work out its geometry."""
    fmt = A.data_format(data_format, op)
    padding = A.padding_mode(padding, op)
    act = activations.canonical(activation)
    x = A.as_array(x, "x", op)
    spatial, cin = A.split_input(x, nsp, fmt, op)
    kernel = _kernel(kernel, nsp, "kernel", op, "(*kernel_size, filters, in_channels)")
    if kernel.shape[-1] != cin:
        raise InvalidShapeError(
            f"{op}: kernel expects {kernel.shape[-1]} input channels (kernel.shape[-1], the layout is "
            f"(*kernel_size, filters, in_channels)); x has {cin} channels")
    bias = _bias(bias, kernel.shape[-2], op, "one per filter")
    strides = A.int_tuple(strides, nsp, "strides", op)
    dilation = A.int_tuple(dilation_rate, nsp, "dilation_rate", op)
    output_padding = A.int_tuple(output_padding, nsp, "output_padding", op, minimum=0, allow_none=True)
    if output_padding is not None and any(p >= s for p, s in zip(output_padding, strides)):
        raise InvalidArgumentError(
            f"{op}: each `output_padding` must be strictly less than the matching stride (as in Keras); "
            f"got output_padding={output_padding} and strides={strides}")
    A.refuse_strided_dilation(strides, dilation, op)
    out, before = A.conv_transpose_geometry(spatial, kernel.shape[:nsp], strides, dilation, padding,
                                            output_padding, op)
    return TransposePlan(fmt, act, x, kernel, bias, spatial, strides, dilation, out, before)


def _conv_transpose(op, nsp, x, kernel, bias, strides, padding, output_padding, dilation_rate,
                    activation, data_format, backend):
    def geometry():
        p = conv_transpose_plan(op, nsp, x, kernel, bias, strides, padding, output_padding, dilation_rate,
                                activation, data_format)
        return (p.fmt, p.act, A.compute_dtype(p.x, p.kernel, p.bias), axes3(p.strides, nsp, 1),
                axes3(p.dilation, nsp, 1), axes3(p.before, nsp, 0), axes3(p.out, nsp, 1))
    fmt, act, dt, *rest = A.remembered(
        A.call_key(op, (x, kernel, bias),
                   (strides, padding, output_padding, dilation_rate, activation, data_format)), geometry)
    return run_conv_like("conv_transpose", backend, nsp, fmt, act, *_operands(op, nsp, fmt, dt, x, kernel, bias),
                         *rest)


def _depthwise_parts(op, nsp, x, kernel, strides, padding, dilation_rate, data_format, name="kernel"):
    fmt = A.data_format(data_format, op)
    padding = A.padding_mode(padding, op, explicit_axes=nsp)
    x = A.as_array(x, "x", op)
    spatial, cin = A.split_input(x, nsp, fmt, op)
    kernel = _kernel(kernel, nsp, name, op, "(*kernel_size, in_channels, depth_multiplier)")
    if kernel.shape[-2] != cin:
        raise InvalidShapeError(
            f"{op}: `{name}` expects {kernel.shape[-2]} input channels (its shape[-2]); x has {cin} channels")
    strides = A.int_tuple(strides, nsp, "strides", op)
    dilation = A.int_tuple(dilation_rate, nsp, "dilation_rate", op)
    out, pads = A.conv_geometry(spatial, kernel.shape[:nsp], strides, dilation, padding, op)
    return fmt, x, kernel, strides, dilation, out, pads


def _depthwise(op, nsp, x, kernel, bias, strides, padding, dilation_rate, activation, data_format, backend):
    def geometry():
        act = activations.canonical(activation)
        fmt, x_, kernel_, strides_, dilation, out, pads = _depthwise_parts(
            op, nsp, x, kernel, strides, padding, dilation_rate, data_format)
        bias_ = _bias(bias, kernel_.shape[-2] * kernel_.shape[-1], op, "in_channels * depth_multiplier")
        return (fmt, act, A.compute_dtype(x_, kernel_, bias_), axes3(strides_, nsp, 1), axes3(dilation, nsp, 1),
                axes3(pads, nsp, (0, 0)), axes3(out, nsp, 1))
    fmt, act, dt, *rest = A.remembered(
        A.call_key(op, (x, kernel, bias), (strides, padding, dilation_rate, activation, data_format)), geometry)
    return run_conv_like("depthwise_conv", backend, nsp, fmt, act, *_operands(op, nsp, fmt, dt, x, kernel, bias),
                         *rest)


SeparablePlan = collections.namedtuple(
    "SeparablePlan", "fmt act x depthwise_kernel pointwise_kernel bias strides dilation out pads")


def separable_plan(op, nsp, x, depthwise_kernel, pointwise_kernel, bias, strides, padding, dilation_rate,
                   activation, data_format):
    """Validate a separable convolution's arguments and work out its geometry."""
    act = activations.canonical(activation)
    fmt, x, dk, strides, dilation, out, pads = _depthwise_parts(
        op, nsp, x, depthwise_kernel, strides, padding, dilation_rate, data_format, "depthwise_kernel")
    pk = _kernel(pointwise_kernel, nsp, "pointwise_kernel", op,
                 "(*(1,) * rank, in_channels * depth_multiplier, filters)")
    mid = dk.shape[-2] * dk.shape[-1]
    if pk.shape[:nsp] != (1,) * nsp or pk.shape[-2] != mid:
        raise InvalidShapeError(
            f"{op}: argument `pointwise_kernel` must have shape {(1,) * nsp + (mid, '<filters>')} "
            f"(1x1, in_channels * depth_multiplier = {mid} inputs); got shape {pk.shape}")
    bias = _bias(bias, pk.shape[-1], op, "one per filter")
    return SeparablePlan(fmt, act, x, dk, pk, bias, strides, dilation, out, pads)


def _separable(op, nsp, x, depthwise_kernel, pointwise_kernel, bias, strides, padding, dilation_rate,
               activation, data_format, backend):
    def plan():
        p = separable_plan(op, nsp, x, depthwise_kernel, pointwise_kernel, bias, strides, padding,
                           dilation_rate, activation, data_format)
        return (p.fmt, p.act, A.compute_dtype(p.x, p.depthwise_kernel, p.pointwise_kernel, p.bias),
                (axes3(p.strides, nsp, 1), axes3(p.dilation, nsp, 1), axes3(p.pads, nsp, (0, 0)),
                 axes3(p.out, nsp, 1)))
    fmt, act, dt, geometry = A.remembered(
        A.call_key(op, (x, depthwise_kernel, pointwise_kernel, bias),
                   (strides, padding, dilation_rate, activation, data_format)), plan)
    x3, dk3, pk3, bias = _operands(op, nsp, fmt, dt, x, (depthwise_kernel, pointwise_kernel), bias)
    if backends.implements(backend, "separable_conv") and not A.is_device_array(x3) \
            and min(x3.size, dk3.size, pk3.size) > 0:
        # one fused kernel (the depthwise result never goes through memory whole); empty
        # operands take the two kernels, which hand them to the reference backend
        return run_conv_like("separable_conv", backend, nsp, fmt, act, x3, dk3, pk3, bias, *geometry)
    ones = (1, 1, 1)
    mid_y = run_conv_like("depthwise_conv", backend, 3, "channels_last", None, x3, dk3, None, *geometry)
    return run_conv_like(
        "conv", backend, nsp, fmt, act,
        mid_y, pk3, bias, ones, ones, ((0, 0),) * 3, 1, mid_y.shape[1:4])


_COMMON = """
    Parameters
    ----------
    x : array_like
        Input of shape {x_shape} (``data_format="channels_last"``) or with the
        channels right after the batch axis (``"channels_first"``).
{kernel_doc}
    bias : array_like, optional
        {bias_doc}
    strides : int or tuple of int, default 1
        Step of the window along each spatial axis.
    padding : {{{paddings}}} or sequence of (before, after) pairs, default "valid"
        Keras padding: "same" gives ``ceil(n / stride)`` outputs and puts the
        odd pixel of padding after.{extra_padding} Forward convolutions also
        take explicit zero padding, one ``(before, after)`` pair per spatial
        axis (a fastconv extension, like PyTorch's; it is what Keras's
        ``ZeroPadding`` followed by a "valid" convolution computes); not for
        transposed convolutions.
{extra_params}    dilation_rate : int or tuple of int, default 1
        Spacing between kernel taps.{dilation_note}
    activation : str or callable, optional
        A Keras activation name (see :func:`fastconv.activations.names`),
        fused into the kernel's last pass where the backend can.
    data_format : {{"channels_last", "channels_first"}}, default "channels_last"
    backend : str, default "auto"
        ``"auto"`` or a name from :func:`fastconv.available_backends`.

    Returns
    -------
    numpy.ndarray
        float64 if any input is float64, else float32; C-contiguous.

    Raises
    ------
    InvalidShapeError, InvalidArgumentError, InvalidDTypeError, BackendError
        For bad input; the message names the argument, what was expected and what came.
"""

_CONV_KERNEL = """    kernel : array_like
        Shape ``(*kernel_size, in_channels // groups, filters)``: Keras's layout,
        so ``layer.get_weights()[0]`` plugs in unchanged."""
_CONV_EXTRA = """    groups : int, default 1
        Split the channels into this many groups convolved separately (grouped
        convolution); must divide both in_channels and filters.
"""
_STRIDE_DILATION = " ``strides > 1`` with ``dilation_rate > 1`` is refused, as in Keras."


def _doc(summary, example, **kw):
    return summary + _COMMON.format(**kw) + "\n    Examples\n    --------\n" + example


def conv1d(x, kernel, bias=None, *, strides=1, padding="valid", dilation_rate=1, groups=1,
           activation=None, data_format="channels_last", backend="auto"):
    return _conv("conv1d", 1, x, kernel, bias, strides, padding, dilation_rate, groups,
                 activation, data_format, backend)


def conv2d(x, kernel, bias=None, *, strides=1, padding="valid", dilation_rate=1, groups=1,
           activation=None, data_format="channels_last", backend="auto"):
    return _conv("conv2d", 2, x, kernel, bias, strides, padding, dilation_rate, groups,
                 activation, data_format, backend)


def conv3d(x, kernel, bias=None, *, strides=1, padding="valid", dilation_rate=1, groups=1,
           activation=None, data_format="channels_last", backend="auto"):
    return _conv("conv3d", 3, x, kernel, bias, strides, padding, dilation_rate, groups,
                 activation, data_format, backend)


for _f, _xs, _ex in (
        (conv1d, "(batch, steps, channels)", """    >>> import numpy as np, fastconv
    >>> x = np.ones((4, 100, 1), np.float32)
    >>> fastconv.conv1d(x, np.ones((3, 1, 5), np.float32)).shape
    (4, 98, 5)
    >>> fastconv.conv1d(x, np.ones((3, 1, 5)), padding="causal", dilation_rate=2).shape
    (4, 100, 5)
"""),
        (conv2d, "(batch, height, width, channels)", """    The seeds' 4x4 image with a 2x2 kernel (Keras cross-correlates: no flip):

    >>> import numpy as np, fastconv
    >>> img = np.array([[1, 0, -2, 1], [-1, 0, 1, 2], [0, 2, 1, 0], [1, 0, 0, 1]], np.float32)
    >>> k = np.array([[0, 1], [-1, 2]], np.float32)
    >>> fastconv.conv2d(img[None, :, :, None], k[:, :, None, None])[0, :, :, 0]
    array([[1., 0., 4.],
           [4., 1., 1.],
           [1., 1., 2.]], dtype=float32)
"""),
        (conv3d, "(batch, depth, height, width, channels)", """    >>> import numpy as np, fastconv
    >>> x = np.zeros((4, 32, 32, 32, 1), np.float32)
    >>> fastconv.conv3d(x, np.zeros((3, 3, 3, 1, 16), np.float32)).shape
    (4, 30, 30, 30, 16)
""")):
    _f.__doc__ = _doc(
        f"{_f.__name__[-2:].upper()} convolution (Keras ``{_f.__name__[:-2].capitalize()}"
        f"{_f.__name__[-2:].upper()}``): cross-correlation of ``x`` with ``kernel``,\n"
        "    plus ``bias``, then ``activation``. Pointwise (1x1) and grouped convolutions are this function.\n",
        _ex, x_shape=_xs, kernel_doc=_CONV_KERNEL, bias_doc="Shape ``(filters,)``.",
        paddings='"valid", "same", "causal"' if _f is conv1d else '"valid", "same"',
        extra_padding=(" \"causal\" pads ``(k - 1) * dilation_rate`` zeros before the sequence."
                       if _f is conv1d else ""),
        extra_params=_CONV_EXTRA, dilation_note=_STRIDE_DILATION)


def conv1d_transpose(x, kernel, bias=None, *, strides=1, padding="valid", output_padding=None,
                     dilation_rate=1, activation=None, data_format="channels_last", backend="auto"):
    return _conv_transpose("conv1d_transpose", 1, x, kernel, bias, strides, padding, output_padding,
                           dilation_rate, activation, data_format, backend)


def conv2d_transpose(x, kernel, bias=None, *, strides=1, padding="valid", output_padding=None,
                     dilation_rate=1, activation=None, data_format="channels_last", backend="auto"):
    return _conv_transpose("conv2d_transpose", 2, x, kernel, bias, strides, padding, output_padding,
                           dilation_rate, activation, data_format, backend)


def conv3d_transpose(x, kernel, bias=None, *, strides=1, padding="valid", output_padding=None,
                     dilation_rate=1, activation=None, data_format="channels_last", backend="auto"):
    return _conv_transpose("conv3d_transpose", 3, x, kernel, bias, strides, padding, output_padding,
                           dilation_rate, activation, data_format, backend)


_TRANSPOSE_KERNEL = """    kernel : array_like
        Shape ``(*kernel_size, filters, in_channels)`` (Keras's ConvTranspose layout:
        the last two axes swapped with respect to a forward convolution)."""
_TRANSPOSE_EXTRA = """    output_padding : int or tuple of int, optional
        Extra size added after the output, each strictly less than its stride
        (Keras's rule for the output length).
"""
_TRANSPOSE_DILATION = (
    " Dilation > 1 is supported here (Keras's TensorFlow CPU path refuses it); the result is\n"
    "        the adjoint of the dilated forward convolution. ``strides > 1`` together with\n"
    "        ``dilation_rate > 1`` is refused, as in Keras.")

for _f, _xs, _ex in (
        (conv1d_transpose, "(batch, steps, channels)", """    >>> import numpy as np, fastconv
    >>> fastconv.conv1d_transpose(np.ones((1, 4, 2)), np.ones((3, 5, 2)), strides=2).shape
    (1, 9, 5)
"""),
        (conv2d_transpose, "(batch, height, width, channels)", """    The seeds' stride-2 example: each input pixel scatters a copy of the kernel.

    >>> import numpy as np, fastconv
    >>> x = np.array([[0, 1], [2, 3]], np.float32)[None, :, :, None]
    >>> k = np.array([[1, 4], [2, 3]], np.float32)[:, :, None, None]
    >>> fastconv.conv2d_transpose(x, k, strides=2)[0, :, :, 0]
    array([[ 0.,  0.,  1.,  4.],
           [ 0.,  0.,  2.,  3.],
           [ 2.,  8.,  3., 12.],
           [ 4.,  6.,  6.,  9.]], dtype=float32)
    >>> fastconv.conv2d_transpose(np.zeros((1, 16, 16, 32)), np.zeros((3, 3, 64, 32)),
    ...                           strides=2, padding="same").shape
    (1, 32, 32, 64)
"""),
        (conv3d_transpose, "(batch, depth, height, width, channels)", """    >>> import numpy as np, fastconv
    >>> fastconv.conv3d_transpose(np.ones((1, 2, 2, 2, 1)), np.ones((2, 2, 2, 3, 1)),
    ...                           strides=2).shape
    (1, 4, 4, 4, 3)
""")):
    _n = _f.__name__
    _f.__doc__ = _doc(
        f"Transposed {_n[4:6].upper()} convolution (Keras ``Conv{_n[4:6].upper()}Transpose``): the adjoint of\n"
        f"    :func:`{_n[:6]}` with the same strides, padding and dilation, plus ``bias``, then ``activation``.\n",
        _ex, x_shape=_xs, kernel_doc=_TRANSPOSE_KERNEL, bias_doc="Shape ``(filters,)``.",
        paddings='"valid", "same"', extra_padding="", extra_params=_TRANSPOSE_EXTRA,
        dilation_note=_TRANSPOSE_DILATION)


def depthwise_conv1d(x, kernel, bias=None, *, strides=1, padding="valid", dilation_rate=1,
                     activation=None, data_format="channels_last", backend="auto"):
    return _depthwise("depthwise_conv1d", 1, x, kernel, bias, strides, padding, dilation_rate,
                      activation, data_format, backend)


def depthwise_conv2d(x, kernel, bias=None, *, strides=1, padding="valid", dilation_rate=1,
                     activation=None, data_format="channels_last", backend="auto"):
    return _depthwise("depthwise_conv2d", 2, x, kernel, bias, strides, padding, dilation_rate,
                      activation, data_format, backend)


_DEPTHWISE_KERNEL = """    kernel : array_like
        Shape ``(*kernel_size, in_channels, depth_multiplier)``; output channel
        ``c * depth_multiplier + m`` is input channel ``c`` filtered by ``kernel[..., c, m]``."""
_DW_DILATION = (" Unlike Conv, Keras's depthwise layers accept ``strides > 1``\n"
                "        together with ``dilation_rate > 1``, and so does fastconv.")

for _f, _xs, _ex in (
        (depthwise_conv1d, "(batch, steps, channels)", """    >>> import numpy as np, fastconv
    >>> fastconv.depthwise_conv1d(np.ones((2, 10, 3)), np.ones((3, 3, 2))).shape
    (2, 8, 6)
"""),
        (depthwise_conv2d, "(batch, height, width, channels)", """    >>> import numpy as np, fastconv
    >>> x = np.zeros((4, 32, 32, 3), np.float32)
    >>> fastconv.depthwise_conv2d(x, np.zeros((3, 3, 3, 1), np.float32)).shape
    (4, 30, 30, 3)
""")):
    _n = _f.__name__
    _f.__doc__ = _doc(
        f"Depthwise {_n[-2:].upper()} convolution (Keras ``DepthwiseConv{_n[-2:].upper()}``): each input channel\n"
        "    is convolved with its own ``depth_multiplier`` filters; no mixing across channels.\n",
        _ex, x_shape=_xs, kernel_doc=_DEPTHWISE_KERNEL,
        bias_doc="Shape ``(in_channels * depth_multiplier,)``.",
        paddings='"valid", "same"', extra_padding="", extra_params="", dilation_note=_DW_DILATION)


def separable_conv1d(x, depthwise_kernel, pointwise_kernel, bias=None, *, strides=1, padding="valid",
                     dilation_rate=1, activation=None, data_format="channels_last", backend="auto"):
    return _separable("separable_conv1d", 1, x, depthwise_kernel, pointwise_kernel, bias, strides,
                      padding, dilation_rate, activation, data_format, backend)


def separable_conv2d(x, depthwise_kernel, pointwise_kernel, bias=None, *, strides=1, padding="valid",
                     dilation_rate=1, activation=None, data_format="channels_last", backend="auto"):
    return _separable("separable_conv2d", 2, x, depthwise_kernel, pointwise_kernel, bias, strides,
                      padding, dilation_rate, activation, data_format, backend)


_SEPARABLE_KERNELS = """    depthwise_kernel : array_like
        Shape ``(*kernel_size, in_channels, depth_multiplier)``.
    pointwise_kernel : array_like
        Shape ``(1, ..., in_channels * depth_multiplier, filters)``."""

for _f, _xs, _ex in (
        (separable_conv1d, "(batch, steps, channels)", """    >>> import numpy as np, fastconv
    >>> fastconv.separable_conv1d(np.ones((1, 10, 4)), np.ones((3, 4, 2)), np.ones((1, 8, 6)),
    ...                           padding="same").shape
    (1, 10, 6)
"""),
        (separable_conv2d, "(batch, height, width, channels)", """    >>> import numpy as np, fastconv
    >>> y = fastconv.separable_conv2d(np.ones((1, 38, 38, 8)), np.ones((3, 3, 8, 1)),
    ...                               np.ones((1, 1, 8, 16)), padding="same", activation="relu")
    >>> y.shape
    (1, 38, 38, 16)
""")):
    _n = _f.__name__
    _f.__doc__ = _doc(
        f"Depthwise-separable {_n[-2:].upper()} convolution (Keras ``SeparableConv{_n[-2:].upper()}``): a depthwise\n"
        "    convolution (no bias) followed by a pointwise 1x1 convolution with ``bias``, then ``activation``.\n",
        _ex, x_shape=_xs, kernel_doc=_SEPARABLE_KERNELS, bias_doc="Shape ``(filters,)``.",
        paddings='"valid", "same"', extra_padding="", extra_params="", dilation_note=_DW_DILATION)


def spatially_separable_conv2d(x, column_kernel, row_kernel, bias=None, *, strides=1, padding="valid",
                               dilation_rate=1, activation=None, data_format="channels_last",
                               backend="auto"):
    """Spatially separable 2D convolution: a ``kh x 1`` pass down the columns, then a
    ``1 x kw`` pass along the rows.

    When ``column_kernel (x) row_kernel`` equals a ``kh x kw`` kernel, the result is
    that of :func:`conv2d` with it, for ``kh + kw`` instead of ``kh * kw``
    multiplications per pixel (see :func:`factor_separable_kernel`).

    Parameters
    ----------
    x : array_like
        ``(batch, height, width, channels)`` (or channels first).
    column_kernel : array_like
        Either a Keras Conv2D kernel of shape ``(kh, 1, in_channels, mid_channels)``,
        or a vector of length ``kh`` applied to every channel on its own.
    row_kernel : array_like
        Either ``(1, kw, mid_channels, filters)``, or a vector of length ``kw``
        applied to every channel on its own.
    bias : array_like, optional
        Added after the row pass; one per output channel.
    strides, padding, dilation_rate : as in :func:`conv2d`
        ``(sh, sw)`` acts as ``(sh, 1)`` in the column pass and ``(1, sw)`` in the row pass.
    activation, data_format, backend : as in :func:`conv2d`

    Returns
    -------
    numpy.ndarray

    Examples
    --------
    The seeds' Sobel kernel, as ``[1, 2, 1]`` down the columns and ``[-1, 0, 1]`` along the rows:

    >>> import numpy as np, fastconv
    >>> img = np.arange(25, dtype=np.float32).reshape(1, 5, 5, 1)
    >>> fastconv.spatially_separable_conv2d(img, [1, 2, 1], [-1, 0, 1])[0, :, :, 0]
    array([[8., 8., 8.],
           [8., 8., 8.],
           [8., 8., 8.]], dtype=float32)
    """
    op = "spatially_separable_conv2d"
    strides = A.int_tuple(strides, 2, "strides", op)
    dilation = A.int_tuple(dilation_rate, 2, "dilation_rate", op)
    common = dict(padding=padding, data_format=data_format, backend=backend)
    first = _separable_pass(op, "column_kernel", column_kernel, 0)
    y = first[0](x, first[1], strides=(strides[0], 1), dilation_rate=(dilation[0], 1), **common)
    second = _separable_pass(op, "row_kernel", row_kernel, 1)
    return second[0](y, second[1], bias, strides=(1, strides[1]), dilation_rate=(1, dilation[1]),
                     activation=activation, **common)


def _separable_pass(op, name, kernel, axis):
    k = A.as_array(kernel, name, op)
    if k.ndim == 1:
        if k.shape[0] == 0:
            raise InvalidShapeError(f"{op}: argument `{name}` is empty")
        shape = (k.shape[0], 1) if axis == 0 else (1, k.shape[0])

        def depthwise(x, _k, bias=None, **kw):
            x_arr = A.as_array(x, "x", op)
            fmt = A.data_format(kw.get("data_format"), op)
            A.check_rank(x_arr, 4, "x", op, A.spatial_layout(2, fmt))
            c = x_arr.shape[-1] if fmt == "channels_last" else x_arr.shape[1]
            dk = np.broadcast_to(k.reshape(shape + (1, 1)), shape + (c, 1))
            return depthwise_conv2d(x_arr, dk, bias, **kw)
        return depthwise, k
    expected = "(kh, 1, in_channels, mid_channels)" if axis == 0 else "(1, kw, mid_channels, filters)"
    if k.ndim != 4 or k.shape[1 - axis] != 1:
        raise InvalidShapeError(f"{op}: argument `{name}` must be a vector or have shape {expected}; "
                                f"got shape {k.shape}")
    return conv2d, k


def factor_separable_kernel(kernel, rtol=1e-6):
    """Factor a 2-D kernel into a column and a row vector whose outer product is the kernel.

    Parameters
    ----------
    kernel : array_like
        A ``(kh, kw)`` kernel.
    rtol : float, default 1e-6
        How far from rank 1 (second singular value relative to the first) is still rank 1.

    Returns
    -------
    column : numpy.ndarray, shape (kh,)
    row : numpy.ndarray, shape (kw,)
        ``np.outer(column, row)`` equals ``kernel``; the pair is scaled from the
        kernel's largest entry, so integer kernels give integer factors, and the
        column's largest entry is positive.

    Raises
    ------
    InvalidArgumentError
        If the kernel has rank > 1 (it is not spatially separable), giving its singular values.

    Examples
    --------
    >>> import numpy as np
    >>> from fastconv import factor_separable_kernel
    >>> col, row = factor_separable_kernel([[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]])
    >>> col.tolist(), row.tolist()
    ([1.0, 2.0, 1.0], [-1.0, 0.0, 1.0])
    """
    op = "factor_separable_kernel"
    k = A.as_array(kernel, "kernel", op)
    A.check_rank(k, 2, "kernel", op, "(kh, kw)")
    k = k.astype(np.float64)
    if not np.any(k):
        raise InvalidArgumentError(f"{op}: argument `kernel` is all zeros; it has no rank-1 factors")
    s = np.linalg.svd(k, compute_uv=False)
    if len(s) > 1 and s[1] > rtol * s[0]:
        raise InvalidArgumentError(
            f"{op}: the kernel has rank {int(np.sum(s > rtol * s[0]))}, not 1, so it is not spatially "
            f"separable (singular values {np.round(s, 6).tolist()})")
    i, j = np.unravel_index(np.argmax(np.abs(k)), k.shape)
    column = k[:, j].copy()
    row = k[i, :] / k[i, j]
    if column[i] < 0:
        column, row = -column, -row
    return column, row + 0.0
