"""FLOP, parameter and memory accounting for every op of the functional API.

``fastconv.cost.<op>(input_shape, <kernel shape(s)>, ...)`` takes the shapes of
the arrays :func:`fastconv.<op>` would get, and the op's own keywords, and
returns a :class:`Cost` record: ``output_shape``, ``params``, ``macs``,
``flops``, ``bytes_read``, ``bytes_written`` and ``arithmetic_intensity``.
It is shape math only (no array is allocated), done by the same helpers the
ops use (:mod:`fastconv.ops._args`), so arguments are checked exactly as the
op checks them: a bad argument raises the same fastconv error, with the same
message (naming the op's argument, e.g. ``kernel`` for ``kernel_shape``), and
``output_shape`` always equals the shape of the op's result.

Differences from the ops' signatures: the op's ``bias`` array becomes
``use_bias=False``; there is no ``backend`` (the counts don't depend on it);
``dtype="float32"`` sets the element type used for the byte counts.

Conventions
-----------
MACs (multiply-accumulates), counted in full, including kernel taps that fall
on zero padding (the usual published convention):

* convolution: output pixels x prod(kernel_size) x in_channels / groups x filters;
* transposed convolution: *input* pixels x prod(kernel_size) x filters x
  in_channels: each input pixel scatters the whole kernel, and the products
  that land outside the output ("same" padding crops them) are counted too.
  This is the usual published count, and the work of a GEMM + col2im
  implementation such as fastconv's;
* depthwise: output pixels x prod(kernel_size) x in_channels x depth_multiplier;
* separable: the depthwise pass plus the pointwise (1x1) pass
  (output pixels x in_channels x depth_multiplier x filters);
* spatially separable: the column pass plus the row pass, each counted as the
  convolution (4-D kernel) or depthwise convolution (vector kernel) it is;
* pooling: no MACs.

FLOPs:

* 2 per MAC (a multiply and an add);
* a bias adds 1 per output element;
* an activation (any but ``None``/"linear") counts 1 per output element. This
  is a convention: real costs differ (a relu is a compare, a gelu dozens of
  operations), and softmax is counted the same;
* max and average pooling: 1 per window element read, i.e. per real
  (unpadded) input element a window covers; average pooling adds 1 per output
  element for the division;
* global pooling (max or average): 1 per input element (the division of
  global average pooling is not counted).

Parameters and bytes:

* ``params``: kernel elements, plus one bias per output channel when
  ``use_bias``; a vector kernel of ``spatially_separable_conv2d`` counts its
  length (it is shared by every channel);
* ``bytes_read`` = (input elements + params) x itemsize; ``bytes_written`` =
  output elements x itemsize, at the itemsize of ``dtype`` for every tensor.
  This is the compulsory traffic of the op as a whole: the intermediate
  tensor of a two-pass op (separable, spatially separable) is not counted,
  as if the passes were fused, and neither is re-reading of the input;
* ``arithmetic_intensity`` = flops / (bytes_read + bytes_written), in FLOP
  per byte (0.0 when no byte moves).

Examples
--------
>>> from fastconv import cost
>>> layers = [cost.conv2d((1, 28, 28, 1), (3, 3, 1, 75), use_bias=True, padding="same",
...                       activation="relu"),
...           cost.max_pool2d((1, 28, 28, 75), 2, padding="same")]
>>> [c.output_shape for c in layers]
[(1, 28, 28, 75), (1, 14, 14, 75)]
>>> print(cost.total(layers))
total -> (1, 14, 14, 75): 750 params, 529.2k MACs, 1.2M FLOPs, 241.3kB read, 294.0kB written, 2.3 FLOP/B
"""

import dataclasses
import math
import numbers
import textwrap

import numpy as np

from . import activations
from .errors import InvalidArgumentError, InvalidDTypeError, InvalidShapeError
from .ops import _args as A
from .ops import conv as _conv_ops  # the ops' own argument checks and geometry (*_plan)
from .ops import pooling as _pool_ops


# --------------------------------------------------------------------------- the record

