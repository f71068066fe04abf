"""Shared test helpers: the package's one tolerance table, and assertions built on it."""

from __future__ import annotations

import dataclasses
import os
import re
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

import matcalc_jax as mj
from matcalc_jax import tolerance
from matcalc_jax.verification.harness import FAST_COMPILE, relative_error

FLOAT_DTYPES = ("float32", "float64")

#: The suite compiles as ``verify`` compiles its programs (``harness.FAST_COMPILE``: XLA's
#: legacy elemental CPU emitters, backend optimization level 0), set in tests/conftest.py for
#: every process of a run: measured back to back, a cold run of the suite took 0.72x the
#: time with the emitter, then 0.69-0.77x of that with the optimization level and this
#: suite's other changes (docs/verification.md). The tests check derivations, which do not
#: depend on the code generation; the tests whose subject is the generated code's rounding
#: (the ulp bounds of tests/test_accuracy.py) run under XLA's defaults, as users' programs
#: compile, in a process of their own. The optimization level changes the last bits of
#: float32 programs (``jax.random.normal``'s draws among them), so a test computes its
#: inputs once, never again inside each program it compares.
#: ``MATCALC_JAX_TEST_XLA_DEFAULTS=1`` runs the whole suite under XLA's defaults.
SUITE_XLA_FLAGS = tuple(f"--{name}={str(value).lower()}" for name, value in FAST_COMPILE.items())
#: The flags' names (``--name``), to tell a caller's own setting of one.
SUITE_XLA_FLAG_NAMES = tuple(flag.split("=")[0] for flag in SUITE_XLA_FLAGS)


def under_suite_xla_flags() -> bool:
    """Whether this process compiles with ``SUITE_XLA_FLAGS`` (not XLA's defaults)."""
    return set(SUITE_XLA_FLAGS) <= set(os.environ.get("XLA_FLAGS", "").split())


def assert_jacobians_close(actual: Any, expected: Any, dtype: Any = None) -> None:
    """Assert equal shapes and normwise relative error within the tolerance of ``dtype``
    (default: the expected array's)."""
    actual, expected = np.asarray(actual), np.asarray(expected)
    assert actual.shape == expected.shape, f"shape {actual.shape} != {expected.shape}"
    dtype = expected.dtype if dtype is None else dtype
    error = relative_error(actual, expected)
    bound = tolerance(np.dtype(dtype).name)
    assert error <= bound, f"relative error {error:.3e} > tolerance {bound:.1e} ({dtype})"


def assert_derivatives_close(ours: Any, theirs: Any, x: Any, orders: tuple = (1, 2)) -> None:
    """Elementwise f and g agree in value and in each derivative order, by jax.grad.

    Everything is computed in one jitted program (one compilation, not one per primitive).
    """

    def value_and_derivatives(f: Any, x: Any) -> list:
        results = [f(x)]
        for order in orders:
            derivative = f
            for _ in range(order):
                derivative = jax.grad(derivative)
            results.append(jax.vmap(derivative)(x))
        return results

    both = jax.jit(lambda x: (value_and_derivatives(ours, x), value_and_derivatives(theirs, x)))
    for actual, expected in zip(*both(x), strict=True):
        assert_jacobians_close(actual, expected)


def assert_all_close(pairs: Any, *args: Any) -> None:
    """``pairs(*args)`` returns (actual, expected) pairs; it runs as one jitted program, and
    each pair must agree within the tolerance (see :func:`assert_jacobians_close`)."""
    for actual, expected in jax.jit(pairs)(*args):
        assert_jacobians_close(actual, expected)


def assert_transform_matches_autodiff(f: Any, x: Any, *, forward: bool = True) -> Any:
    """``matcalc_jax.jacobian(f)(x)`` against JAX: ``to_dense`` against ``jax.jacfwd`` and
    ``mv`` against ``jax.jvp`` (``forward=False``: ``to_dense`` against ``jax.jacrev`` only,
    for a function JAX differentiates in reverse mode only, a ``custom_vjp``), and ``vm``
    against ``jax.vjp`` (a complex cotangent for a complex output). Everything runs as one
    jitted program (the directions are its arguments, not constants XLA could fold);
    returns J, an operator (a pytree) out of that program."""
    y = jax.eval_shape(f, x)
    v = np.sin(np.arange(x.size) + 1.0).reshape(x.shape).astype(x.dtype)
    u = np.cos(np.arange(y.size) + 0.5).reshape(y.shape).astype(y.dtype)
    if jnp.iscomplexobj(y):
        u = u + 1j * np.sin(np.arange(y.size)).reshape(y.shape).astype(y.dtype)

    def compare(x: Any, v: Any, u: Any) -> tuple:
        J = mj.jacobian(f)(x)
        pairs = [(J.to_dense(), jax.jacfwd(f)(x) if forward else jax.jacrev(f)(x))]
        if forward:
            pairs.append((J.mv(v), jax.jvp(f, (x,), (v,))[1]))
        pairs.append((J.vm(u), jax.vjp(f, x)[1](u)[0]))
        return J, pairs

    J, pairs = jax.jit(compare)(x, v, u)
    for actual, expected in pairs:
        assert actual.dtype == expected.dtype, f"dtype {actual.dtype} != {expected.dtype}"
        assert_jacobians_close(actual, expected)
    return J


