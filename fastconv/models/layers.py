"""Inference-time implementations of the Keras layers a saved model may hold.

Each class reads its Keras ``get_config()`` dict (never executing anything in
it), declares the variables Keras creates for it (:meth:`Layer.weight_spec`,
in Keras's creation order), and computes the layer's inference output on
NumPy arrays. Convolutions and pooling call the public :mod:`fastconv` ops.

:data:`LAYERS` is the fixed table from Keras class names to these classes;
nothing else is ever looked up.
"""

import numpy as np

from .. import activations, backends
from ..backends import _blas
from .. import ops as F
from ..errors import InvalidArgumentError
from .errors import ModelFormatError, UnsafeModelError, UnsupportedLayerError, WeightMismatchError

DTYPE = np.float32


def backend_for(backend, kernel):
    """``backend`` if it implements kernel-contract op ``kernel``, else ``"auto"``."""
    if backend is None or backend == "auto":
        return "auto"
    return backend if kernel in backends.backend_ops(backend) else "auto"


class Layer:
    """Base class: a Keras layer at inference.

    Attributes
    ----------
    name : str
        The layer's name in the model.
    class_name : str
        The Keras class it came from.
    config : dict
        Its Keras configuration (as read from the file).
    """

    #: Keras class names this implementation serves.
    keras_names = ()
    #: Whether the layer takes a list of tensors (merge layers).
    multi_input = False

    def __init__(self, name, class_name, config):
        self.name = name
        self.class_name = class_name
        self.config = config
        self.weights = {}
        policy = config.get("dtype")
        if isinstance(policy, dict) and "Quantized" in str(policy.get("class_name", "")):
            self.unsupported("a quantized dtype policy")
        self.parse(config)

    # -- helpers
    def opt(self, key, default=None):
        return self.config.get(key, default)

    def unsupported(self, what):
        raise UnsupportedLayerError(f"layer {self.name!r} ({self.class_name}): {what} is not supported")

    def parse(self, config):
        """Read the configuration (override)."""

    def weight_spec(self):
        """[(variable name, trainable, aliases)] in the order Keras creates them."""
        return []

    def set_weights(self, arrays):
        spec = self.weight_spec()
        if len(arrays) != len(spec):
            raise WeightMismatchError(
                f"layer {self.name!r} ({self.class_name}): expected {len(spec)} weight arrays "
                f"({', '.join(s[0] for s in spec) or 'none'}); the file has {len(arrays)}")
        for s, a in zip(spec, arrays):
            a = np.asarray(a)
            if a.dtype.kind != "f" and s[0] not in self.integer_weights:
                raise WeightMismatchError(
                    f"layer {self.name!r} ({self.class_name}): weight {s[0]!r} has dtype {a.dtype}; "
                    f"Keras saves floating-point weights")
        expected = self.weight_shapes()
        if expected is not None:
            for s, a, want in zip(spec, arrays, expected):
                got = np.shape(a)
                if want is not None and (len(got) != len(want) or any(
                        w is not None and w != g for w, g in zip(want, got))):
                    raise WeightMismatchError(
                        f"layer {self.name!r} ({self.class_name}): weight {s[0]!r} has shape {got}; "
                        f"the layer's configuration needs "
                        f"({', '.join('*' if w is None else str(w) for w in want)}{',' if len(want) == 1 else ''})")
        self.weights = {s[0]: np.ascontiguousarray(a, dtype=DTYPE) for s, a in zip(spec, arrays)}
        self.check_weights()

    #: Variables that may be stored as integers (e.g. Normalization's ``count``).
    integer_weights = ()

    def weight_shapes(self):
        """Expected shape of each variable in :meth:`weight_spec` order (``None`` for an
        axis the configuration does not fix, or for a variable not checked), or None."""
        return None

    def check_weights(self):
        """Validate weight shapes against each other (override); raise WeightMismatchError."""

    def mismatch(self, what):
        raise WeightMismatchError(f"layer {self.name!r} ({self.class_name}): {what}")

    def call(self, x, backend):  # pragma: no cover - every subclass overrides it
        raise NotImplementedError

    #: Whether :meth:`call_donated` can write the result over a donated input.
    donates = False

    #: Whether :meth:`call` runs unchanged on CUDA device arrays with ``backend="cuda"``
    #: (layers that only call the functional API, which takes device arrays).
    device_call = False

    def call_cuda(self, x, cu):
        """The layer on CUDA device arrays, ``cu`` being :mod:`fastconv.backends.cuda`; returns
        ``NotImplemented`` where this layer (or this configuration of it) has no device
        implementation, and the engine then runs :meth:`call` on a host copy."""
        if self.device_call:
            return self.call(x, "cuda")
        return NotImplemented

    def call_donated(self, x, backend, donated):
        """:meth:`call`, free to overwrite the inputs at the flat positions ``donated`` (the
        engine's own arrays, dead after this call) and to return one of them as the result.
        Elementwise layers override it; the result must equal :meth:`call`'s bit for bit."""
        return self.call(x, backend)

    def __repr__(self):
        return f"<{self.class_name} {self.name!r}>"


def activation_name(value, layer, key="activation"):
    """A Keras activation config value -> a fastconv activation name, or None for linear."""
    if isinstance(value, dict):
        module = value.get("module") or ""
        if value.get("class_name") == "function" and isinstance(value.get("config"), str) \
                and (module in ("keras", "tf_keras") or module.startswith(("keras.", "tf_keras."))) \
                and value.get("registered_name") in (None, value["config"]):
            value = value["config"]
        else:
            raise UnsupportedLayerError(
                f"layer {layer.name!r} ({layer.class_name}): `{key}` is a custom or serialized "
                f"object ({value.get('class_name')!r}); only the built-in Keras activation names "
                f"are supported: {', '.join(activations.names())}")
    if value is None:
        return None
    if not isinstance(value, str):
        raise ModelFormatError(f"layer {layer.name!r}: `{key}` must be a name; got {value!r}")
    try:
        return activations.canonical(value)
    except InvalidArgumentError:
        raise UnsupportedLayerError(
            f"layer {layer.name!r} ({layer.class_name}): unknown activation {value!r}; supported: "
            f"{', '.join(activations.names())}") from None


