"""Interleaved best-of-N timing of the Cython direct/pool kernels against PyTorch (channels_last).

Each case alternates one fastconv call and one PyTorch call N times and reports the
best of each, so both see the same machine load (more reliable than separate runs
on a busy machine).  Usage::

    T=2 N=300 python bench/cython_direct_vs_torch.py dw [name filter]
    T=2 N=300 python bench/cython_direct_vs_torch.py pool [name filter]

T: threads for both (default 1), N: rounds (default 200).
"""
import os
import sys
import time

import numpy as np, torch
import fastconv
T=int(os.environ.get("T","1")); torch.set_num_threads(T); fastconv.set_num_threads(T)
N=int(os.environ.get("N","200"))
F = torch.nn.functional
def dw(H,W,C,k,s):
    x = np.random.rand(1,H,W,C).astype(np.float32); w = np.random.rand(k,k,C,1).astype(np.float32); b=np.random.rand(C).astype(np.float32)
    tx = torch.from_numpy(x).permute(0,3,1,2); tw = torch.from_numpy(np.ascontiguousarray(w.transpose(2,3,0,1))); tb=torch.from_numpy(b)
    p=(k-1)//2
    return (f"dw {H}x{W}x{C} k{k} s{s}", lambda: fastconv.depthwise_conv2d(x, w, b, strides=s, padding="same", backend="cython"),
            lambda: F.conv2d(tx, tw, tb, stride=s, padding=p, groups=C))
def pool(kind, H, W, C, k, s, pad):
    x = np.random.rand(1,H,W,C).astype(np.float32)
    tx = torch.from_numpy(x).permute(0,3,1,2)
    p = (k-1)//2 if pad == "same" else 0
    if kind == "max":
        return (f"max_pool {H}x{W}x{C} {k}/{s} {pad}", lambda: fastconv.max_pool2d(x, k, s, padding=pad, backend="cython"), lambda: F.max_pool2d(tx, k, s, padding=p))
    if kind == "avg":
        return (f"avg_pool {H}x{W}x{C} {k}/{s} {pad}", lambda: fastconv.avg_pool2d(x, k, s, padding=pad, backend="cython"), lambda: F.avg_pool2d(tx, k, s, padding=p, count_include_pad=False))
    if kind == "gmax":
        return (f"global_max {H}x{W}x{C}", lambda: fastconv.global_max_pool2d(x, backend="cython"), lambda: tx.amax(dim=(2,3)))
    return (f"global_avg {H}x{W}x{C}", lambda: fastconv.global_avg_pool2d(x, backend="cython"), lambda: tx.mean(dim=(2,3)))
cases = {
 "dw": [dw(112,112,32,3,1), dw(38,38,256,3,1), dw(112,112,64,3,2), dw(56,56,128,3,1), dw(28,28,256,3,2), dw(14,14,512,3,1), dw(7,7,960,3,1), dw(7,7,960,5,1), dw(14,14,576,3,1), dw(28,28,192,5,1), dw(28,28,240,5,2)],
 "pool": [pool("max",112,112,64,2,2,"valid"), pool("avg",56,56,256,3,1,"same"), pool("max",112,112,64,3,2,"same"), pool("avg",56,56,64,2,2,"valid"), pool("gavg",56,56,256,0,0,0), pool("gmax",56,56,256,0,0,0), pool("gavg",7,7,1024,0,0,0), pool("gmax",7,7,1024,0,0,0)],
}
sel = sys.argv[1]
flt = sys.argv[2] if len(sys.argv) > 2 else ""
for name, f, g in cases[sel]:
    if flt not in name: continue
    f(); g()
    bf = bg = 1e9
    for i in range(N):
        t0 = time.perf_counter(); f(); t1 = time.perf_counter(); g(); t2 = time.perf_counter()
        bf = min(bf, t1 - t0); bg = min(bg, t2 - t1)
    print(f"{name:32s} cython {bf*1e6:8.1f}us torch {bg*1e6:8.1f}us  torch/cython {bg/bf:5.2f}", flush=True)
