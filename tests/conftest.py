"""Test settings: float64 available everywhere, hypothesis without deadlines (jit compiles),
XLA's faster-compiling CPU settings (``SUITE_XLA_FLAGS``), a shared compilation cache.

The suite runs in parallel processes (pytest-xdist, ``-n auto --dist loadfile`` in
pyproject.toml): a test file's tests share one process, so the small programs they have in
common (an eager closed form compiles op by op) compile once, not once per process (a cold
run 789-814 -> 748 s of CPU on 2 cores). On a GPU each process takes GPU memory as it needs
it instead of JAX's default 75% up front.
"""

import contextlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

import jax
from hypothesis import settings

from .helpers import SUITE_XLA_FLAG_NAMES, SUITE_XLA_FLAGS


def _jaxlib_accepts(flags: str) -> bool:
    """Whether a process starts with ``XLA_FLAGS=flags`` (XLA stops a process whose
    ``XLA_FLAGS`` names a flag it does not know, so this asks a child process)."""
    probe = "import jax; jax.devices('cpu')"
    environment = {**os.environ, "XLA_FLAGS": flags}
    done = subprocess.run(
        [sys.executable, "-c", probe], env=environment, capture_output=True, timeout=120
    )
    return done.returncode == 0


# XLA's CPU code generation for the suite: SUITE_XLA_FLAGS (tests/helpers.py says why),
# unless MATCALC_JAX_TEST_XLA_DEFAULTS=1; a flag the caller's XLA_FLAGS sets is left as the
# caller set it. The process that starts the run decides; its worker processes inherit
# XLA_FLAGS (and flags this jaxlib refused are remembered, not probed again by each worker).
XLA_DEFAULTS = os.environ.get("MATCALC_JAX_TEST_XLA_DEFAULTS") == "1"
_callers = os.environ.get("XLA_FLAGS", "")
_missing = [
    flag
    for flag, name in zip(SUITE_XLA_FLAGS, SUITE_XLA_FLAG_NAMES, strict=True)
    if name not in _callers
]
if not XLA_DEFAULTS and _missing:
    flags = " ".join([_callers, *_missing]).strip()
    if _jaxlib_accepts(flags):
        os.environ["XLA_FLAGS"] = flags
    else:
        os.environ["MATCALC_JAX_TEST_XLA_DEFAULTS"] = "1"

jax.config.update("jax_enable_x64", True)

#: JAX's persistent compilation cache for the suite. Most of a test's time is XLA compiling
#: small programs (an eager closed form compiles op by op), and the worker processes
#: compile many of the same ones: the workers share this cache, and a later run of the
#: suite finds what this one compiled. JAX keys an entry on the program, the compile
#: options and the versions of jaxlib and the backend, so a stale entry is never used. A
#: cache of the user's own (``JAX_COMPILATION_CACHE_DIR``) is left alone.
XLA_CACHE = Path(__file__).resolve().parents[1] / "build" / "test-cache" / "xla"
#: Above this size the cache is emptied when a run starts, so it does not grow forever.
XLA_CACHE_LIMIT = 2 * 2**30
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    with contextlib.suppress(OSError):
        XLA_CACHE.mkdir(parents=True, exist_ok=True)
        jax.config.update("jax_compilation_cache_dir", str(XLA_CACHE))
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
        jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


#: The cache ``matcalc-jax verify`` keeps by default (``$MATCALC_JAX_CACHE``), for every
#: process of the run: a test that runs the command without ``--cache-dir`` must not read
#: or write the user's own (``~/.cache/matcalc-jax``). Emptied when a run starts, so each
#: run starts from none.
VERIFY_CACHE = XLA_CACHE.parent / "matcalc-jax"
os.environ["MATCALC_JAX_CACHE"] = str(VERIFY_CACHE)


def pytest_configure(config):
    """In the process that starts the run (not in an xdist worker): empty ``verify``'s
    default cache, and the cache of compiled programs once it outgrows
    ``XLA_CACHE_LIMIT``."""
    if hasattr(config, "workerinput"):
        return
    shutil.rmtree(VERIFY_CACHE, ignore_errors=True)
    if not XLA_CACHE.is_dir():
        return
    size = sum(p.stat().st_size for p in XLA_CACHE.iterdir() if p.is_file())
    if size > XLA_CACHE_LIMIT:
        shutil.rmtree(XLA_CACHE, ignore_errors=True)
        XLA_CACHE.mkdir(parents=True, exist_ok=True)


settings.register_profile("matcalc", deadline=None, max_examples=25, derandomize=True)
settings.load_profile("matcalc")

# tests/multidevice needs eight devices: tests/test_sharding.py runs it in a subprocess with
# eight emulated CPU devices; a machine with eight accelerators runs it directly.
collect_ignore = [] if jax.device_count() >= 8 else ["multidevice"]
