"""Model benchmarks: a training step with ``matcalc_jax.nn`` against the same step with
``jax.nn``, and the closed-form MLP backprop against ``jax.grad``, timed as the rule
benchmarks are (``time_methods``: compiled apart, interleaved rounds, medians)."""

from __future__ import annotations

from functools import partial
from typing import Any

import jax
import jax.numpy as jnp

from matcalc_jax import mlp
from matcalc_jax.benchmark.rules import Case, time_methods

#: (batch, hidden width) of the MLP in, 2 hidden tanh layers, 10 classes, 64 inputs.
MODEL_SIZES = ((256, 256), (1024, 1024))
QUICK_MODEL_SIZES = ((32, 16),)
#: Each sample of a model's step runs it for at least this long: a step of a few
#: milliseconds, timed alone, varies by more than the differences the table reports.
MODEL_SAMPLE_S = 0.1


def _problem(batch: int, width: int, dtype: Any) -> tuple[list, jax.Array, jax.Array]:
    kx, ky, kp = jax.random.split(jax.random.key(0), 3)
    x = jax.random.normal(kx, (batch, 64), dtype)
    labels = jax.nn.one_hot(jax.random.randint(ky, (batch,), 0, 10), 10, dtype=dtype)
    return mlp.init(kp, (64, width, width, 10), dtype), x, labels


def _jax_nn_loss(params: list, x: jax.Array, labels: jax.Array) -> jax.Array:
    z = mlp.logits(params, x, activation=jnp.tanh)
    return -jnp.mean(jnp.sum(labels * jax.nn.log_softmax(z, axis=-1), axis=-1))


def _sgd(loss: Any) -> Any:
    def step(params: list, x: jax.Array, labels: jax.Array) -> list:
        grads = jax.grad(loss)(params, x, labels)
        return jax.tree_util.tree_map(lambda p, g: p - 0.1 * g, params, grads)

    return step


def bench_models(
    *, dtype: str = "float32", quick: bool = False, rounds: int | None = None
) -> tuple[Case, ...]:
    """Two cases per size: ``mlp_train_step`` (methods ``matcalc_nn``, ``jax_nn``, and
    ``jnp_tanh``: matcalc_jax.nn's loss with ``jnp.tanh`` hidden layers) and
    ``mlp_gradient`` (methods ``closed`` backprop, ``grad`` of the matcalc_jax.nn loss,
    ``grad_jax_nn`` of the jax.nn loss). ``size`` is the hidden width."""
    rounds = rounds if rounds is not None else (3 if quick else 7)
    cases = []
    for batch, width in QUICK_MODEL_SIZES if quick else MODEL_SIZES:
        params, x, labels = _problem(batch, width, jnp.dtype(dtype))
        args = (params, x, labels)
        steps = {
            "matcalc_nn": _sgd(mlp.loss),
            "jax_nn": _sgd(_jax_nn_loss),
            "jnp_tanh": _sgd(partial(mlp.loss, activation=jnp.tanh)),
        }
        timings = time_methods(
            "mlp_train_step",
            dtype,
            width,
            steps,
            dict.fromkeys(steps, args),
            rounds=rounds,
            min_sample_s=MODEL_SAMPLE_S,
        )
        cases.append(Case("mlp_train_step", dtype, width, (batch,), timings))
        gradients = {
            "closed": mlp.backprop,
            "grad": jax.grad(mlp.loss),
            "grad_jax_nn": jax.grad(_jax_nn_loss),
        }
        timings = time_methods(
            "mlp_gradient",
            dtype,
            width,
            gradients,
            dict.fromkeys(gradients, args),
            rounds=rounds,
            min_sample_s=MODEL_SAMPLE_S,
        )
        cases.append(Case("mlp_gradient", dtype, width, (batch,), timings))
    return tuple(cases)


def format_models(cases: tuple[Case, ...]) -> str:
    """A table: median ms per method and the ratios (> 1: the matcalc_jax side is faster)."""
    lines = [
        "case            dtype    width  batch  method        median ms  p25-p75 ms",
        "--------------  -------  -----  -----  ------------  ---------  ----------------",
    ]
    for case in cases:
        for name, t in case.timings.items():
            lines.append(
                f"{case.rule:<14}  {case.dtype:<7}  {case.size:<5}  {case.jacobian_shape[0]:<5}  "
                f"{name:<12}  {t.median_s * 1e3:<9.3g}  {t.p25_s * 1e3:.3g}-{t.p75_s * 1e3:.3g}"
            )
        if case.rule == "mlp_train_step":
            ratio = case.speedup("matcalc_nn", over="jax_nn")
            clear = case.speedup_clear("matcalc_nn", over="jax_nn")
            lines.append(f"  jax.nn step / matcalc_jax.nn step = {ratio:.3f} (clear: {clear})")
            ratio = case.speedup("jnp_tanh", over="jax_nn")
            lines.append(
                f"  jax.nn step / the same with jnp.tanh for nn.tanh = {ratio:.3f} (what "
                "nn.log_softmax costs; the rest of the gap is nn.tanh's exact tanh')"
            )
        else:
            ratio = case.speedup("closed", over="grad_jax_nn")
            clear = case.speedup_clear("closed", over="grad_jax_nn")
            lines.append(
                f"  jax.grad (jax.nn) / closed-form backprop = {ratio:.3f} (clear: {clear})"
            )
    return "\n".join(lines)