@dataclasses.dataclass(frozen=True)
class Cost:
    """What one op (or a sum of ops) costs; see :mod:`fastconv.cost` for the conventions.

    Attributes
    ----------
    op : str
        The op's name (``"total"`` for a sum).
    output_shape : tuple of int
        Shape of the op's result (of the last record, for a sum).
    params : int
        Weights plus biases.
    macs : int
        Multiply-accumulates.
    flops : int
        Floating-point operations.
    bytes_read, bytes_written : int
        Input plus parameters read; output written.
    arithmetic_intensity : float
        ``flops / (bytes_read + bytes_written)``, computed (not an argument).

    Records add up (``a + b``, ``sum(records)``, :func:`total`); ``str()``
    gives one short line.

    Examples
    --------
    >>> from fastconv import cost
    >>> c = cost.conv2d((1, 56, 56, 64), (3, 3, 64, 64), padding="same")
    >>> c.output_shape, c.params, c.macs, c.flops
    ((1, 56, 56, 64), 36864, 115605504, 231211008)
    >>> c.bytes_read, c.bytes_written, round(c.arithmetic_intensity, 2)
    (950272, 802816, 131.89)
    >>> print(c)
    conv2d -> (1, 56, 56, 64): 36.9k params, 115.6M MACs, 231.2M FLOPs, 950.3kB read, 802.8kB written, 131.9 FLOP/B
    >>> print(c + cost.max_pool2d((1, 56, 56, 64)))
    total -> (1, 28, 28, 64): 36.9k params, 115.6M MACs, 231.4M FLOPs, 1.8MB read, 1.0MB written, 83.9 FLOP/B
    """

    op: str
    output_shape: tuple
    params: int
    macs: int
    flops: int
    bytes_read: int
    bytes_written: int
    arithmetic_intensity: float = dataclasses.field(init=False)

    def __post_init__(self):
        moved = self.bytes_read + self.bytes_written
        object.__setattr__(self, "arithmetic_intensity", self.flops / moved if moved else 0.0)

    @property
    def bytes_moved(self):
        """``bytes_read + bytes_written``."""
        return self.bytes_read + self.bytes_written

    def __add__(self, other):
        if not isinstance(other, Cost):
            return NotImplemented
        return Cost("total", other.output_shape, self.params + other.params, self.macs + other.macs,
                    self.flops + other.flops, self.bytes_read + other.bytes_read,
                    self.bytes_written + other.bytes_written)

    def __radd__(self, other):
        if isinstance(other, numbers.Integral) and not isinstance(other, bool) and other == 0:
            return self  # so that sum(records) works
        return NotImplemented

    def __str__(self):
        return (f"{self.op} -> {self.output_shape}: {_si(self.params)} params, {_si(self.macs)} MACs, "
                f"{_si(self.flops)} FLOPs, {_si(self.bytes_read)}B read, "
                f"{_si(self.bytes_written)}B written, {self.arithmetic_intensity:.1f} FLOP/B")


def _si(n):
    """``n`` with a decimal SI prefix and one decimal: 950272 -> '950.3k'."""
    for div, prefix in ((10 ** 15, "P"), (10 ** 12, "T"), (10 ** 9, "G"), (10 ** 6, "M"), (10 ** 3, "k")):
        if n >= div:
            return f"{n / div:.1f}{prefix}"
    return str(n)


