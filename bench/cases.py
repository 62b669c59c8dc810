"""The canonical benchmark cases (issue 3's list), as fastconv calls and PyTorch equivalents.

Each case builds its inputs once (seeded), and knows:
* ``call(backend)``: the fastconv call,
* ``torch_call()``: PyTorch doing the same work on channels_last tensors (or
  None when torch is not importable),
* ``flops``: 2 x MACs of the convolution (pooling: one op per window element).
"""

import math
from dataclasses import dataclass, field

import numpy as np

import fastconv


@dataclass
class Case:
    name: str
    op: str
    x_shape: tuple
    weight_shapes: tuple
    kwargs: dict
    flops: float
    torch_fn: object = None
    arrays: list = field(default_factory=list)

    def build(self):
        if not self.arrays:
            rng = np.random.default_rng(0)
            self.arrays = [rng.standard_normal(self.x_shape).astype(np.float32)] + [
                (rng.standard_normal(s) / math.sqrt(math.prod(s[:-1]))).astype(np.float32)
                for s in self.weight_shapes]
        return self.arrays

    def call(self, backend):
        return getattr(fastconv, self.op)(*self.build(), backend=backend, **self.kwargs)


def _conv_flops(out_pixels, k, cin_per_group, f):
    return 2.0 * out_pixels * math.prod(k) * cin_per_group * f


