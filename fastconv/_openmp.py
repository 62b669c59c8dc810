"""How long fastconv's idle OpenMP threads wait for the next parallel loop.

Numba's ``omp`` threading layer and the Cython kernels share one OpenMP runtime
(GNU libgomp).  Between two parallel loops its worker threads either spin or
sleep.  Sleeping ones take tens of microseconds to wake, which on small layers
costs more than the loop itself; threads that spin for long keep a core from
BLAS and from the caller's code.  libgomp reads its wait settings once, when it
is loaded, from the environment, so fastconv loads it here with a short spin
(:data:`SPIN_COUNT`) in the environment and then takes the variable out again:
an OpenMP runtime loaded later under another name reads its own defaults.  One
loaded later under the same name (PyTorch's wheel bundles a ``libgomp.so.1``) is
not loaded again: it is this runtime, with this setting.

Measured on this 2-core machine (README, "Threads"): a 3x3 depthwise kernel on
112x112x32 took 140 us on two sleeping-when-idle threads and 60 us with a short
spin; MobileNetV2 at batch 1 went from 17-18 ms to 10-13 ms.

A value the user set (``OMP_WAIT_POLICY`` or ``GOMP_SPINCOUNT``) is kept, and
nothing is changed when libgomp was already loaded before fastconv.
"""

import ctypes
import os
import re

#: Busy-wait iterations before an idle libgomp thread sleeps: about 0.5 ms here (each
#: iteration is one ``pause``, ~25 ns), longer than the Python work between two layers
#: and short enough not to hold a core that BLAS or the caller needs.
SPIN_COUNT = 20000

_USER_VARIABLES = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")


# the shared libgomp (not a copy bundled under another name, like PyTorch's)
_LIBGOMP = re.compile(r"/libgomp\.so\.1(\.[0-9]+)*$")


def _already_loaded():
    try:
        with open("/proc/self/maps") as maps:
            return any(_LIBGOMP.search(line.rstrip()) for line in maps)
    except OSError:
        return False


def configure():
    """Load the OpenMP runtime the kernels use with :data:`SPIN_COUNT`, unless the user
    configured OpenMP waiting or the runtime is already loaded.  Returns whether the
    setting was applied."""
    if any(v in os.environ for v in _USER_VARIABLES) or _already_loaded():
        return False
    os.environ["GOMP_SPINCOUNT"] = str(SPIN_COUNT)
    try:
        # by its shared name: the Cython kernels and Numba's omp layer link libgomp.so.1,
        # and the loader gives them this one
        ctypes.CDLL("libgomp.so.1", mode=ctypes.RTLD_GLOBAL)
    except OSError:
        pass
    finally:
        del os.environ["GOMP_SPINCOUNT"]
    return _already_loaded()


applied = configure()