def apply_activation(name, x, owned=False):
    """``name`` applied to ``x``; in place only if the caller ``owned`` ``x`` (a fresh array)."""
    if name is None:
        return x
    if owned:
        return activations.apply(name, x)
    return np.asarray(activations.get(name)(x), dtype=x.dtype)


def config_array(value, layer, key, max_elements=1 << 20):
    """A numeric constant from a layer config -> float32 array: a number, a (nested) list of
    numbers, or Keras 3's ``{"class_name": "__numpy__", "config": {"value": ..., "dtype": ...}}``."""
    if isinstance(value, dict) and value.get("class_name") == "__numpy__" \
            and isinstance(value.get("config"), dict):
        value = value["config"].get("value")
    try:
        arr = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        arr = None
    if arr is None or arr.size > max_elements:
        raise ModelFormatError(
            f"layer {layer.name!r} ({layer.class_name}): `{key}` must be a number or an array of numbers; "
            f"got {str(value)[:80]}")
    return arr.astype(DTYPE)


def _tuple(value, n, layer, key):
    # ints in [0, 2**31): anything larger is no real layer, and would overflow the kernels' C integers
    ok = lambda v: isinstance(v, int) and not isinstance(v, bool) and 0 <= v < (1 << 31)  # noqa: E731
    if ok(value):
        return (value,) * n
    if isinstance(value, (list, tuple)) and len(value) == n and all(ok(v) for v in value):
        return tuple(value)
    raise ModelFormatError(
        f"layer {layer.name!r} ({layer.class_name}): `{key}` must be an int or {n} ints in [0, 2**31); "
        f"got {str(value)[:80]}")


def _data_format(layer):
    fmt = layer.opt("data_format") or "channels_last"
    if fmt not in ("channels_last", "channels_first"):
        raise ModelFormatError(f"layer {layer.name!r}: unknown data_format {fmt!r}")
    return fmt


# ---------------------------------------------------------------------- structure

class InputLayer(Layer):
    keras_names = ("InputLayer",)

    def parse(self, config):
        shape = config.get("batch_shape", config.get("batch_input_shape"))
        if shape is None and config.get("shape") is not None:
            shape = [None] + list(config["shape"])
        if shape is None:  # an unbuilt Sequential's input: any shape is let through
            self.batch_shape = None
            return
        if not isinstance(shape, (list, tuple)) or not shape or len(shape) > 32 or not all(
                d is None or _count(d) for d in shape):
            raise ModelFormatError(f"input {self.name!r}: bad batch_shape {shape!r}")
        self.batch_shape = tuple(shape)
        if config.get("sparse") or config.get("ragged"):
            self.unsupported("a sparse or ragged input")

    def call(self, x, backend):
        return x


class Identity(Layer):
    """Layers that are the identity at inference."""
    keras_names = ("Dropout", "SpatialDropout1D", "SpatialDropout2D", "SpatialDropout3D",
                   "GaussianNoise", "GaussianDropout", "AlphaDropout", "ActivityRegularization",
                   "Identity", "Masking")

    def parse(self, config):
        if self.class_name == "Masking":
            self.unsupported("masking")

    def call(self, x, backend):
        return x

    device_call = True


# ---------------------------------------------------------------------- convolutions

class _ConvBase(Layer):
    nsp = 2
    kind = "conv"
    device_call = True   # through the functional API

    def parse(self, config):
        n = self.nsp
        self.fmt = _data_format(self)
        self.strides = _tuple(self.opt("strides", 1), n, self, "strides")
        self.dilation = _tuple(self.opt("dilation_rate", 1), n, self, "dilation_rate")
        self.padding = str(self.opt("padding", "valid")).lower()
        self.activation = activation_name(self.opt("activation"), self)
        self.use_bias = bool(self.opt("use_bias", True))
        if self.opt("lora_rank"):
            self.unsupported("LoRA")

    def bias(self):
        return self.weights.get("bias")

    def kernel_size(self):
        return _tuple(self.opt("kernel_size"), self.nsp, self, "kernel_size")

    def filters(self):
        f = self.opt("filters")
        return f if isinstance(f, int) and not isinstance(f, bool) else None

    def _bias_shape(self, n):
        return [(n,)] if self.use_bias else []


class Conv(_ConvBase):
    keras_names = ("Conv1D", "Conv2D", "Conv3D", "Convolution1D", "Convolution2D", "Convolution3D")

    def parse(self, config):
        self.nsp = int(self.class_name[-2])
        super().parse(config)
        self.groups = int(self.opt("groups", 1) or 1)

    def weight_spec(self):
        return [("kernel", True, ())] + ([("bias", True, ())] if self.use_bias else [])

    def weight_shapes(self):
        return [self.kernel_size() + (None, self.filters())] + self._bias_shape(self.filters())

    def call(self, x, backend):
        f = getattr(F, f"conv{self.nsp}d")
        return f(x, self.weights["kernel"], self.bias(), strides=self.strides, padding=self.padding,
                 dilation_rate=self.dilation, groups=self.groups, activation=self.activation,
                 data_format=self.fmt, backend=backend_for(backend, "conv"))


class ConvTranspose(_ConvBase):
    keras_names = ("Conv1DTranspose", "Conv2DTranspose", "Conv3DTranspose",
                   "Convolution2DTranspose", "Convolution3DTranspose",
                   "Deconvolution2D", "Deconvolution3D")

    def parse(self, config):
        digits = [c for c in self.class_name if c.isdigit()]
        self.nsp = int(digits[0])
        super().parse(config)
        op = self.opt("output_padding")
        self.output_padding = None if op is None else _tuple(op, self.nsp, self, "output_padding")

    def weight_spec(self):
        return [("kernel", True, ())] + ([("bias", True, ())] if self.use_bias else [])

    def weight_shapes(self):
        return [self.kernel_size() + (self.filters(), None)] + self._bias_shape(self.filters())

    def call(self, x, backend):
        f = getattr(F, f"conv{self.nsp}d_transpose")
        return f(x, self.weights["kernel"], self.bias(), strides=self.strides, padding=self.padding,
                 output_padding=self.output_padding, dilation_rate=self.dilation,
                 activation=self.activation, data_format=self.fmt,
                 backend=backend_for(backend, "conv_transpose"))