def total(records):
    """The sum of cost records (for a whole network, say).

    Parameters
    ----------
    records : iterable of Cost
        In execution order: the sum's ``output_shape`` is the last record's.

    Returns
    -------
    Cost
        Named ``"total"``; counts summed, ``arithmetic_intensity`` recomputed
        from the sums.

    Raises
    ------
    InvalidArgumentError
        If ``records`` is empty or holds something that is not a :class:`Cost`.

    Examples
    --------
    The seeds' sign-MNIST convolutions (with biases, as ``model.summary()`` counts them):

    >>> from fastconv import cost
    >>> convs = [cost.conv2d((1, 28, 28, 1), (3, 3, 1, 75), use_bias=True, padding="same"),
    ...          cost.conv2d((1, 14, 14, 75), (3, 3, 75, 50), use_bias=True, padding="same"),
    ...          cost.conv2d((1, 7, 7, 50), (3, 3, 50, 25), use_bias=True, padding="same")]
    >>> [c.params for c in convs]
    [750, 33800, 11275]
    >>> t = cost.total(convs)
    >>> t.params, t.macs, t.output_shape
    (45825, 7695450, (1, 7, 7, 25))
    """
    try:
        records = list(records)
    except TypeError:
        raise InvalidArgumentError(f"total: argument `records` must be an iterable of Cost; got {records!r}") \
            from None
    if not records:
        raise InvalidArgumentError("total: argument `records` is empty; there is nothing to add up")
    for r in records:
        if not isinstance(r, Cost):
            raise InvalidArgumentError(
                f"total: argument `records` must hold Cost records; got {type(r).__name__} {r!r}")
    out = records[0]
    for r in records[1:]:
        out = out + r
    return Cost("total", out.output_shape, out.params, out.macs, out.flops, out.bytes_read, out.bytes_written)


# --------------------------------------------------------------------------- arguments

def _shape(value, name, op):
    """A user-given shape as a tuple of non-negative Python ints."""
    try:
        dims = tuple(value)
    except TypeError:
        dims = None
    if dims is None or any(isinstance(d, bool) or not isinstance(d, (numbers.Integral, np.integer)) or d < 0
                           for d in dims):
        raise InvalidShapeError(f"{op}: argument `{name}` must be a tuple of non-negative integers; got {value!r}")
    return tuple(int(d) for d in dims)


def _placeholder(shape, name, op, dtype):
    """A read-only, zero-stride array of ``shape`` (no memory), for the ops' own checks."""
    shape = _shape(shape, name, op)
    try:
        return np.broadcast_to(np.zeros((), dtype), shape)
    except ValueError:
        raise InvalidShapeError(f"{op}: argument `{name}` has too many elements to index: {shape}") from None


def _dtype(dtype, op):
    try:
        dt = None if dtype is None else np.dtype(dtype)
    except TypeError:
        dt = None
    if dt is None or dt.kind not in "biuf":
        raise InvalidDTypeError(
            f"{op}: argument `dtype` must be a real numeric NumPy dtype such as 'float32'; got {dtype!r}")
    return dt


def _flag(value, name, op):
    if not isinstance(value, (bool, np.bool_)):
        raise InvalidArgumentError(f"{op}: argument `{name}` must be True or False; got {value!r}")
    return bool(value)


# --------------------------------------------------------------------------- counting

@dataclasses.dataclass(frozen=True)
class _Counts:
    output_shape: tuple
    params: int
    macs: int
    flops: int
    inputs: int   # input elements read
    outputs: int  # output elements written

    def then(self, second):
        """The two passes of a two-pass op, as one op (its intermediate tensor is not counted)."""
        return _Counts(second.output_shape, self.params + second.params, self.macs + second.macs,
                       self.flops + second.flops, self.inputs, second.outputs)


def _layout(batch, spatial, channels, fmt):
    return (batch, *spatial, channels) if fmt == "channels_last" else (batch, channels, *spatial)


def _weighted(x, out_spatial, channels, fmt, positions, kernel, use_bias, act, weights=None):
    """A convolution-like op: ``positions`` window placements, each doing one MAC per kernel element,
    then the bias and the activation on every output element."""
    out = _layout(x.shape[0], out_spatial, channels, fmt)
    n_out = math.prod(out)
    macs = positions * math.prod(kernel.shape)
    params = (math.prod(kernel.shape) if weights is None else weights) + (channels if use_bias else 0)
    flops = 2 * macs + (n_out if use_bias else 0) + (n_out if act is not None else 0)
    return _Counts(out, params, macs, flops, math.prod(x.shape), n_out)


