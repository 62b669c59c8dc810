"""Geometry shared by the CPU backends' kernels (pure Python, no compiled code)."""


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
