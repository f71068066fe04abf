"""Work over several processes, each on its own core, results in order.

Most of a ``verify`` run is Python (tracing, lowering, the eager closed forms' op-by-op
dispatch), and one process runs Python on one core at a time. ``ordered_map`` starts worker
processes (``spawn``: a fresh interpreter, no state copied from the caller's threads),
hands each the next task as it becomes free, and yields the results in the tasks' order.

Workers take the caller's JAX options that decide what a program computes and where
(``INHERITED``), ignore Ctrl-C (the caller stops them) and, on Linux, are killed when the
calling process dies, also while they start; when the caller stops early (an error, Ctrl-C,
a closed generator) the workers are killed, so that nothing is left running.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import ctypes
import multiprocessing
import os
import signal
import sys
from collections.abc import Callable, Iterator, Sequence
from typing import Any

#: ``prctl(PR_SET_PDEATHSIG, ...)``: the signal a Linux process receives when its parent dies.
_PR_SET_PDEATHSIG = 1
#: The JAX options a worker takes from the caller.
INHERITED = (
    "jax_platforms",
    "jax_enable_x64",
    "jax_default_prng_impl",
    "jax_compilation_cache_dir",
    "jax_persistent_cache_min_compile_time_secs",
    "jax_persistent_cache_min_entry_size_bytes",
)


def _start_worker(options: dict[str, Any], caller: int, xla_flags: Sequence[str]) -> None:
    """In each worker, before any task: ignore Ctrl-C; die with the caller (process id
    ``caller``), also when it died while this worker started; the caller's JAX options;
    ``xla_flags`` added to ``XLA_FLAGS`` (read when the worker's backend starts), except a
    flag the caller's ``XLA_FLAGS`` sets already; device memory taken as it is needed
    (``XLA_PYTHON_CLIENT_PREALLOCATE=false``, unless the caller's environment says), since
    JAX takes three quarters of a GPU's memory in each process that starts on it, and a
    second worker on the same GPU would find too little left to start."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if hasattr(signal, "pthread_sigmask"):  # blocked by the caller while it started us
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != caller:  # the caller is gone already: no signal will come
        os._exit(1)
    present = os.environ.get("XLA_FLAGS", "")
    added = [flag for flag in xla_flags if flag.split("=")[0] not in present]
    if added:
        os.environ["XLA_FLAGS"] = " ".join([present, *added]).strip()
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    import jax

    for name, value in options.items():
        jax.config.update(name, value)


class WorkerDiedError(RuntimeError):
    """A worker process ended without a result: killed by a signal (the out-of-memory
    killer, a ``kill -9``) or crashed. Its argument says which task, or the caller's words."""


def ordered_map(
    work: Callable, tasks: Sequence[tuple], processes: int, xla_flags: Sequence[str] = ()
) -> Iterator[Any]:
    """``work(*task)`` for every task, in ``processes`` worker processes started with
    ``xla_flags`` too; the results in the order of ``tasks``. ``work`` and the tasks must
    pickle (``work`` a module-level function)."""
    import jax

    options = {name: getattr(jax.config, name) for name in INHERITED}
    pool = concurrent.futures.ProcessPoolExecutor(
        max(1, min(processes, len(tasks))),
        mp_context=multiprocessing.get_context("spawn"),
        initializer=_start_worker,
        initargs=(options, os.getpid(), tuple(xla_flags)),
    )
    try:
        with _interrupts_held():  # the workers start (and ``submit`` starts them)
            futures = [pool.submit(work, *task) for task in tasks]
        for index, future in enumerate(futures):
            try:
                result = future.result()
            except concurrent.futures.BrokenExecutor:  # BrokenProcessPool
                raise WorkerDiedError(f"task {index}") from None
            yield result
    except BaseException:
        _stop(pool)
        raise
    pool.shutdown(wait=True)


@contextlib.contextmanager
def _interrupts_held() -> Iterator[None]:
    """Ctrl-C held back (blocked, not lost) in this thread while the block runs: a worker
    process starts with this thread's blocked signals, so that a Ctrl-C to the whole
    terminal while it imports (before it can ignore SIGINT) does not print its
    traceback. The caller gets the Ctrl-C when the block ends."""
    if not hasattr(signal, "pthread_sigmask"):
        yield
        return
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def _stop(pool: concurrent.futures.ProcessPoolExecutor) -> None:
    """End the workers now: the caller failed, was interrupted or stopped early."""
    workers = list((getattr(pool, "_processes", None) or {}).values())
    pool.shutdown(wait=False, cancel_futures=True)
    for worker in workers:
        with contextlib.suppress(Exception):
            worker.kill()
            worker.join(timeout=10)