def _conv(op, nsp, input_shape, kernel_shape, use_bias, strides, padding, dilation_rate, groups, activation,
          data_format, dtype):
    p = _conv_ops.conv_plan(op, nsp, _placeholder(input_shape, "input_shape", op, dtype),
                            _placeholder(kernel_shape, "kernel_shape", op, dtype), None, strides, padding,
                            dilation_rate, groups, activation, data_format)
    return _weighted(p.x, p.out, p.kernel.shape[-1], p.fmt, p.x.shape[0] * math.prod(p.out), p.kernel,
                     use_bias, p.act)


def _conv_transpose(op, nsp, input_shape, kernel_shape, use_bias, strides, padding, output_padding,
                    dilation_rate, activation, data_format, dtype):
    p = _conv_ops.conv_transpose_plan(op, nsp, _placeholder(input_shape, "input_shape", op, dtype),
                                      _placeholder(kernel_shape, "kernel_shape", op, dtype), None, strides,
                                      padding, output_padding, dilation_rate, activation, data_format)
    # Every input pixel scatters the whole kernel: input pixels, not output pixels, are the positions.
    return _weighted(p.x, p.out, p.kernel.shape[-2], p.fmt, p.x.shape[0] * math.prod(p.spatial), p.kernel,
                     use_bias, p.act)


def _depthwise(op, nsp, input_shape, kernel_shape, use_bias, strides, padding, dilation_rate, activation,
               data_format, dtype):
    act = activations.canonical(activation)
    fmt, x, kernel, _, _, out, _ = _conv_ops._depthwise_parts(
        op, nsp, _placeholder(input_shape, "input_shape", op, dtype),
        _placeholder(kernel_shape, "kernel_shape", op, dtype), strides, padding, dilation_rate, data_format)
    channels = kernel.shape[-2] * kernel.shape[-1]
    return _weighted(x, out, channels, fmt, x.shape[0] * math.prod(out), kernel, use_bias, act)


def _separable(op, nsp, input_shape, depthwise_kernel_shape, pointwise_kernel_shape, use_bias, strides,
               padding, dilation_rate, activation, data_format, dtype):
    p = _conv_ops.separable_plan(
        op, nsp, _placeholder(input_shape, "input_shape", op, dtype),
        _placeholder(depthwise_kernel_shape, "depthwise_kernel_shape", op, dtype),
        _placeholder(pointwise_kernel_shape, "pointwise_kernel_shape", op, dtype), None, strides, padding,
        dilation_rate, activation, data_format)
    dk, pk = p.depthwise_kernel, p.pointwise_kernel
    mid = dk.shape[-2] * dk.shape[-1]
    positions = p.x.shape[0] * math.prod(p.out)
    depthwise = _weighted(p.x, p.out, mid, p.fmt, positions, dk, False, None)
    middle = np.broadcast_to(np.zeros((), dtype), depthwise.output_shape)
    return depthwise.then(_weighted(middle, p.out, pk.shape[-1], p.fmt, positions, pk, use_bias, p.act))


def _spatially_separable(op, nsp, input_shape, column_kernel_shape, row_kernel_shape, use_bias, strides,
                         padding, dilation_rate, activation, data_format, dtype):
    # fastconv.spatially_separable_conv2d: a column pass then a row pass, each a conv2d (4-D kernel) or a
    # depthwise_conv2d (vector kernel, shared by every channel), checked as that op checks it.
    strides = A.int_tuple(strides, 2, "strides", op)
    dilation = A.int_tuple(dilation_rate, 2, "dilation_rate", op)
    passes = (("column_kernel", column_kernel_shape, (strides[0], 1), (dilation[0], 1), False, None),
              ("row_kernel", row_kernel_shape, (1, strides[1]), (1, dilation[1]), use_bias, activation))
    shape, counts = input_shape, None
    for axis, (name, kernel_shape, s, d, bias, act) in enumerate(passes):
        _, k = _conv_ops._separable_pass(op, name, _placeholder(kernel_shape, name + "_shape", op, dtype), axis)
        if k.ndim == 1:
            x = A.as_array(_placeholder(shape, "input_shape", op, dtype), "x", op)
            fmt = A.data_format(data_format, op)
            A.check_rank(x, 4, "x", op, A.spatial_layout(2, fmt))
            c = x.shape[-1] if fmt == "channels_last" else x.shape[1]
            dk_shape = ((k.shape[0], 1) if axis == 0 else (1, k.shape[0])) + (c, 1)
            step = _depthwise("depthwise_conv2d", 2, shape, dk_shape, bias, s, padding, d, act, data_format, dtype)
            step = dataclasses.replace(step, params=k.shape[0] + (c if bias else 0))
        else:
            step = _conv("conv2d", 2, shape, k.shape, bias, s, padding, d, 1, act, data_format, dtype)
        counts = step if counts is None else counts.then(step)
        shape = step.output_shape
    return counts


