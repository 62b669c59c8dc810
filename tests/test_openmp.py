"""fastconv loads its OpenMP runtime with a short idle spin, leaves the environment as it
found it, and keeps a setting the user made (fastconv/_openmp.py).

Each case runs in a fresh interpreter: libgomp reads its settings once, when it is loaded.
``OMP_DISPLAY_ENV=VERBOSE`` makes libgomp print the settings it uses."""

import os
import subprocess
import sys

import pytest

import fastconv

_RUN_KERNEL = ("import os, numpy as np, fastconv; "
               "fastconv.depthwise_conv2d(np.ones((1, 64, 64, 32), np.float32), np.ones((3, 3, 32, 1), np.float32), "
               "backend='cython'); "
               "print('applied', fastconv._openmp.applied); "
               "print('left', sorted(k for k in ('GOMP_SPINCOUNT', 'OMP_WAIT_POLICY') if k in os.environ))")

pytestmark = pytest.mark.skipif("cython" not in fastconv.available_backends(),
                                reason="the Cython backend (which links libgomp) is not built")


def _run(**env_changes):
    env = {k: v for k, v in os.environ.items() if k not in ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY")}
    env.update(env_changes, OMP_DISPLAY_ENV="VERBOSE")
    proc = subprocess.run([sys.executable, "-c", _RUN_KERNEL], capture_output=True, text=True, env=env,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout, proc.stderr


def test_short_spin_applied_and_environment_restored():
    out, err = _run()
    assert "applied True" in out
    assert f"GOMP_SPINCOUNT = '{fastconv._openmp.SPIN_COUNT}'" in err
    assert "left []" in out  # nothing leaks into the environment of later libraries


@pytest.mark.parametrize("var, value, shown", [("GOMP_SPINCOUNT", "12345", "GOMP_SPINCOUNT = '12345'"),
                                               ("OMP_WAIT_POLICY", "ACTIVE", "OMP_WAIT_POLICY = 'ACTIVE'")])
def test_user_setting_kept(var, value, shown):
    out, err = _run(**{var: value})
    assert "applied False" in out
    assert shown in err
    assert f"left ['{var}']" in out
