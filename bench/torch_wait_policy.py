"""PyTorch alone (no fastconv in the process), 2 threads, channels_last: medians of 300
calls of three layers, to compare its OpenMP defaults with ``OMP_WAIT_POLICY=PASSIVE``::

    python bench/torch_wait_policy.py
    OMP_WAIT_POLICY=PASSIVE python bench/torch_wait_policy.py
"""
import os
import time

import numpy as np
import torch


def median_us(f, n=300):
    for _ in range(20):
        f()
    ts = []
    for _ in range(n):
        t0 = time.perf_counter()
        f()
        ts.append(time.perf_counter() - t0)
    return np.median(ts) * 1e6


def main():
    torch.set_num_threads(2)
    cl = torch.channels_last
    print("OMP_WAIT_POLICY =", os.environ.get("OMP_WAIT_POLICY", "(unset)"))
    with torch.no_grad():
        x = torch.randn(1, 32, 112, 112).contiguous(memory_format=cl)
        m = torch.nn.Conv2d(32, 32, 3, padding=1, groups=32)
        print(f"depthwise 3x3 112x112x32     {median_us(lambda: m(x)):8.0f} us")
        x = torch.randn(1, 64, 56, 56).contiguous(memory_format=cl)
        m = torch.nn.Conv2d(64, 64, 3, padding=1)
        print(f"conv 3x3 56x56x64->64        {median_us(lambda: m(x)):8.0f} us")
        x = torch.randn(1, 256, 38, 38).contiguous(memory_format=cl)
        a, b = torch.nn.Conv2d(256, 256, 3, padding=1, groups=256, bias=False), torch.nn.Conv2d(256, 256, 1)
        print(f"separable 3x3 38x38x256->256 {median_us(lambda: b(a(x))):8.0f} us")


if __name__ == "__main__":
    main()
