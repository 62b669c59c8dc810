"""fastconv sets glibc's mmap and trim thresholds so that freed large arrays' memory is reused
instead of zero-filled again by the system (fastconv/_malloc.py), and leaves malloc alone
where the user configured it.  Each case runs in a fresh interpreter."""

import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc only")

# three 3 MiB arrays made, written and freed twenty times (like a layer's input, intermediate
# and output): the minor page faults of the last fifteen rounds
_CHURN = ("import resource, numpy as np, fastconv\n"
          "def faults(): return resource.getrusage(resource.RUSAGE_SELF).ru_minflt\n"
          "for i in range(20):\n"
          "    if i == 5: f0 = faults()\n"
          "    a, b, c = (np.ones(3 << 18, np.float32) for _ in range(3))\n"
          "    del a, b, c\n"
          "print('applied', fastconv._malloc.applied, 'faults', faults() - f0)\n")


def _run(**env_changes):
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("MALLOC_") and k not in ("GLIBC_TUNABLES", "FASTCONV_MALLOC_TUNING")}
    env.update(env_changes)
    proc = subprocess.run([sys.executable, "-c", _CHURN], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    applied, faults = proc.stdout.split()[1], int(proc.stdout.split()[3])
    return applied == "True", faults


def test_freed_arrays_memory_is_reused():
    applied, faults = _run()
    assert applied
    # 15 rounds of 3 x 3 MiB would be ~34000 faults if the pages went back to the system
    assert faults < 500, faults


def _thp_always():
    try:
        with open("/sys/kernel/mm/transparent_hugepage/enabled") as f:
            return "[always]" in f.read()
    except OSError:
        return False


@pytest.mark.parametrize("env", [dict(FASTCONV_MALLOC_TUNING="0"), dict(MALLOC_TRIM_THRESHOLD_="131072"),
                                 dict(GLIBC_TUNABLES="glibc.malloc.trim_threshold=131072")])
def test_left_alone_when_asked_or_configured(env):
    applied, faults = _run(**env)
    assert not applied
    if not _thp_always():  # with huge pages for every heap, a few faults map all of it
        assert faults > 5000, faults  # glibc's own behaviour: the pages are zero-filled again