def _window_reads(n, k, s, out, before):
    """Real (unpadded) elements summed over the ``out`` windows along one axis: ``out * k`` less the
    padded positions, which only the few windows at either end cover (no loop over the axis)."""
    reads, i = out * k, 0
    while i < out and i * s < before:                  # window i starts in the padding before
        reads -= min(before - i * s, k)
        i += 1
    i = out - 1
    while i >= 0 and i * s - before + k > n:           # window i ends in the padding after
        reads -= min(i * s - before + k - n, k)
        i -= 1
    return reads


def _pool(kind, op, nsp, input_shape, pool_size, strides, padding, data_format, dtype):
    p = _pool_ops.pool_plan(kind, nsp, _placeholder(input_shape, "input_shape", op, dtype), pool_size, strides,
                            padding, data_format)
    shape = _layout(p.x.shape[0], p.out, p.channels, p.fmt)
    n_out = math.prod(shape)
    reads = p.x.shape[0] * p.channels * math.prod(
        _window_reads(n, k, s, o, pad[0]) for n, k, s, o, pad in zip(p.spatial, p.pool, p.strides, p.out, p.pads))
    return _Counts(shape, 0, 0, reads + (n_out if kind == "avg" else 0), math.prod(p.x.shape), n_out)


def _global(kind, op, nsp, input_shape, keepdims, data_format, dtype):
    p = _pool_ops.global_plan(kind, nsp, _placeholder(input_shape, "input_shape", op, dtype), keepdims,
                              data_format)
    shape = _layout(p.x.shape[0], (1,) * nsp, p.channels, p.fmt) if p.keepdims else (p.x.shape[0], p.channels)
    n_in = math.prod(p.x.shape)
    return _Counts(shape, 0, 0, n_in, n_in, math.prod(shape))


def _record(op, counts, dtype):
    size = dtype.itemsize
    return Cost(op, counts.output_shape, counts.params, counts.macs, counts.flops,
                (counts.inputs + counts.params) * size, counts.outputs * size)


# --------------------------------------------------------------------------- the public functions
# One factory per kind of op builds its functions, with the op's signature (shapes for arrays,
# ``use_bias`` for ``bias``, ``dtype`` for ``backend``); the table below says which op is which.

def _make_conv(op, nsp):
    def f(input_shape, kernel_shape, *, use_bias=False, strides=1, padding="valid", dilation_rate=1, groups=1,
          activation=None, data_format="channels_last", dtype="float32"):
        dt = _dtype(dtype, op)
        return _record(op, _conv(op, nsp, input_shape, kernel_shape, _flag(use_bias, "use_bias", op), strides,
                                 padding, dilation_rate, groups, activation, data_format, dt), dt)
    return f


def _make_conv_transpose(op, nsp):
    def f(input_shape, kernel_shape, *, use_bias=False, strides=1, padding="valid", output_padding=None,
          dilation_rate=1, activation=None, data_format="channels_last", dtype="float32"):
        dt = _dtype(dtype, op)
        return _record(op, _conv_transpose(op, nsp, input_shape, kernel_shape, _flag(use_bias, "use_bias", op),
                                           strides, padding, output_padding, dilation_rate, activation,
                                           data_format, dt), dt)
    return f


