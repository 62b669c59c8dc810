# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""Max and average pooling over (N, D, H, W, C) channels-last arrays, OpenMP over output rows.

The innermost loop runs along channels, contiguous in memory, so it vectorises;
each thread owns whole output rows (n, od, oh), so no two threads write the same line.
"""

from cython.parallel cimport prange

ctypedef fused real:
    float
    double


cdef inline void _pool_pixel(const real[:, :, :, :, ::1] x, real* dst, Py_ssize_t n, Py_ssize_t od,
                             Py_ssize_t oh, Py_ssize_t ow, Py_ssize_t[3] k, Py_ssize_t[3] s,
                             Py_ssize_t[3] lo, bint is_max) noexcept nogil:
    """One output pixel: max (NaN propagates, padding never wins) or mean of the real elements."""
    cdef Py_ssize_t C = x.shape[4], kd, kh, kw, i_d, i_h, i_w, c, count = 0
    cdef const real* src
    cdef real v, o
    if not is_max:
        for c in range(C):
            dst[c] = 0
    for kd in range(k[0]):
        i_d = od * s[0] - lo[0] + kd
        if i_d < 0 or i_d >= x.shape[1]:
            continue
        for kh in range(k[1]):
            i_h = oh * s[1] - lo[1] + kh
            if i_h < 0 or i_h >= x.shape[2]:
                continue
            for kw in range(k[2]):
                i_w = ow * s[2] - lo[2] + kw
                if i_w < 0 or i_w >= x.shape[3]:
                    continue
                src = &x[n, i_d, i_h, i_w, 0]
                if not is_max:
                    for c in range(C):
                        dst[c] = dst[c] + src[c]
                elif count == 0:
                    for c in range(C):
                        dst[c] = src[c]
                else:
                    for c in range(C):
                        v = src[c]
                        o = dst[c]
                        dst[c] = v if (v > o or v != v) else o
                count = count + 1
    if not is_max:
        v = 1
        v = v / count
        for c in range(C):
            dst[c] = dst[c] * v


cdef void _pool(const real[:, :, :, :, ::1] x, real[:, :, :, :, ::1] y, tuple pool, tuple strides,
                tuple before, int num_threads, bint is_max):
    cdef Py_ssize_t[3] k, s, lo
    cdef Py_ssize_t i
    for i in range(3):
        k[i], s[i], lo[i] = pool[i], strides[i], before[i]
    cdef Py_ssize_t OD = y.shape[1], OH = y.shape[2], OW = y.shape[3]
    cdef Py_ssize_t row, n, od, oh, ow
    with nogil:
        for row in prange(y.shape[0] * OD * OH, schedule="static", num_threads=num_threads):
            n = row // (OD * OH)
            od = (row // OH) % OD
            oh = row % OH
            for ow in range(OW):
                _pool_pixel(x, &y[n, od, oh, ow, 0], n, od, oh, ow, k, s, lo, is_max)


def max_pool(const real[:, :, :, :, ::1] x, real[:, :, :, :, ::1] y, tuple pool, tuple strides,
             tuple before, int num_threads):
    """``y[n, o] = max over the window at o`` of ``x``; padded positions are skipped."""
    _pool(x, y, pool, strides, before, num_threads, True)


def avg_pool(const real[:, :, :, :, ::1] x, real[:, :, :, :, ::1] y, tuple pool, tuple strides,
             tuple before, int num_threads):
    """``y[n, o] = mean over the unpadded part of the window at o`` of ``x``."""
    _pool(x, y, pool, strides, before, num_threads, False)