class DepthwiseConv(_ConvBase):
    keras_names = ("DepthwiseConv1D", "DepthwiseConv2D")

    def parse(self, config):
        self.nsp = int(self.class_name[-2])
        super().parse(config)

    def weight_spec(self):
        return [("kernel", True, ("depthwise_kernel",))] + \
            ([("bias", True, ())] if self.use_bias else [])

    def weight_shapes(self):
        dm = self.opt("depth_multiplier", 1)
        dm = dm if isinstance(dm, int) and not isinstance(dm, bool) else None
        return [self.kernel_size() + (None, dm)] + self._bias_shape(None)

    def check_weights(self):
        k = self.weights["kernel"]
        if self.use_bias and self.weights["bias"].size != k.shape[-2] * k.shape[-1]:
            self.mismatch(f"bias of shape {self.weights['bias'].shape} does not fit kernel {k.shape}")

    def call(self, x, backend):
        f = getattr(F, f"depthwise_conv{self.nsp}d")
        return f(x, self.weights["kernel"], self.bias(), strides=self.strides, padding=self.padding,
                 dilation_rate=self.dilation, activation=self.activation, data_format=self.fmt,
                 backend=backend_for(backend, "depthwise_conv"))


class SeparableConv(_ConvBase):
    keras_names = ("SeparableConv1D", "SeparableConv2D", "SeparableConvolution1D",
                   "SeparableConvolution2D")

    def parse(self, config):
        self.nsp = int(self.class_name[-2])
        super().parse(config)

    def weight_spec(self):
        return [("depthwise_kernel", True, ()), ("pointwise_kernel", True, ())] + \
            ([("bias", True, ())] if self.use_bias else [])

    def weight_shapes(self):
        dm = self.opt("depth_multiplier", 1)
        dm = dm if isinstance(dm, int) and not isinstance(dm, bool) else None
        return [self.kernel_size() + (None, dm), (1,) * self.nsp + (None, self.filters())] + \
            self._bias_shape(self.filters())

    def check_weights(self):
        d, p = self.weights["depthwise_kernel"], self.weights["pointwise_kernel"]
        if p.shape[-2] != d.shape[-2] * d.shape[-1]:
            self.mismatch(f"pointwise kernel {p.shape} does not fit depthwise kernel {d.shape}")

    def call(self, x, backend):
        f = getattr(F, f"separable_conv{self.nsp}d")
        # a named backend that lacks either kernel gives both to "auto"
        bk = backend_for(backend, "depthwise_conv")
        if backend_for(backend, "conv") != bk:
            bk = "auto"
        return f(x, self.weights["depthwise_kernel"], self.weights["pointwise_kernel"], self.bias(),
                 strides=self.strides, padding=self.padding, dilation_rate=self.dilation,
                 activation=self.activation, data_format=self.fmt, backend=bk)


# Dense products smaller than this many multiply-adds run on one BLAS thread.
_DENSE_THREADED_MIN = 1 << 24


class Dense(Layer):
    keras_names = ("Dense",)

    def parse(self, config):
        self.units = config.get("units")
        self.activation = activation_name(self.opt("activation"), self)
        self.use_bias = bool(self.opt("use_bias", True))
        if self.opt("lora_rank") or self.opt("quantization_config"):
            self.unsupported("LoRA / quantization")

    def weight_spec(self):
        return [("kernel", True, ())] + ([("bias", True, ())] if self.use_bias else [])

    def weight_shapes(self):
        u = self.units if isinstance(self.units, int) and not isinstance(self.units, bool) else None
        return [(None, u)] + ([(u,)] if self.use_bias else [])

    def check_weights(self):
        k = self.weights["kernel"]
        if k.ndim != 2 or (self.units is not None and k.shape[1] != self.units):
            raise WeightMismatchError(
                f"layer {self.name!r} (Dense): kernel must be (in, {self.units}); got {k.shape}")

    def call(self, x, backend):
        k = self.weights["kernel"]
        if x.shape[-1] != k.shape[0]:
            raise InvalidArgumentError(
                f"layer {self.name!r} (Dense): expects last axis {k.shape[0]}; got input of shape {x.shape}")
        # float32 like Keras (a float64 copy of VGG16's classifier alone would take 800 MB);
        # BLAS may pick row-count-dependent kernels, so batch splits agree to rounding only
        x2 = x.reshape(-1, k.shape[0]).astype(DTYPE, copy=False)
        if x2.shape[0] * k.size < _DENSE_THREADED_MIN:
            with _blas.numpy_single_threaded():   # see _blas: small threaded products stall
                y = np.matmul(x2, k)
        else:
            y = np.matmul(x2, k)
        y = y.reshape(x.shape[:-1] + (k.shape[1],))
        if self.use_bias:
            y += self.weights["bias"]
        return apply_activation(self.activation, y, owned=True)

    def call_cuda(self, x, cu):
        k = self.weights["kernel"]
        if x.shape[-1] != k.shape[0]:
            return self.call(x, "cuda")   # the host error message
        fused = self.activation if self.activation in activations.ELEMENTWISE else None
        y = cu.dense(x, k, self.weights.get("bias"), fused)
        return y if self.activation == fused else cu.activation(y, self.activation)


# ---------------------------------------------------------------------- pooling

class Pool(Layer):
    device_call = True
    keras_names = tuple(f"{k}{n}D" for k in ("MaxPooling", "AveragePooling", "MaxPool", "AvgPool")
                        for n in (1, 2, 3))

    def parse(self, config):
        self.nsp = int(self.class_name[-2])
        self.kind = "max" if self.class_name.startswith("Max") else "avg"
        self.fmt = _data_format(self)
        self.pool = _tuple(self.opt("pool_size", 2), self.nsp, self, "pool_size")
        s = self.opt("strides")
        self.strides = self.pool if s is None else _tuple(s, self.nsp, self, "strides")
        self.padding = str(self.opt("padding", "valid")).lower()

    def call(self, x, backend):
        f = getattr(F, f"{self.kind}_pool{self.nsp}d")
        return f(x, self.pool, self.strides, self.padding, data_format=self.fmt,
                 backend=backend_for(backend, f"{self.kind}_pool"))