def _make_depthwise(op, nsp):
    def f(input_shape, kernel_shape, *, use_bias=False, strides=1, padding="valid", dilation_rate=1,
          activation=None, data_format="channels_last", dtype="float32"):
        dt = _dtype(dtype, op)
        return _record(op, _depthwise(op, nsp, input_shape, kernel_shape, _flag(use_bias, "use_bias", op),
                                      strides, padding, dilation_rate, activation, data_format, dt), dt)
    return f


def _make_separable(op, nsp):
    def f(input_shape, depthwise_kernel_shape, pointwise_kernel_shape, *, use_bias=False, strides=1,
          padding="valid", dilation_rate=1, activation=None, data_format="channels_last", dtype="float32"):
        dt = _dtype(dtype, op)
        return _record(op, _separable(op, nsp, input_shape, depthwise_kernel_shape, pointwise_kernel_shape,
                                      _flag(use_bias, "use_bias", op), strides, padding, dilation_rate,
                                      activation, data_format, dt), dt)
    return f


def _make_spatially_separable(op, nsp):
    def f(input_shape, column_kernel_shape, row_kernel_shape, *, use_bias=False, strides=1, padding="valid",
          dilation_rate=1, activation=None, data_format="channels_last", dtype="float32"):
        dt = _dtype(dtype, op)
        return _record(op, _spatially_separable(op, nsp, input_shape, column_kernel_shape, row_kernel_shape,
                                                _flag(use_bias, "use_bias", op), strides, padding,
                                                dilation_rate, activation, data_format, dt), dt)
    return f


def _make_pool(kind):
    def make(op, nsp):
        default = 2 if nsp == 1 else (2,) * nsp

        def f(input_shape, pool_size=default, strides=None, padding="valid", *, data_format="channels_last",
              dtype="float32"):
            dt = _dtype(dtype, op)
            return _record(op, _pool(kind, op, nsp, input_shape, pool_size, strides, padding, data_format, dt),
                           dt)
        return f
    return make


def _make_global(kind):
    def make(op, nsp):
        def f(input_shape, keepdims=False, *, data_format="channels_last", dtype="float32"):
            dt = _dtype(dtype, op)
            return _record(op, _global(kind, op, nsp, input_shape, keepdims, data_format, dt), dt)
        return f
    return make


# --------------------------------------------------------------------------- docstrings

_X = {1: "(batch, steps, channels)", 2: "(batch, height, width, channels)",
      3: "(batch, depth, height, width, channels)"}

_COMMON_PARAMS = """    input_shape : tuple of int
        Shape of the op's ``x``, e.g. ``{x}`` (or channels first).
{kernels}"""
_BIAS = """    use_bias : bool, default False
        Whether the op gets a ``bias`` (one per output channel).
"""
_DTYPE = """    dtype : str or numpy.dtype, default "float32"
        Element type of every tensor, for ``bytes_read`` and ``bytes_written``.
"""