CASES = [
    Case("conv2d 3x3 same 1x56x56x64->64", "conv2d", (1, 56, 56, 64), ((3, 3, 64, 64), (64,)),
         dict(padding="same"), _conv_flops(56 * 56, (3, 3), 64, 64)),
    Case("conv2d 3x3/2 same 1x224x224x3->32", "conv2d", (1, 224, 224, 3), ((3, 3, 3, 32), (32,)),
         dict(padding="same", strides=2), _conv_flops(112 * 112, (3, 3), 3, 32)),
    Case("conv2d 1x1 1x56x56x256->64", "conv2d", (1, 56, 56, 256), ((1, 1, 256, 64), (64,)),
         dict(), _conv_flops(56 * 56, (1, 1), 256, 64)),
    Case("conv2d 3x3 same 8x28x28x128->128", "conv2d", (8, 28, 28, 128), ((3, 3, 128, 128), (128,)),
         dict(padding="same"), _conv_flops(8 * 28 * 28, (3, 3), 128, 128)),
    Case("conv2d 3x3 same 1x224x224x64->64", "conv2d", (1, 224, 224, 64), ((3, 3, 64, 64), (64,)),
         dict(padding="same"), _conv_flops(224 * 224, (3, 3), 64, 64)),
    Case("depthwise_conv2d 3x3 same 1x112x112x32", "depthwise_conv2d", (1, 112, 112, 32),
         ((3, 3, 32, 1), (32,)), dict(padding="same"), _conv_flops(112 * 112, (3, 3), 1, 32)),
    Case("conv2d 3x3 same groups=32 1x56x56x128->128", "conv2d", (1, 56, 56, 128),
         ((3, 3, 4, 128), (128,)), dict(padding="same", groups=32), _conv_flops(56 * 56, (3, 3), 4, 128)),
    Case("separable_conv2d 3x3 same 1x38x38x256->256", "separable_conv2d", (1, 38, 38, 256),
         ((3, 3, 256, 1), (1, 1, 256, 256), (256,)), dict(padding="same"),
         _conv_flops(38 * 38, (3, 3), 1, 256) + _conv_flops(38 * 38, (1, 1), 256, 256)),
    Case("conv1d k5 dil2 same 8x1024x64->64", "conv1d", (8, 1024, 64), ((5, 64, 64), (64,)),
         dict(padding="same", dilation_rate=2), _conv_flops(8 * 1024, (5,), 64, 64)),
    Case("conv3d 3x3x3 valid 4x32x32x32x1->16", "conv3d", (4, 32, 32, 32, 1), ((3, 3, 3, 1, 16), (16,)),
         dict(), _conv_flops(4 * 30 ** 3, (3, 3, 3), 1, 16)),
    Case("conv2d_transpose 3x3/2 same 1x16x16x32->64", "conv2d_transpose", (1, 16, 16, 32),
         ((3, 3, 64, 32), (64,)), dict(padding="same", strides=2), _conv_flops(16 * 16, (3, 3), 32, 64)),
    Case("conv2d_transpose 4x4/2 same 1x56x56x128->64", "conv2d_transpose", (1, 56, 56, 128),
         ((4, 4, 64, 128), (64,)), dict(padding="same", strides=2), _conv_flops(56 * 56, (4, 4), 128, 64)),
    # a few more per variant: 3-D same, strided 1-D, 1-D transposed, 3-D and 1-D pooling
    Case("conv3d 3x3x3 same 1x16x56x56x64->64", "conv3d", (1, 16, 56, 56, 64), ((3, 3, 3, 64, 64), (64,)),
         dict(padding="same"), _conv_flops(16 * 56 * 56, (3, 3, 3), 64, 64)),
    Case("conv1d k3/2 same 8x1024x64->128", "conv1d", (8, 1024, 64), ((3, 64, 128), (128,)),
         dict(padding="same", strides=2), _conv_flops(8 * 512, (3,), 64, 128)),
    Case("conv1d_transpose k4/2 same 8x256x64->32", "conv1d_transpose", (8, 256, 64), ((4, 32, 64), (32,)),
         dict(padding="same", strides=2), _conv_flops(8 * 256, (4,), 64, 32)),
    Case("max_pool3d 2x2x2 1x16x56x56x64", "max_pool3d", (1, 16, 56, 56, 64), (), dict(pool_size=2),
         8 * 28 * 28 * 64 * 8.0),
    Case("avg_pool1d 3/1 same 8x1024x64", "avg_pool1d", (8, 1024, 64), (),
         dict(pool_size=3, strides=1, padding="same"), 8 * 1024 * 64 * 3.0),
    # the remaining ops of the functional API, once each
    Case("conv3d_transpose 2x2x2/2 valid 1x8x28x28x32->16", "conv3d_transpose", (1, 8, 28, 28, 32),
         ((2, 2, 2, 16, 32), (16,)), dict(strides=2), _conv_flops(8 * 28 * 28, (2, 2, 2), 32, 16)),
    Case("depthwise_conv1d k3 same 8x1024x64", "depthwise_conv1d", (8, 1024, 64), ((3, 64, 1), (64,)),
         dict(padding="same"), _conv_flops(8 * 1024, (3,), 1, 64)),
    Case("separable_conv1d k3 same 8x1024x64->128", "separable_conv1d", (8, 1024, 64),
         ((3, 64, 1), (1, 64, 128), (128,)), dict(padding="same"),
         _conv_flops(8 * 1024, (3,), 1, 64) + _conv_flops(8 * 1024, (1,), 64, 128)),
    Case("spatially_separable_conv2d 3x1+1x3 same 1x112x112x32->32", "spatially_separable_conv2d",
         (1, 112, 112, 32), ((3, 1, 32, 32), (1, 3, 32, 32), (32,)), dict(padding="same"),
         2 * _conv_flops(112 * 112, (3,), 32, 32)),
    Case("max_pool1d 2 8x1024x64", "max_pool1d", (8, 1024, 64), (), dict(pool_size=2), 8 * 1024 * 64.0),
    Case("avg_pool3d 2x2x2 1x16x56x56x64", "avg_pool3d", (1, 16, 56, 56, 64), (), dict(pool_size=2),
         16 * 56 * 56 * 64.0),
    Case("global_avg_pool2d 1x56x56x256", "global_avg_pool2d", (1, 56, 56, 256), (), {}, 56 * 56 * 256.0),
    Case("global_max_pool2d 1x56x56x256", "global_max_pool2d", (1, 56, 56, 256), (), {}, 56 * 56 * 256.0),
    Case("global_avg_pool1d 8x1024x64", "global_avg_pool1d", (8, 1024, 64), (), {}, 8 * 1024 * 64.0),
    Case("global_max_pool3d 1x16x56x56x64", "global_max_pool3d", (1, 16, 56, 56, 64), (), {},
         16 * 56 * 56 * 64.0),
    Case("max_pool2d 2x2 1x112x112x64", "max_pool2d", (1, 112, 112, 64), (), dict(pool_size=2),
         56 * 56 * 64 * 4.0),
    Case("avg_pool2d 3x3/1 same 1x56x56x256", "avg_pool2d", (1, 56, 56, 256), (),
         dict(pool_size=3, strides=1, padding="same"), 56 * 56 * 256 * 9.0),
]
BY_NAME = {c.name: c for c in CASES}