class GlobalPool(Layer):
    device_call = True
    keras_names = tuple(f"Global{k}{n}D" for k in ("MaxPooling", "AveragePooling", "MaxPool", "AvgPool")
                        for n in (1, 2, 3))

    def parse(self, config):
        self.nsp = int(self.class_name[-2])
        self.kind = "max" if self.class_name.startswith("GlobalMax") else "avg"
        self.fmt = _data_format(self)
        self.keepdims = bool(self.opt("keepdims", False))

    def call(self, x, backend):
        f = getattr(F, f"global_{self.kind}_pool{self.nsp}d")
        return f(x, keepdims=self.keepdims, data_format=self.fmt,
                 backend=backend_for(backend, f"global_{self.kind}_pool"))


# ---------------------------------------------------------------------- normalization

def _axes(value, layer, key="axis"):
    vals = value if isinstance(value, (list, tuple)) else [value]
    if not vals or not all(isinstance(v, int) and not isinstance(v, bool) for v in vals):
        raise ModelFormatError(f"layer {layer.name!r}: `{key}` must be int(s); got {value!r}")
    return list(vals)


def _norm_axes(axes, rank, layer):
    out = []
    for a in axes:
        if not -rank <= a < rank or a % rank == 0:
            raise InvalidArgumentError(
                f"layer {layer.name!r} ({layer.class_name}): axis {a} is invalid for an input of rank {rank}")
        out.append(a % rank)
    return sorted(out)


def _bshape(x, axes):
    return [x.shape[a] if a in axes else 1 for a in range(x.ndim)]


class BatchNormalization(Layer):
    keras_names = ("BatchNormalization",)

    def parse(self, config):
        self.axes = _axes(self.opt("axis", -1), self)
        self.eps = float(self.opt("epsilon", 1e-3))
        self.center = bool(self.opt("center", True))
        self.scale = bool(self.opt("scale", True))
        if self.opt("renorm"):
            self.unsupported("batch renormalization")

    def weight_spec(self):
        return ([("gamma", True, ())] if self.scale else []) + \
            ([("beta", True, ())] if self.center else []) + \
            [("moving_mean", False, ()), ("moving_variance", False, ())]

    def check_weights(self):
        shapes = {k: v.shape for k, v in self.weights.items()}
        if len(set(shapes.values())) != 1 or self.weights["moving_mean"].ndim != len(self.axes):
            self.mismatch(f"the variables' shapes {shapes} differ or do not fit axis={self.axes}")
        # the affine form used at inference: y = x * mul + add, in float64 then rounded once
        w = {k: v.astype(np.float64) for k, v in self.weights.items()}
        inv = 1.0 / np.sqrt(w["moving_variance"] + self.eps)
        if self.scale:
            inv = inv * w["gamma"]
        add = -w["moving_mean"] * inv
        if self.center:
            add = add + w["beta"]
        self.mul64, self.add64 = inv, add
        self.mul = inv.astype(DTYPE)
        self.add = add.astype(DTYPE)

    def _shape(self, x):
        axes = _norm_axes(self.axes, x.ndim, self)
        if int(np.prod([x.shape[a] for a in axes])) != self.mul.size:
            raise InvalidArgumentError(
                f"layer {self.name!r} (BatchNormalization): {self.mul.size} parameters do not fit the "
                f"normalized axes {axes} of an input of shape {x.shape}")
        return _bshape(x, axes)

    def call(self, x, backend):
        shape = self._shape(x)
        y = np.multiply(x, self.mul.reshape(shape))  # one new array: fresh pages cost page faults
        y += self.add.reshape(shape)
        return y

    def call_cuda(self, x, cu):
        if _norm_axes(self.axes, x.ndim, self) != [x.ndim - 1]:
            return NotImplemented
        self._shape(x)
        return cu.affine(x, self.mul, self.add)

    donates = True

    def call_donated(self, x, backend, donated):
        if x.dtype != DTYPE:
            return self.call(x, backend)
        shape = self._shape(x)
        np.multiply(x, self.mul.reshape(shape), out=x)
        x += self.add.reshape(shape)
        return x


class LayerNormalization(Layer):
    keras_names = ("LayerNormalization",)

    def parse(self, config):
        self.axes = _axes(self.opt("axis", -1), self)
        self.eps = float(self.opt("epsilon", 1e-3))
        self.center = bool(self.opt("center", True))
        self.scale = bool(self.opt("scale", True))
        self.rms = bool(self.opt("rms_scaling", False))

    def weight_spec(self):
        return ([("gamma", True, ())] if self.scale else []) + \
            ([("beta", True, ())] if self.center and not self.rms else [])

    def check_weights(self):
        shapes = {k: v.shape for k, v in self.weights.items()}
        if len(set(shapes.values())) > 1:
            self.mismatch(f"gamma and beta have different shapes {shapes}")

    def call(self, x, backend):
        axes = _norm_axes(self.axes, x.ndim, self)
        shape = _bshape(x, axes)
        var = np.var(x, axis=tuple(axes), keepdims=True, dtype=np.float64).astype(x.dtype)
        inv = 1.0 / np.sqrt(var + x.dtype.type(self.eps))
        gamma = self.weights.get("gamma")
        beta = self.weights.get("beta")
        if self.rms:
            y = x * inv
            return y * gamma.reshape(shape) if gamma is not None else y
        mean = np.mean(x, axis=tuple(axes), keepdims=True, dtype=np.float64).astype(x.dtype)
        if gamma is not None:
            inv = inv * gamma.reshape(shape)
        y = x * inv - mean * inv
        if beta is not None:
            y = y + beta.reshape(shape)
        return y