# kind: (factory, kernel parameter docs, what the other keywords are, what is counted)
_KINDS = {
    "conv": (_make_conv, """    kernel_shape : tuple of int
        Shape of ``kernel``: ``(*kernel_size, in_channels // groups, filters)``.
""", "strides, padding, dilation_rate, groups, activation, data_format",
             "output pixels x prod(kernel_shape) MACs"),
    "conv_transpose": (_make_conv_transpose, """    kernel_shape : tuple of int
        Shape of ``kernel``: ``(*kernel_size, filters, in_channels)``.
""", "strides, padding, output_padding, dilation_rate, activation, data_format",
                       "input pixels x prod(kernel_shape) MACs (the whole kernel scattered by every input "
                       "pixel, cropped products included)"),
    "depthwise": (_make_depthwise, """    kernel_shape : tuple of int
        Shape of ``kernel``: ``(*kernel_size, in_channels, depth_multiplier)``.
""", "strides, padding, dilation_rate, activation, data_format", "output pixels x prod(kernel_shape) MACs"),
    "separable": (_make_separable, """    depthwise_kernel_shape : tuple of int
        Shape of ``depthwise_kernel``: ``(*kernel_size, in_channels, depth_multiplier)``.
    pointwise_kernel_shape : tuple of int
        Shape of ``pointwise_kernel``: ``(1, ..., in_channels * depth_multiplier, filters)``.
""", "strides, padding, dilation_rate, activation, data_format",
                  "the depthwise pass's MACs plus the pointwise pass's"),
    "spatially_separable": (_make_spatially_separable, """    column_kernel_shape : tuple of int
        Shape of ``column_kernel``: ``(kh, 1, in_channels, mid_channels)``, or ``(kh,)`` for a vector
        applied to every channel on its own.
    row_kernel_shape : tuple of int
        Shape of ``row_kernel``: ``(1, kw, mid_channels, filters)``, or ``(kw,)``.
""", "strides, padding, dilation_rate, activation, data_format",
                            "the column pass's MACs plus the row pass's (bias and activation on the row pass)"),
    "max_pool": (_make_pool("max"), "", "pool_size, strides, padding, data_format",
                 "1 FLOP per real element read by each window"),
    "avg_pool": (_make_pool("avg"), "", "pool_size, strides, padding, data_format",
                 "1 FLOP per real element read by each window, plus 1 per output element"),
    "global_max_pool": (_make_global("max"), "", "keepdims, data_format", "1 FLOP per input element"),
    "global_avg_pool": (_make_global("avg"), "", "keepdims, data_format", "1 FLOP per input element"),
}

