# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""Max and average pooling over (N, D, H, W, C) channels-last arrays, OpenMP over output rows.

The innermost loop runs along channels, contiguous in memory, so it vectorises;
each thread owns whole output rows (n, od, oh), so no two threads write the same line.
"""

from cython.parallel cimport prange

ctypedef fused real:
    float
    double


def max_pool(const real[:, :, :, :, ::1] x, real[:, :, :, :, ::1] y, tuple pool, tuple strides,
             tuple before, int num_threads):
    """``y[n, o] = max over the window at o`` of ``x``; padded positions are skipped.

    NaN propagates, as in NumPy's ``maximum``.
    """
    cdef Py_ssize_t D = x.shape[1], H = x.shape[2], W = x.shape[3], C = x.shape[4]
    cdef Py_ssize_t OD = y.shape[1], OH = y.shape[2], OW = y.shape[3]
    cdef Py_ssize_t KD = pool[0], KH = pool[1], KW = pool[2]
    cdef Py_ssize_t SD = strides[0], SH = strides[1], SW = strides[2]
    cdef Py_ssize_t LD = before[0], LH = before[1], LW = before[2]
    cdef Py_ssize_t rows = y.shape[0] * OD * OH
    cdef Py_ssize_t row, n, od, oh, ow, c, kd, kh, kw, i_d, i_h, i_w, first
    cdef const real* src
    cdef real* dst
    cdef real v, o
    with nogil:
        for row in prange(rows, schedule="static", num_threads=num_threads):
            n = row // (OD * OH)
            od = (row // OH) % OD
            oh = row % OH
            for ow in range(OW):
                dst = &y[n, od, oh, ow, 0]
                first = 1
                for kd in range(KD):
                    i_d = od * SD - LD + kd
                    if i_d < 0 or i_d >= D:
                        continue
                    for kh in range(KH):
                        i_h = oh * SH - LH + kh
                        if i_h < 0 or i_h >= H:
                            continue
                        for kw in range(KW):
                            i_w = ow * SW - LW + kw
                            if i_w < 0 or i_w >= W:
                                continue
                            src = &x[n, i_d, i_h, i_w, 0]
                            if first:
                                for c in range(C):
                                    dst[c] = src[c]
                                first = 0
                            else:
                                for c in range(C):
                                    v = src[c]
                                    o = dst[c]
                                    dst[c] = v if (v > o or v != v) else o


def avg_pool(const real[:, :, :, :, ::1] x, real[:, :, :, :, ::1] y, tuple pool, tuple strides,
             tuple before, int num_threads):
    """``y[n, o] = mean over the unpadded part of the window at o`` of ``x``."""
    cdef Py_ssize_t D = x.shape[1], H = x.shape[2], W = x.shape[3], C = x.shape[4]
    cdef Py_ssize_t OD = y.shape[1], OH = y.shape[2], OW = y.shape[3]
    cdef Py_ssize_t KD = pool[0], KH = pool[1], KW = pool[2]
    cdef Py_ssize_t SD = strides[0], SH = strides[1], SW = strides[2]
    cdef Py_ssize_t LD = before[0], LH = before[1], LW = before[2]
    cdef Py_ssize_t rows = y.shape[0] * OD * OH
    cdef Py_ssize_t row, n, od, oh, ow, c, kd, kh, kw, i_d, i_h, i_w, count
    cdef const real* src
    cdef real* dst
    cdef real scale
    with nogil:
        for row in prange(rows, schedule="static", num_threads=num_threads):
            n = row // (OD * OH)
            od = (row // OH) % OD
            oh = row % OH
            for ow in range(OW):
                dst = &y[n, od, oh, ow, 0]
                for c in range(C):
                    dst[c] = 0
                count = 0
                for kd in range(KD):
                    i_d = od * SD - LD + kd
                    if i_d < 0 or i_d >= D:
                        continue
                    for kh in range(KH):
                        i_h = oh * SH - LH + kh
                        if i_h < 0 or i_h >= H:
                            continue
                        for kw in range(KW):
                            i_w = ow * SW - LW + kw
                            if i_w < 0 or i_w >= W:
                                continue
                            src = &x[n, i_d, i_h, i_w, 0]
                            count = count + 1
                            for c in range(C):
                                dst[c] = dst[c] + src[c]
                scale = 1
                scale = scale / count
                for c in range(C):
                    dst[c] = dst[c] * scale