def torch_call(case):
    """A zero-argument callable running PyTorch on the same work, or None without torch."""
    try:
        import torch
        import torch.nn.functional as F
    except ImportError:
        return None
    torch.set_num_threads(2)
    arrays = case.build()
    x = arrays[0]
    nsp = x.ndim - 2
    fmt = {2: torch.channels_last, 3: torch.channels_last_3d}.get(nsp)
    # NHWC numpy -> NCHW tensor with channels_last strides (no copy); 1-D stays NCL.
    tx = torch.from_numpy(x).permute(0, x.ndim - 1, *range(1, x.ndim - 1))
    tx = tx.contiguous(memory_format=fmt) if fmt else tx.contiguous()

    def w_conv(w):  # Keras (*k, cin, f) -> torch (f, cin, *k)
        return torch.from_numpy(np.ascontiguousarray(np.moveaxis(w, (-1, -2), (0, 1))))

    kw = case.kwargs
    pad = (lambda k: tuple(((ki - 1) * kw.get("dilation_rate", 1)) // 2 for ki in k)) \
        if kw.get("padding") == "same" else (lambda k: 0)
    op = case.op
    with torch.no_grad():
        if op in ("conv1d", "conv2d", "conv3d"):
            w, b = w_conv(arrays[1]), torch.from_numpy(arrays[2])
            if fmt:
                w = w.contiguous(memory_format=fmt)
            f = getattr(F, op)
            args = dict(stride=kw.get("strides", 1), padding=pad(arrays[1].shape[:nsp]),
                        dilation=kw.get("dilation_rate", 1), groups=kw.get("groups", 1))
            return lambda: f(tx, w, b, **args)
        conv = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[nsp]
        if op.startswith("depthwise") or op.startswith("separable"):
            dk = arrays[1]
            ksize, c = dk.shape[:nsp], dk.shape[-2]
            dw = torch.from_numpy(np.ascontiguousarray(np.moveaxis(dk.reshape(ksize + (1, -1)), (-1, -2), (0, 1))))
            if op.startswith("depthwise"):
                b = torch.from_numpy(arrays[2])
                return lambda: conv(tx, dw, b, padding=pad(ksize), groups=c)
            pw = w_conv(arrays[2])
            pw = pw.contiguous(memory_format=fmt) if fmt else pw
            b = torch.from_numpy(arrays[3])
            return lambda: conv(conv(tx, dw, padding=pad(ksize), groups=c), pw, b)
        if op == "spatially_separable_conv2d":
            cw, rw = w_conv(arrays[1]).contiguous(memory_format=fmt), w_conv(arrays[2]).contiguous(memory_format=fmt)
            b = torch.from_numpy(arrays[3])
            return lambda: F.conv2d(F.conv2d(tx, cw, padding=(1, 0)), rw, b, padding=(0, 1))
        if op.endswith("transpose"):
            # Keras (*k, f, cin) -> torch (cin, f, *k); "same" as padding + output_padding
            w = torch.from_numpy(np.ascontiguousarray(np.moveaxis(arrays[1], (-1, -2), (0, 1))))
            b = torch.from_numpy(arrays[2])
            k, st = arrays[1].shape[0], kw.get("strides", 1)
            f = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}[nsp]
            if kw.get("padding") != "same":
                return lambda: f(tx, w, b, stride=st)
            return lambda: f(tx, w, b, stride=st, padding=(k - 1) // 2 if k % 2 else k // 2 - 1,
                             output_padding=1 if k % 2 else 0)
        if op.startswith("global"):
            dims = tuple(range(2, 2 + nsp))
            if "max" in op:
                return lambda: tx.amax(dim=dims)
            return lambda: tx.mean(dim=dims)
        if op.startswith("max_pool"):
            f, k = getattr(F, op), kw.get("pool_size", 2)
            return lambda: f(tx, k)
        if op.startswith("avg_pool"):
            f, k = getattr(F, op), kw.get("pool_size", 2)
            pad = (k - 1) // 2 if kw.get("padding") == "same" else 0
            return lambda: f(tx, k, kw.get("strides") or k, padding=pad, count_include_pad=False)
    raise AssertionError(op)


def tf_call(case):
    """A zero-argument callable running the case's Keras 3 layer on TensorFlow (a
    ``tf.function`` of the layer, same weights), or None without TensorFlow."""
    try:
        import keras
        import tensorflow as tf
    except ImportError:
        return None
    arrays = case.build()
    x, weights = arrays[0], arrays[1:]
    nsp = x.ndim - 2
    kw, op, L = case.kwargs, case.op, keras.layers
    common = dict(strides=kw.get("strides", 1), padding=kw.get("padding", "valid"))
    if op.startswith("conv") and not op.endswith("transpose"):
        k = weights[0]
        layer = getattr(L, f"Conv{nsp}D")(k.shape[-1], k.shape[:nsp], dilation_rate=kw.get("dilation_rate", 1),
                                          groups=kw.get("groups", 1), **common)
    elif op.endswith("transpose"):
        k = weights[0]
        layer = getattr(L, f"Conv{nsp}DTranspose")(k.shape[-2], k.shape[:nsp], **common)
    elif op.startswith("depthwise"):
        k = weights[0]
        layer = getattr(L, f"DepthwiseConv{nsp}D")(k.shape[:nsp], depth_multiplier=k.shape[-1], **common)
    elif op.startswith("separable"):
        dk, pk = weights[0], weights[1]
        layer = getattr(L, f"SeparableConv{nsp}D")(pk.shape[-1], dk.shape[:nsp], depth_multiplier=dk.shape[-1],
                                                   **common)
    elif op.startswith("global"):
        layer = getattr(L, f"Global{'Max' if 'max' in op else 'Average'}Pooling{nsp}D")()
    elif op == "spatially_separable_conv2d":
        cw, rw = weights[0], weights[1]
        layer = keras.Sequential([L.Conv2D(cw.shape[-1], cw.shape[:2], padding=common["padding"], use_bias=False),
                                  L.Conv2D(rw.shape[-1], rw.shape[:2], padding=common["padding"])])
    elif "pool" in op:
        kind = "Max" if op.startswith("max") else "Average"
        layer = getattr(L, f"{kind}Pooling{nsp}D")(pool_size=kw.get("pool_size", 2), strides=kw.get("strides"),
                                                   padding=kw.get("padding", "valid"))
    else:
        raise AssertionError(op)
    layer.build(x.shape)
    if weights:
        layer.set_weights(list(weights))
    xt = tf.constant(x)
    fn = tf.function(layer)
    fn(xt)
    return lambda: fn(xt)


def ort_call(case):
    """A zero-argument callable running the case as a one-op ONNX graph in ONNX Runtime
    (2 threads, NCHW input prepared outside the timing, ONNX's native layout), or None
    without onnx/onnxruntime."""
    try:
        import onnxruntime as ort
        from onnx import TensorProto, helper, numpy_helper
    except ImportError:
        return None
    from fastconv.ops import _args as A
    arrays = case.build()
    x, weights = arrays[0], list(arrays[1:])
    nsp = x.ndim - 2
    kw, op = case.kwargs, case.op
    spatial = x.shape[1:-1]
    strides = A.int_tuple(kw.get("strides", 1), nsp, "strides", op)
    dilation = A.int_tuple(kw.get("dilation_rate", 1), nsp, "dilation_rate", op)
    padding = kw.get("padding", "valid")

    def pads_for(ksize, dil=dilation, s=strides):
        _, pads = A.conv_geometry(spatial, ksize, s, dil, padding, op)
        return [p[0] for p in pads] + [p[1] for p in pads]

    def to_oihw(w):  # Keras (*k, in, out) -> ONNX (out, in, *k)
        return np.ascontiguousarray(np.moveaxis(w, (-1, -2), (0, 1)))

    nodes, inits = [], []

    def init(name, arr):
        inits.append(numpy_helper.from_array(np.ascontiguousarray(arr, np.float32), name))
        return name

    if op.startswith("conv") and not op.endswith("transpose") or op.startswith("depthwise"):
        k = weights[0]
        ksize = k.shape[:nsp]
        if op.startswith("depthwise"):
            c, m = k.shape[-2], k.shape[-1]
            w, group = np.moveaxis(k.reshape(ksize + (1, c * m)), (-1, -2), (0, 1)), c
        else:
            w, group = to_oihw(k), kw.get("groups", 1)
        inputs = ["x", init("w", w)] + ([init("b", weights[1])] if len(weights) > 1 else [])
        nodes.append(helper.make_node("Conv", inputs, ["y"], kernel_shape=list(ksize), strides=list(strides),
                                      dilations=list(dilation), pads=pads_for(ksize), group=group))
    elif op.startswith("separable"):
        dk, pk = weights[0], weights[1]
        ksize, c, m = dk.shape[:nsp], dk.shape[-2], dk.shape[-1]
        dw = np.moveaxis(dk.reshape(ksize + (1, c * m)), (-1, -2), (0, 1))
        nodes.append(helper.make_node("Conv", ["x", init("dw", dw)], ["mid"], kernel_shape=list(ksize),
                                      strides=list(strides), dilations=list(dilation), pads=pads_for(ksize),
                                      group=c))
        nodes.append(helper.make_node("Conv", ["mid", init("pw", to_oihw(pk)), init("b", weights[2])], ["y"],
                                      kernel_shape=[1] * nsp))
    elif op.endswith("transpose"):
        k = weights[0]  # Keras (*k, f, in) -> ONNX ConvTranspose (in, f, *k)
        ksize = k.shape[:nsp]
        w = np.ascontiguousarray(np.moveaxis(k, (-1, -2), (0, 1)))
        out, before = A.conv_transpose_geometry(spatial, ksize, strides, dilation, padding, None, op)
        # explicit pads (ONNX's own choice from output_shape puts the odd pixel first, Keras after)
        full = [s_ * (n - 1) + (k_ - 1) * d + 1 for s_, n, k_, d in zip(strides, spatial, ksize, dilation)]
        after = [max(f - o - b, 0) for f, o, b in zip(full, out, before)]
        extra = [o - (f - b - a) for o, f, b, a in zip(out, full, before, after)]
        nodes.append(helper.make_node("ConvTranspose", ["x", init("w", w), init("b", weights[1])], ["y"],
                                      kernel_shape=list(ksize), strides=list(strides), dilations=list(dilation),
                                      pads=list(before) + after, output_padding=extra))
    elif op.startswith("global"):
        nodes.append(helper.make_node("GlobalMaxPool" if "max" in op else "GlobalAveragePool", ["x"], ["g"]))
        nodes.append(helper.make_node("Flatten", ["g"], ["y"]))
    elif op == "spatially_separable_conv2d":
        cw, rw = weights[0], weights[1]
        nodes.append(helper.make_node("Conv", ["x", init("cw", to_oihw(cw))], ["mid"], kernel_shape=list(cw.shape[:2]),
                                      pads=pads_for(cw.shape[:2], (1, 1), (1, 1))))
        nodes.append(helper.make_node("Conv", ["mid", init("rw", to_oihw(rw)), init("b", weights[2])], ["y"],
                                      kernel_shape=list(rw.shape[:2]), pads=pads_for(rw.shape[:2], (1, 1), (1, 1))))
    elif "pool" in op:
        pool = A.int_tuple(kw.get("pool_size", 2), nsp, "pool_size", op)
        s = pool if kw.get("strides") is None else A.int_tuple(kw["strides"], nsp, "strides", op)
        _, pads = A.pool_geometry(spatial, pool, s, padding, op)
        attrs = dict(kernel_shape=list(pool), strides=list(s), pads=[p[0] for p in pads] + [p[1] for p in pads])
        if op.startswith("avg"):
            attrs["count_include_pad"] = 0
        nodes.append(helper.make_node("MaxPool" if op.startswith("max") else "AveragePool", ["x"], ["y"], **attrs))
    else:
        raise AssertionError(op)
    xn = np.ascontiguousarray(np.moveaxis(x, -1, 1))
    graph = helper.make_graph(nodes, "case", [helper.make_tensor_value_info("x", TensorProto.FLOAT, xn.shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = min(model.ir_version, 8)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 2
    opts.inter_op_num_threads = 1
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    feed = {"x": xn}
    sess.run(None, feed)
    return lambda: sess.run(None, feed)[0]