#: op name -> (kind, number of spatial axes, doctest example). The only list of ops in this module.
_OPS = {
    "conv1d": ("conv", 1, """\
>>> c = cost.conv1d((4, 100, 1), (3, 1, 5))
>>> c.output_shape, c.macs, c.flops
((4, 98, 5), 5880, 11760)
>>> cost.conv1d((4, 100, 1), (3, 1, 5), padding="causal", dilation_rate=2).output_shape
(4, 100, 5)
"""),
    "conv2d": ("conv", 2, """\
>>> c = cost.conv2d((1, 56, 56, 64), (3, 3, 64, 64), use_bias=True, padding="same",
...                 activation="relu")
>>> c.output_shape, c.params, c.macs, c.flops == 2 * c.macs + 2 * 56 * 56 * 64
((1, 56, 56, 64), 36928, 115605504, True)
>>> cost.conv2d((1, 56, 56, 64), (3, 3, 16, 64), padding="same", groups=4).macs
28901376
"""),
    "conv3d": ("conv", 3, """\
>>> c = cost.conv3d((4, 32, 32, 32, 1), (3, 3, 3, 1, 16))
>>> c.output_shape, c.params, c.macs
((4, 30, 30, 30, 16), 432, 46656000)
"""),
    "conv1d_transpose": ("conv_transpose", 1, """\
>>> c = cost.conv1d_transpose((1, 4, 2), (3, 5, 2), strides=2)
>>> c.output_shape, c.macs
((1, 9, 5), 120)
"""),
    "conv2d_transpose": ("conv_transpose", 2, """\
Every input pixel scatters the whole kernel: 16 x 16 x (3 x 3 x 64 x 32) MACs.

>>> c = cost.conv2d_transpose((1, 16, 16, 32), (3, 3, 64, 32), strides=2, padding="same")
>>> c.output_shape, c.params, c.macs
((1, 32, 32, 64), 18432, 4718592)
"""),
    "conv3d_transpose": ("conv_transpose", 3, """\
>>> c = cost.conv3d_transpose((1, 2, 2, 2, 1), (2, 2, 2, 3, 1), strides=2)
>>> c.output_shape, c.macs
((1, 4, 4, 4, 3), 192)
"""),
    "depthwise_conv1d": ("depthwise", 1, """\
>>> c = cost.depthwise_conv1d((2, 10, 3), (3, 3, 2))
>>> c.output_shape, c.params, c.macs
((2, 8, 6), 18, 288)
"""),
    "depthwise_conv2d": ("depthwise", 2, """\
>>> c = cost.depthwise_conv2d((4, 32, 32, 3), (3, 3, 3, 1), use_bias=True)
>>> c.output_shape, c.params, c.macs
((4, 30, 30, 3), 30, 97200)
"""),
    "separable_conv1d": ("separable", 1, """\
>>> c = cost.separable_conv1d((1, 10, 4), (3, 4, 2), (1, 8, 6), padding="same")
>>> c.output_shape, c.params, c.macs
((1, 10, 6), 72, 720)
"""),
    "separable_conv2d": ("separable", 2, """\
The seeds' example, 32 to 64 channels with a 3x3 kernel: 2336 parameters instead of 18432.

>>> c = cost.separable_conv2d((1, 38, 38, 32), (3, 3, 32, 1), (1, 1, 32, 64), padding="same")
>>> c.output_shape, c.params, c.macs
((1, 38, 38, 64), 2336, 3373184)
>>> cost.conv2d((1, 38, 38, 32), (3, 3, 32, 64), padding="same").params
18432
"""),
    "spatially_separable_conv2d": ("spatially_separable", 2, """\
The seeds' Sobel filter as ``[1, 2, 1]`` down the columns then ``[-1, 0, 1]`` along the rows,
against the 3x3 kernel in one pass:

>>> c = cost.spatially_separable_conv2d((1, 5, 5, 1), (3,), (3,))
>>> c.output_shape, c.params, c.macs
((1, 3, 3, 1), 6, 72)
>>> cost.conv2d((1, 5, 5, 1), (3, 3, 1, 1)).macs
81
"""),
    **{f"{kind}_pool{n}d": (f"{kind}_pool", n, f"""\
>>> c = cost.{kind}_pool{n}d({(2,) + (4,) * n + (3,)})
>>> c.output_shape, c.params, c.macs, c.flops
({(2,) + (2,) * n + (3,)}, 0, 0, {6 * 4 ** n + (6 * 2 ** n if kind == "avg" else 0)})
""") for kind in ("max", "avg") for n in (1, 2, 3)},
    **{f"global_{kind}_pool{n}d": (f"global_{kind}_pool", n, f"""\
>>> c = cost.global_{kind}_pool{n}d({(2,) + (4,) * n + (3,)})
>>> c.output_shape, c.flops
((2, 3), {6 * 4 ** n})
>>> cost.global_{kind}_pool{n}d({(2,) + (4,) * n + (3,)}, keepdims=True).output_shape
{(2,) + (1,) * n + (3,)}
""") for kind in ("max", "avg") for n in (1, 2, 3)},
}


def _build(op, kind, nsp, example):
    make, kernel_doc, keywords, counted = _KINDS[kind]
    f = make(op, nsp)
    f.__name__ = f.__qualname__ = op
    f.__module__ = __name__
    weighted = kind not in ("max_pool", "avg_pool", "global_max_pool", "global_avg_pool")
    f.__doc__ = f"""What :func:`fastconv.{op}` costs: {counted}.

    Shape math only (no array is made). Arguments are checked as :func:`fastconv.{op}`
    checks them and raise the same errors; ``output_shape`` is the shape of its result.
    See :mod:`fastconv.cost` for the counting conventions.

    Parameters
    ----------
{_COMMON_PARAMS.format(x=_X[nsp], kernels=kernel_doc)}{_BIAS if weighted else ""}    {keywords}
        As in :func:`fastconv.{op}`.{" An activation counts 1 FLOP per output element." if weighted else ""}
{_DTYPE}
    Returns
    -------
    Cost

    Raises
    ------
    InvalidShapeError, InvalidArgumentError, InvalidDTypeError
        The op's errors for its arguments; also for a malformed shape or ``dtype``.

    Examples
    --------
    >>> from fastconv import cost

{textwrap.indent(example, '    ')}"""
    return f


globals().update({op: _build(op, *entry) for op, entry in _OPS.items()})

__all__ = ["Cost", "total", *_OPS]