class Normalization(Layer):
    keras_names = ("Normalization",)

    def parse(self, config):
        axis = self.opt("axis", -1)
        self.axes = [] if axis is None else _axes(axis, self)
        self.invert = bool(self.opt("invert", False))
        self.const = None
        if config.get("mean") is not None or config.get("variance") is not None:
            if config.get("mean") is None or config.get("variance") is None:
                raise ModelFormatError(f"layer {self.name!r} (Normalization): mean and variance go together")
            self.const = (config_array(config["mean"], self, "mean"),
                          config_array(config["variance"], self, "variance"))

    integer_weights = ("count",)

    def weight_spec(self):
        if self.const is not None:
            return []
        return [("mean", False, ()), ("variance", False, ()), ("count", False, ())]

    def check_weights(self):
        if self.weights["mean"].shape != self.weights["variance"].shape:
            self.mismatch(f"mean {self.weights['mean'].shape} and variance "
                          f"{self.weights['variance'].shape} differ in shape")

    def call(self, x, backend):
        mean, var = self.const if self.const is not None else (self.weights["mean"], self.weights["variance"])
        axes = _norm_axes(self.axes, x.ndim, self) if self.axes else []
        shape = _bshape(x, axes)
        if mean.size != int(np.prod(shape)) and mean.size != 1:
            raise InvalidArgumentError(
                f"layer {self.name!r} (Normalization): {mean.size} statistics do not fit input shape {x.shape}")
        mean = mean.reshape(shape) if mean.size != 1 else mean.reshape(())
        var = var.reshape(shape) if var.size != 1 else var.reshape(())
        std = np.maximum(np.sqrt(var), DTYPE(1e-7))
        return (mean + x * std) if self.invert else (x - mean) / std


class Rescaling(Layer):
    keras_names = ("Rescaling",)

    def parse(self, config):
        self.scale = config_array(config.get("scale", 1.0), self, "scale")
        self.offset = config_array(config.get("offset", 0.0), self, "offset")

    def call(self, x, backend):
        return x * self.scale + self.offset

    def call_cuda(self, x, cu):
        c = x.shape[-1]
        if any(v.ndim > 1 or v.size not in (1, c) for v in (self.scale, self.offset)):
            return NotImplemented
        return cu.affine(x, np.broadcast_to(self.scale, (c,)), np.broadcast_to(self.offset, (c,)))

    donates = True

    def call_donated(self, x, backend, donated):
        if x.dtype != DTYPE or np.broadcast_shapes(x.shape, self.scale.shape, self.offset.shape) != x.shape:
            return self.call(x, backend)
        np.multiply(x, self.scale, out=x)
        x += self.offset
        return x


# ---------------------------------------------------------------------- activations

class Activation(Layer):
    keras_names = ("Activation",)

    def parse(self, config):
        self.activation = activation_name(config.get("activation"), self)

    def call(self, x, backend):
        return apply_activation(self.activation, x)

    def call_cuda(self, x, cu):
        return x if self.activation is None else cu.activation(x, self.activation)

    donates = True

    def call_donated(self, x, backend, donated):
        return apply_activation(self.activation, x, owned=True)


class ReLU(Layer):
    keras_names = ("ReLU",)

    def parse(self, config):
        mv = config.get("max_value")
        self.max_value = None if mv is None else float(mv)
        self.slope = float(config.get("negative_slope", 0.0) or 0.0)
        self.threshold = float(config.get("threshold", 0.0) or 0.0)

    def call(self, x, backend):
        return activations.relu(x, negative_slope=self.slope, max_value=self.max_value,
                                threshold=self.threshold)

    donates = True

    def call_cuda(self, x, cu):
        if self.slope or self.threshold or self.max_value not in (None, 6.0):
            return NotImplemented
        return cu.activation(x, "relu" if self.max_value is None else "relu6")

    def call_donated(self, x, backend, donated):
        if self.slope or self.threshold or x.dtype.kind != "f":
            return self.call(x, backend)
        np.maximum(x, x.dtype.type(0), out=x)   # the ReLU of MobileNets and ResNets, in place
        if self.max_value is not None:
            np.minimum(x, x.dtype.type(self.max_value), out=x)
        return x


class LeakyReLU(Layer):
    keras_names = ("LeakyReLU",)

    def parse(self, config):
        # Keras 3 calls it negative_slope, Keras 2 alpha; the layer's default is 0.3
        slope = config.get("negative_slope", config.get("alpha", 0.3))
        self.slope = 0.3 if slope is None else float(slope)

    def call(self, x, backend):
        return activations.leaky_relu(x, negative_slope=self.slope)


class ELU(Layer):
    keras_names = ("ELU",)

    def parse(self, config):
        self.alpha = float(config.get("alpha", 1.0))

    def call(self, x, backend):
        return activations.elu(x, alpha=self.alpha)


class Softmax(Layer):
    keras_names = ("Softmax",)

    def parse(self, config):
        self.axes = _axes(config.get("axis", -1), self)

    def call(self, x, backend):
        axis = tuple(self.axes)
        e = np.exp(x - np.max(x, axis=axis, keepdims=True))
        return e / np.sum(e, axis=axis, keepdims=True)

    def call_cuda(self, x, cu):
        if _norm_axes(self.axes, x.ndim, self) != [x.ndim - 1]:
            return NotImplemented
        return cu.activation(x, "softmax")


class PReLU(Layer):
    keras_names = ("PReLU",)

    def weight_spec(self):
        return [("alpha", True, ())]

    def call(self, x, backend):
        a = self.weights["alpha"]
        if a.shape != x.shape[1:] and a.ndim != x.ndim - 1:
            raise InvalidArgumentError(
                f"layer {self.name!r} (PReLU): alpha of shape {a.shape} does not fit input shape {x.shape}")
        return np.maximum(x, 0) - a * np.maximum(-x, 0)


# ---------------------------------------------------------------------- reshaping

