"""Cython backend, convolutions: ``conv`` and ``conv_transpose`` (being written).

``OPS`` lists the kernel-contract names this module implements so far.
"""

OPS = frozenset()
