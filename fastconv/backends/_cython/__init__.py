"""Compiled Cython kernels (OpenMP). Built from source by ``pip install``."""