class Flatten(Layer):
    keras_names = ("Flatten",)

    def parse(self, config):
        self.fmt = _data_format(self)

    def call(self, x, backend):
        if self.fmt == "channels_first" and x.ndim > 2:
            x = np.moveaxis(x, 1, -1)
        return np.ascontiguousarray(x).reshape(x.shape[0], int(np.prod(x.shape[1:])))  # -1 fails for an empty batch

    def call_cuda(self, x, cu):
        if self.fmt == "channels_first" and x.ndim > 2:
            return NotImplemented
        return cu.flatten(x)


class Reshape(Layer):
    keras_names = ("Reshape",)

    def parse(self, config):
        t = config.get("target_shape")
        if not isinstance(t, (list, tuple)) or not all(isinstance(v, int) for v in t) \
                or sum(v == -1 for v in t) > 1:
            raise ModelFormatError(f"layer {self.name!r} (Reshape): bad target_shape {t!r}")
        self.target = tuple(t)

    def _shape(self, x):
        """The output shape for ``x`` (the target with -1 resolved), or an error naming both."""
        n = int(np.prod(x.shape[1:]))
        known = int(np.prod([v for v in self.target if v != -1]))
        if (-1 in self.target and (known == 0 or n % known)) or (-1 not in self.target and known != n):
            raise InvalidArgumentError(
                f"layer {self.name!r} (Reshape): cannot reshape {x.shape[1:]} to {self.target}")
        return (x.shape[0],) + tuple(n // known if v == -1 else v for v in self.target)

    def call(self, x, backend):
        return x.reshape(self._shape(x))

    def call_cuda(self, x, cu):
        return cu.reshape(x, self._shape(x))


class Permute(Layer):
    keras_names = ("Permute",)

    def parse(self, config):
        dims = config.get("dims")
        if not isinstance(dims, (list, tuple)) or sorted(dims) != list(range(1, len(dims) + 1)):
            raise ModelFormatError(f"layer {self.name!r} (Permute): bad dims {dims!r}")
        self.dims = tuple(dims)

    def call(self, x, backend):
        if x.ndim != len(self.dims) + 1:
            raise InvalidArgumentError(
                f"layer {self.name!r} (Permute): dims {self.dims} need rank {len(self.dims) + 1}; got {x.shape}")
        return np.ascontiguousarray(np.transpose(x, (0,) + self.dims))


def _count(v):
    return isinstance(v, int) and not isinstance(v, bool) and 0 <= v < (1 << 31)


def _pairs(value, n, layer, key):
    """Keras padding/cropping argument -> ((before, after),) * n (non-negative ints)."""
    if _count(value):
        return ((value, value),) * n
    if isinstance(value, (list, tuple)) and len(value) == n:
        out = []
        for v in value:
            if _count(v):
                out.append((v, v))
            elif isinstance(v, (list, tuple)) and len(v) == 2 and all(_count(u) for u in v):
                out.append(tuple(v))
            else:
                break
        else:
            return tuple(out)
    if n == 1 and isinstance(value, (list, tuple)) and len(value) == 2 and all(_count(u) for u in value):
        return (tuple(value),)
    raise ModelFormatError(f"layer {layer.name!r} ({layer.class_name}): bad `{key}` {str(value)[:80]}")


def _spatial_axes(x, nsp, fmt):
    return list(range(2, 2 + nsp)) if fmt == "channels_first" else list(range(1, 1 + nsp))


class ZeroPadding(Layer):
    keras_names = ("ZeroPadding1D", "ZeroPadding2D", "ZeroPadding3D")

    def parse(self, config):
        self.nsp = int(self.class_name[-2])
        self.fmt = _data_format(self)  # absent (UpSampling1D, Cropping1D) means channels_last
        self.pads = _pairs(config.get("padding", 1), self.nsp, self, "padding")

    def call(self, x, backend):
        width = [(0, 0)] * x.ndim
        for a, p in zip(_spatial_axes(x, self.nsp, self.fmt), self.pads):
            width[a] = p
        return np.pad(x, width)

    def call_cuda(self, x, cu):
        if len(x.shape) > 5:
            return NotImplemented
        width = [(0, 0)] * len(x.shape)
        for a, p in zip(_spatial_axes(x, self.nsp, self.fmt), self.pads):
            width[a] = p
        return cu.pad(x, width)


class Cropping(Layer):
    keras_names = ("Cropping1D", "Cropping2D", "Cropping3D")

    def parse(self, config):
        self.nsp = int(self.class_name[-2])
        self.fmt = _data_format(self)  # absent (UpSampling1D, Cropping1D) means channels_last
        self.crops = _pairs(config.get("cropping", 1), self.nsp, self, "cropping")

    def call(self, x, backend):
        idx = [slice(None)] * x.ndim
        for a, (b, e) in zip(_spatial_axes(x, self.nsp, self.fmt), self.crops):
            if b + e >= x.shape[a]:
                raise InvalidArgumentError(
                    f"layer {self.name!r} ({self.class_name}): cropping {(b, e)} leaves nothing of "
                    f"axis {a} (size {x.shape[a]})")
            idx[a] = slice(b, x.shape[a] - e)
        return np.ascontiguousarray(x[tuple(idx)])

    def call_cuda(self, x, cu):
        if len(x.shape) > 5:
            return NotImplemented
        idx = [slice(None)] * len(x.shape)
        for a, (b, e) in zip(_spatial_axes(x, self.nsp, self.fmt), self.crops):
            if b + e >= x.shape[a]:
                return self.call(cu.to_host(x), "cuda")   # the error message
            idx[a] = slice(b, x.shape[a] - e)
        return cu.crop(x, idx)


class UpSampling(Layer):
    keras_names = ("UpSampling1D", "UpSampling2D", "UpSampling3D")

    def parse(self, config):
        self.nsp = int(self.class_name[-2])
        self.fmt = _data_format(self)  # absent (UpSampling1D, Cropping1D) means channels_last
        key = "size"
        self.size = _tuple(config.get(key, 2), self.nsp, self, key)
        self.interpolation = config.get("interpolation", "nearest") if self.nsp == 2 else "nearest"
        if self.interpolation not in ("nearest", "bilinear"):
            self.unsupported(f"interpolation={self.interpolation!r} (supported: 'nearest', 'bilinear')")

    def call(self, x, backend):
        axes = _spatial_axes(x, self.nsp, self.fmt)
        if self.interpolation == "nearest":
            for a, s in zip(axes, self.size):
                x = np.repeat(x, s, axis=a)
            return x
        for a, s in zip(axes, self.size):
            x = _linear_resize_axis(x, a, x.shape[a] * s)
        return x

    def call_cuda(self, x, cu):
        if self.interpolation != "nearest":
            return NotImplemented
        for a, s in zip(_spatial_axes(x, self.nsp, self.fmt), self.size):
            x = cu.repeat(x, s, a)
        return x


def _linear_resize_axis(x, axis, out):
    """Linear interpolation along one axis with half-pixel centres, as TensorFlow's
    ``resize(method="bilinear", antialias=False)`` computes it for an upscale."""
    n = x.shape[axis]
    scale = np.float32(n) / np.float32(out)
    src = (np.arange(out, dtype=np.float32) + np.float32(0.5)) * scale - np.float32(0.5)
    lo = np.floor(src)
    frac = (src - lo).astype(x.dtype)
    i0 = np.clip(lo, 0, n - 1).astype(np.intp)
    i1 = np.clip(lo + 1, 0, n - 1).astype(np.intp)
    shape = [1] * x.ndim
    shape[axis] = out
    a = np.take(x, i0, axis=axis)
    b = np.take(x, i1, axis=axis)
    return a + (b - a) * frac.reshape(shape)


# ---------------------------------------------------------------------- merging

class Merge(Layer):
    keras_names = ("Add", "Subtract", "Multiply", "Average", "Maximum", "Minimum")
    multi_input = True
    _UFUNCS = {"Add": np.add, "Multiply": np.multiply, "Average": np.add,
               "Maximum": np.maximum, "Minimum": np.minimum}

    def call(self, xs, backend):
        if not isinstance(xs, (list, tuple)) or len(xs) < 1:
            raise InvalidArgumentError(f"layer {self.name!r} ({self.class_name}): expects a list of inputs")
        if self.class_name == "Subtract":
            if len(xs) != 2:
                raise InvalidArgumentError(f"layer {self.name!r} (Subtract): expects exactly 2 inputs; got {len(xs)}")
            return xs[0] - xs[1]
        op = self._UFUNCS[self.class_name]
        y = xs[0]
        for t in xs[1:]:
            y = op(y, t)
        if self.class_name == "Average":
            y = y / y.dtype.type(len(xs))
        return y if len(xs) > 1 else y.copy()

    def call_cuda(self, xs, cu):
        if not isinstance(xs, (list, tuple)) or len(xs) < 2 or len({tuple(a.shape) for a in xs}) != 1 \
                or (self.class_name == "Subtract" and len(xs) != 2):
            return NotImplemented
        return cu.merge(self.class_name.lower(), xs)

    donates = True

    def call_donated(self, xs, backend, donated):
        # the same operations in the same order as call(), written into a donated input
        # that already has the result's shape and dtype
        if not isinstance(xs, (list, tuple)) or len(xs) < 2:
            return self.call(xs, backend)
        try:
            shape = np.broadcast_shapes(*(np.shape(t) for t in xs))
        except ValueError:
            return self.call(xs, backend)
        dtype = np.result_type(*xs)
        # only the first two inputs: the first operation reads both before anything is written
        out = next((xs[j] for j in donated if j < 2 and xs[j].shape == shape and xs[j].dtype == dtype), None)
        if out is None:
            return self.call(xs, backend)
        if self.class_name == "Subtract":
            if len(xs) != 2:
                return self.call(xs, backend)
            return np.subtract(xs[0], xs[1], out=out)
        op = self._UFUNCS[self.class_name]
        op(xs[0], xs[1], out=out)
        for t in xs[2:]:
            op(out, t, out=out)
        if self.class_name == "Average":
            np.true_divide(out, out.dtype.type(len(xs)), out=out)
        return out


class Concatenate(Layer):
    keras_names = ("Concatenate",)
    multi_input = True

    def parse(self, config):
        self.axis = config.get("axis", -1)
        if not isinstance(self.axis, int):
            raise ModelFormatError(f"layer {self.name!r} (Concatenate): bad axis {self.axis!r}")

    def call(self, xs, backend):
        return np.concatenate(xs, axis=self.axis)

    def call_cuda(self, xs, cu):
        nd = {len(a.shape) for a in xs}
        if len(nd) != 1 or max(nd) > 5 or not -max(nd) <= self.axis < max(nd) or len(
                {tuple(d for i, d in enumerate(a.shape) if i != self.axis % max(nd)) for a in xs}) != 1:
            return self.call([cu.to_host(a) for a in xs], "cuda")   # the host error message
        return cu.concatenate(xs, self.axis)


class KerasOp(Layer):
    """A ``keras.ops`` call recorded in a functional graph (``x + 3.0``, ``x * (1 / 6)``,
    ``ops.maximum(a, b)``): module ``keras.src.ops.numpy``, arguments tensors or constants.

    Only the fixed table :data:`OPS` is served; the constants are numbers (or small
    nested lists of numbers) read from the call node.
    """
    keras_names = ("Add", "Subtract", "Multiply", "Divide", "TrueDivide", "Maximum", "Minimum",
                   "Power", "Negative")
    multi_input = True
    _FUNCS = {"Add": np.add, "Subtract": np.subtract, "Multiply": np.multiply, "Divide": np.divide,
              "TrueDivide": np.divide, "Maximum": np.maximum, "Minimum": np.minimum,
              "Power": np.power, "Negative": np.negative}
    _ARITY = {"Negative": 1}

    def parse(self, config):
        self.template = None

    def set_template(self, template, where):
        """``template``: one entry per positional argument, None for a tensor, else an array."""
        n = self._ARITY.get(self.class_name, 2)
        if len(template) != n:
            raise ModelFormatError(f"{where}: {self.class_name} takes {n} arguments; the call gives {len(template)}")
        if all(t is not None for t in template):
            raise UnsupportedLayerError(f"{where}: a {self.class_name} call without any tensor argument")
        if self.template is not None and not _same_template(self.template, template):
            raise UnsupportedLayerError(f"{where}: the op is called several times with different constants")
        self.template = template

    def call(self, xs, backend):
        it = iter(xs if isinstance(xs, list) else [xs])
        args = []
        for t in self.template:
            if t is None:
                args.append(next(it))
            else:
                args.append(t)
        dtype = next(a.dtype for a, t in zip(args, self.template) if t is None)
        args = [a.astype(dtype) if t is not None else a for a, t in zip(args, self.template)]
        return np.asarray(self._FUNCS[self.class_name](*args), dtype=dtype)


def _same_template(a, b):
    return len(a) == len(b) and all(
        (x is None and y is None) or (x is not None and y is not None and x.shape == y.shape
                                      and np.array_equal(x, y)) for x, y in zip(a, b))


def op_constant(value, where, max_elements=1 << 16):
    """A constant argument of an op call: a number or a nested list of numbers -> float array."""
    def ok(v, depth):
        if depth > 8:
            return False
        if isinstance(v, bool) or isinstance(v, (int, float)):
            return True
        return isinstance(v, list) and len(v) <= max_elements and all(ok(u, depth + 1) for u in v)
    if not ok(value, 0):
        raise UnsupportedLayerError(f"{where}: a constant argument {str(value)[:80]!r} is not supported "
                                    f"(only numbers and small lists of numbers)")
    arr = np.asarray(value, dtype=np.float64)
    if arr.dtype == object or arr.size > max_elements:
        raise UnsupportedLayerError(f"{where}: a constant argument of shape {arr.shape} is not supported")
    return arr


# ---------------------------------------------------------------------- the table

#: Layers refused because they would run code named or held by the file (Python bytecode,
#: a TensorFlow function by name, a pickled torch module, a JAX function, a SavedModel path).
CODE_LAYERS = ("Lambda", "TFOpLambda", "SlicingOpLambda", "TorchModuleWrapper", "JaxLayer", "FlaxLayer",
               "TFSMLayer")

_CLASSES = (InputLayer, Identity, Conv, ConvTranspose, DepthwiseConv, SeparableConv, Dense, Pool,
            GlobalPool, BatchNormalization, LayerNormalization, Normalization, Rescaling, Activation,
            ReLU, LeakyReLU, ELU, Softmax, PReLU, Flatten, Reshape, Permute, ZeroPadding, Cropping,
            UpSampling, Merge, Concatenate)

#: Keras class name -> implementation (the only lookup ever made from a file's class_name).
LAYERS = {name: cls for cls in _CLASSES for name in cls.keras_names}

#: ``keras.ops`` operations recorded in functional graphs (module ``keras.src.ops.*``), by class name.
OPS = {name: KerasOp for name in KerasOp.keras_names}

#: Names accepted for nested models.
MODEL_CLASSES = ("Sequential", "Functional", "Model")


def supported_layers():
    """Sorted Keras class names the engine can load (layers and nested models, plus any
    layers registered with :func:`register_layer`).

    >>> "Conv2D" in supported_layers()
    True
    """
    return sorted(set(LAYERS) | set(MODEL_CLASSES) | set(_CUSTOM))


#: Layers registered by the caller's code (never by a file): name -> Layer subclass.
_CUSTOM = {}


def register_layer(name, cls=None, *, override=False):
    """Register a layer implementation for class name or registered name ``name``.

    Model files can only name classes; the code that runs them is chosen by the
    caller. ``cls`` must subclass :class:`fastconv.models.Layer` (override
    ``parse``, ``weight_spec``, ``call``; set ``multi_input = True`` for a layer
    taking a list). ``name`` is matched first against an entry's
    ``registered_name`` (``"my_package>MyLayer"``, what
    ``keras.saving.register_keras_serializable`` writes), then its
    ``class_name``. Built-in and code-running names (``Conv2D``, ``Lambda``...)
    cannot be replaced unless ``override=True``. Usable as a decorator::

        @fastconv.models.register_layer("my_package>Scale")
        class Scale(fastconv.models.Layer):
            def parse(self, config):
                self.factor = float(config["factor"])
            def call(self, x, backend):
                return x * self.factor

    Returns ``cls``. :func:`unregister_layer` removes a registration.
    """
    if cls is None:
        return lambda c: register_layer(name, c, override=override)
    if not isinstance(name, str) or not name:
        raise InvalidArgumentError(f"register_layer: argument `name` must be a non-empty str; got {name!r}")
    if not (isinstance(cls, type) and issubclass(cls, Layer)):
        raise InvalidArgumentError(
            f"register_layer: argument `cls` must be a subclass of fastconv.models.Layer; got {cls!r}")
    if name in CODE_LAYERS or name.split(">")[-1] in CODE_LAYERS:
        raise InvalidArgumentError(
            f"register_layer: {name!r} names a layer that runs code from the file; it is always refused")
    if not override and (name in LAYERS or name in MODEL_CLASSES or name in OPS):
        raise InvalidArgumentError(
            f"register_layer: {name!r} is a built-in Keras class; pass override=True to replace it")
    _CUSTOM[name] = cls
    return cls


def unregister_layer(name):
    """Remove a registration made with :func:`register_layer` (no error if absent)."""
    _CUSTOM.pop(name, None)


def custom_layer(class_name, registered_name=None):
    """The caller-registered implementation for a layer entry, or None."""
    if not _CUSTOM:
        return None
    if isinstance(registered_name, str) and registered_name in _CUSTOM:
        return _CUSTOM[registered_name]
    if isinstance(class_name, str):
        return _CUSTOM.get(class_name)
    return None


def refuse_code(layer_name, class_name):
    raise UnsafeModelError(
        f"layer {layer_name!r} is a {class_name} layer: it holds Python code (a function or its "
        f"bytecode) that would have to be executed to run the model, and fastconv never executes "
        f"code from a model file. Replace it with built-in layers and re-export the model.")


__all__ = ["Layer", "LAYERS", "OPS", "supported_layers", "register_layer", "unregister_layer"]
