"""Cython backend, direct kernels: ``depthwise_conv`` and the global pools (being written).

``OPS`` lists the kernel-contract names this module implements so far.
"""

OPS = frozenset()