def wrong_linear() -> Any:
    """The ``linear`` rule record with a wrong closed form (``2 A`` where the Jacobian is
    ``A``): the checks of its closed form against autodiff must fail."""
    linear = mj.rule("linear")
    return dataclasses.replace(linear, closed_form=lambda A, x, layout="numerator": 2 * A)


def swap_in_wrong_linear(monkeypatch: Any) -> None:
    """Put ``wrong_linear()`` in the catalogue under ``linear`` for one test, as a rule
    edited in a running process would be."""
    from matcalc_jax import catalogue

    monkeypatch.setitem(catalogue._BY_ID, "linear", wrong_linear())


def key(seed: int = 0) -> jax.Array:
    """A PRNG key; tests draw their inputs from fixed seeds so failures reproduce."""
    return jax.random.key(seed)


def python_blocks(markdown: str) -> list[str]:
    """The bodies of the ```python fenced blocks of a Markdown text, in order (```py blocks,
    the docs' sketches, are not among them)."""
    return re.findall(r"^```python\n(.*?)^```", markdown, re.S | re.M)


def run_verify(argv, cache_dir, cwd=None):
    """``matcalc-jax verify *argv --cache-dir cache_dir`` in a fresh process (in ``cwd``);
    asserts it passed and returns its stderr. Without the caller's
    ``JAX_COMPILATION_CACHE_DIR`` (which would win over ``cache_dir``: the run's JAX cache
    would not be the one asked)."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "JAX_COMPILATION_CACHE_DIR"}
    done = subprocess.run(
        [sys.executable, "-m", "matcalc_jax", "verify", *argv, "--cache-dir", str(cache_dir)],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        cwd=cwd,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stderr


def swap_two_and_truncate_one(files):
    """Damage a cache as a crash or a careless copy would: the first two files swap
    contents, the third is cut to 50 bytes."""
    first, second = files[0].read_bytes(), files[1].read_bytes()
    files[0].write_bytes(second)
    files[1].write_bytes(first)
    files[2].write_bytes(files[2].read_bytes()[:50])


def lowerings_during(action):
    """How many programs JAX lowered (compiled, or read from its cache) while ``action``
    ran: 0 for work done on the host or by programs compiled before."""
    import jax

    events = []

    def listen(event, duration, **kwargs):
        if event == "/jax/core/compile/jaxpr_to_mlir_module_duration":
            events.append(event)

    jax.monitoring.register_event_duration_secs_listener(listen)
    try:
        action()
    finally:
        jax.monitoring.unregister_event_duration_listener(listen)
    return len(events)


def _trigamma_primitive() -> Any:
    """A primitive the transform has no rule for and JAX differentiates: psi^(1)(x)
    (``lax.polygamma(1, x)``, whose own rule the transform has), bound as a primitive of
    its own, ``test_trigamma``, with a JVP, a batching rule and a lowering."""
    from jax.extend.core import Primitive
    from jax.interpreters import ad, batching, mlir

    def value(x):
        return jax.lax.polygamma(jnp.ones_like(x), x)

    primitive = Primitive("test_trigamma")
    primitive.def_impl(value)
    primitive.def_abstract_eval(lambda x: jax.core.ShapedArray(x.shape, x.dtype))
    ad.defjvp(primitive, lambda g, x: g * jax.lax.polygamma(jnp.full_like(x, 2.0), x))
    batching.defvectorized(primitive)
    mlir.register_lowering(primitive, mlir.lower_fun(value, multiple_results=False))
    return primitive


TRIGAMMA = _trigamma_primitive()


def trigamma(x: Any) -> jax.Array:
    """psi^(1)(x) through a primitive without a rule (``test_trigamma``)."""
    return TRIGAMMA.bind(x)
