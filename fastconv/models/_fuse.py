"""Load-time graph rewrites: fold BatchNormalization into the op before it, fuse
activation layers into it, and drop identity layers.

A rewrite happens only where it is exact in real arithmetic and invisible from
outside: the intermediate tensor has exactly one consumer, is not a model
output, and both layers are called once (not shared). Rewritten layers are
copies; the originals (used for intermediate outputs) are left alone.
"""

import copy

import numpy as np

from . import layers as L

_FOLDABLE = (L.Conv, L.ConvTranspose, L.DepthwiseConv, L.SeparableConv, L.Dense)


def _activation_of(layer):
    """The fastconv activation name equivalent to an activation-type layer, or None."""
    if isinstance(layer, L.Activation):
        return layer.activation or "linear"
    if isinstance(layer, L.ReLU) and layer.slope == 0 and layer.threshold == 0:
        if layer.max_value is None:
            return "relu"
        if layer.max_value == 6.0:
            return "relu6"
    if isinstance(layer, L.ELU) and layer.alpha == 1.0:
        return "elu"
    if isinstance(layer, L.LeakyReLU) and layer.slope == 0.2:
        return "leaky_relu"
    if isinstance(layer, L.Softmax) and layer.axes == [-1]:
        return "softmax"
    return None


def _channel_axis_ok(op, bn):
    """Whether ``bn`` normalises exactly the output channels of ``op``."""
    if len(bn.axes) != 1:
        return False
    axis = bn.axes[0]
    if isinstance(op, L.Dense):
        return axis == -1
    rank = op.nsp + 2
    a = axis % rank if -rank <= axis < rank else None
    return a == (rank - 1 if op.fmt == "channels_last" else 1)


def _fold_bn(op, bn):
    """A copy of ``op`` with ``bn`` folded in, or None if the shapes don't fit."""
    mul, add = bn.mul64, bn.add64
    w = {k: v.astype(np.float64) for k, v in op.weights.items()}
    if isinstance(op, L.SeparableConv):
        key, axis = "pointwise_kernel", -1
    else:
        key, axis = "kernel", (-2 if isinstance(op, L.ConvTranspose) else -1)
    k = w[key]
    if isinstance(op, L.DepthwiseConv):
        if k.shape[-2] * k.shape[-1] != mul.size:
            return None
        k = k * mul.reshape(k.shape[-2:])
    else:
        if k.shape[axis] != mul.size:
            return None
        shape = [1] * k.ndim
        shape[axis] = mul.size
        k = k * mul.reshape(shape)
    bias = w.get("bias", np.zeros(mul.size))
    new = copy.copy(op)
    new.weights = dict(op.weights)
    new.weights[key] = k.astype(L.DTYPE)
    new.weights["bias"] = (bias * mul + add).astype(L.DTYPE)
    new.use_bias = True
    return new


def optimize(graph):
    """Return (plan, keys the plan produces) for ``graph`` (see module doc)."""
    from .model import _flatten  # noqa: avoid an import cycle at module level

    plain = graph.plain_plan
    uses = {}
    for step in plain:
        for k in step.input_keys:
            uses[k] = uses.get(k, 0) + 1
    outputs = set(_flatten(graph.outputs_struct))
    calls = {}
    for node in graph.nodes:
        calls[node.layer.name] = calls.get(node.layer.name, 0) + 1
    consumer = {}
    for step in plain:
        for k in step.input_keys:
            consumer[k] = step

    plan, removed = [], set()
    from .model import _Step
    # ZeroPadding feeding a "valid" convolution alone becomes that convolution's explicit
    # padding: no padded copy of the activations (exact: the same zeros, the same sums).
    padded_by = {}
    for step in plain:
        zp = step.layer
        if not isinstance(zp, L.ZeroPadding) or step.inputs is None or calls.get(zp.name, 0) != 1:
            continue
        out = step.outputs[0]
        if uses.get(out, 0) != 1 or out in outputs:
            continue
        nxt = consumer[out]
        conv = nxt.layer
        if isinstance(conv, (L.Conv, L.DepthwiseConv, L.SeparableConv)) and calls.get(conv.name, 0) == 1 \
                and nxt.inputs == out and conv.padding == "valid" and conv.nsp == zp.nsp and conv.fmt == zp.fmt:
            padded_by[id(nxt)] = step
            removed.add(id(step))
    for step in plain:
        if id(step) in removed:
            continue
        zp_step = padded_by.get(id(step))
        if zp_step is not None:
            conv = copy.copy(step.layer)
            conv.padding = tuple(tuple(p) for p in zp_step.layer.pads)
            conv.absorbed = getattr(step.layer, "absorbed", ()) + (zp_step.layer.name,)
            step = _Step(conv, zp_step.inputs, step.outputs)
        layer = step.layer
        if step.inputs is None or not isinstance(layer, _FOLDABLE) or calls.get(layer.name, 0) != 1:
            plan.append(step)
            continue
        cur = layer
        out = step.outputs[0]
        while True:
            if uses.get(out, 0) != 1 or out in outputs:
                break
            nxt = consumer[out]
            nl = nxt.layer
            if calls.get(nl.name, 0) != 1 or nxt.inputs != out:
                break
            if isinstance(nl, L.Identity):
                pass
            elif isinstance(nl, L.BatchNormalization) and cur.activation is None \
                    and _channel_axis_ok(cur, nl):
                folded = _fold_bn(cur, nl)
                if folded is None:
                    break
                cur = folded
            elif cur.activation is None and _activation_of(nl) is not None:
                cur = copy.copy(cur)
                act = _activation_of(nl)
                cur.activation = None if act == "linear" else act
            else:
                break
            removed.add(id(nxt))
            out = nxt.outputs[0]
        if cur is layer and out == step.outputs[0]:
            plan.append(step)
        else:
            plan.append(_Step(cur, step.inputs, [out]))
    if len(plan) == len(plain):
        return plain, {k for st in plain for k in st.outputs}
    return plan, {k for st in plan for k in st.outputs}
