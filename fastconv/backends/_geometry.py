"""Geometry shared by the CPU backends' kernels (pure Python, no compiled code)."""

import numpy as np


def transpose_phases(n_in, k, s, d, before, n_out):
    """Split one axis of a transposed convolution into its ``s`` output phases.

    Output ``o`` receives input ``i`` through tap ``t`` when ``o + before = i * s + t * d``.
    (Keras allows dilation > 1 only with stride 1.)  The outputs ``o = s * j + r - before``
    of phase ``r`` take taps ``t = r, r + s, ...`` and form a stride-1 correlation of the
    input with those taps reversed: ``y_r[j] = sum_u x[j - u * d] w[r + s * u]``, i.e. job
    output ``q`` (``j = j0 + q``) reads ``x[q + v * d' - pad]`` with ``pad = (U - 1) * d' - j0``.

    Returns
    -------
    list of (taps, d', pad, first output, count)
        One entry per phase with outputs (``n_in`` is not needed: a phase's input is the
        whole axis); ``taps`` (kernel indices, correlation order) is empty when no tap
        reaches the phase; ``pad`` may be negative (the phase starts inside the input).
    """
    out = []
    d_eff = d if s == 1 else 1
    for r in range(s):
        taps = list(range(r, k, s))[::-1]
        j0 = -((r - before) // s)           # ceil((before - r) / s)
        j1 = (n_out - 1 + before - r) // s
        count = j1 - j0 + 1
        if count <= 0:
            continue
        pad = (len(taps) - 1) * d_eff - j0
        out.append((taps, d_eff, pad, s * j0 + r - before, count))
    return out


def pad_for_nonfinite(x, w, pads):
    """``(x, pads)`` for a forward window op, with the zero padding made explicit when the
    kernel ``w`` holds an inf or NaN.

    The zero-padded reference adds ``0 * w`` for every padded tap, which is NaN for a
    non-finite weight; the compiled kernels skip padded rows and some padded columns (for
    finite weights that changes nothing, since ``0 * w`` is zero).  With a non-finite weight
    they run on the explicitly padded input instead, without padding, so their NaNs fall where
    the reference's do.  Checking costs one pass over the weights, and only ops with padding
    pay it."""
    if not any(lo or hi for lo, hi in pads) or np.isfinite(w).all():
        return x, pads
    return np.pad(x, ((0, 0),) + tuple(tuple(p) for p in pads) + ((0, 0),)), ((0, 0),) * len(pads)
