"""Newton's method for logistic regression on a dataset sharded by rows over every device.

The Hessian X^T diag(s(1 - s)) X is the factored ``WeightedGram``: each device forms its rows'
partial (d, d) Hessian and (d,) gradient, and one all-reduce adds them; X never moves. The
(d, d) Newton system is then solved on every device. On a CPU, emulate eight devices::

    XLA_FLAGS=--xla_force_host_platform_device_count=8 python examples/newton_logistic.py

It prints the loss and gradient norm per step (Newton converges quadratically: the gradient
norm roughly squares each step near the optimum) and the collectives of one compiled step.
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec

import matcalc_jax as mj
from matcalc_jax.benchmark.scale import collectives


def dataset(key: jax.Array, rows: int, d: int) -> tuple[jax.Array, jax.Array]:
    """Inputs X (rows, d) and 0/1 labels y from a logistic model with random weights."""
    k_x, k_w, k_y = jax.random.split(key, 3)
    X = jax.random.normal(k_x, (rows, d)) / d**0.5
    truth = 2 * jax.random.normal(k_w, (d,))
    y = (jax.random.uniform(k_y, (rows,)) < jax.nn.sigmoid(X @ truth)).astype(X.dtype)
    return X, y


@jax.jit
def newton_step(w: jax.Array, X: jax.Array, y: jax.Array) -> tuple[jax.Array, ...]:
    """w - H^{-1} g with g = X^T (s - y), H = X^T diag(s(1 - s)) X, s = sigmoid(X w); also the
    loss and the gradient norm at w."""
    g = mj.logistic_regression_gradient(w, X, y)
    H = mj.logistic_regression_hessian(w, X, y, structured=True)  # a WeightedGram
    step = jnp.linalg.solve(H.to_dense(), g)
    return w - step, mj.logistic_regression_loss(w, X, y), jnp.linalg.norm(g)


def fit(
    X: jax.Array, y: jax.Array, steps: int = 8, tolerance: float = 1e-4
) -> tuple[jax.Array, list[tuple[float, float]]]:
    """Newton's method from w = 0 until the gradient norm falls below ``tolerance`` times the
    number of rows; the weights and the (loss, gradient norm) of every step taken."""
    w = jnp.zeros((X.shape[1],), X.dtype)
    history = []
    for _ in range(steps):
        new, loss, norm = newton_step(w, X, y)
        history.append((float(loss), float(norm)))
        if float(norm) < tolerance * X.shape[0]:
            break
        w = new
    return w, history


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=65536, help="examples (default 65536)")
    parser.add_argument("--features", type=int, default=32, help="d (default 32)")
    parser.add_argument("--steps", type=int, default=8, help="at most this many Newton steps")
    args = parser.parse_args(argv)

    mesh = jax.make_mesh((jax.device_count(),), ("rows",))
    X, y = dataset(jax.random.key(0), args.rows, args.features)
    by_rows = NamedSharding(mesh, PartitionSpec("rows"))
    X, y = jax.device_put(X, by_rows), jax.device_put(y, by_rows)
    print(f"{jax.device_count()} device(s), {X.addressable_shards[0].data.shape[0]} rows each")

    w, history = fit(X, y, args.steps)
    for step, (loss, norm) in enumerate(history):
        print(f"step {step}: loss {loss:.6f}, |gradient| {norm:.3e}")
    hlo = newton_step.lower(w, X, y).compile().as_text()
    moved = collectives(hlo)
    print("collectives per step: " + (", ".join(f"{c.op} {c.bytes} B" for c in moved) or "none"))
    return {"w": w, "history": history, "collectives": moved, "X": X}


if __name__ == "__main__":
    main()
