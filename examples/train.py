"""Train a logistic regression and a small MLP on a synthetic data set, twice each: with
``matcalc_jax.nn`` and with ``jax.nn``. The two loss curves coincide; with ``--plot PATH``
they are drawn (needs matplotlib).

    python examples/train.py --plot examples/loss_curves.png

The MLP's step size is 0.1: at 0.5 plain gradient descent on this problem is chaotic (the loss
jumps), and any difference in the last bit, between two libraries or two machines, grows
into a different trajectory after about 100 steps.
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp

from matcalc_jax import mlp, nn

ACTIVATIONS = {
    "matcalc_jax.nn": (nn.sigmoid, nn.tanh, nn.log_softmax),
    "jax.nn": (jax.nn.sigmoid, jnp.tanh, jax.nn.log_softmax),
}


def two_spirals(key: jax.Array, n: int = 256) -> tuple[jax.Array, jax.Array]:
    """Two interleaved noisy spirals in the plane: labels 0 and 1 (not linearly separable)."""
    k_angle, k_noise = jax.random.split(key)
    angle = jnp.sqrt(jax.random.uniform(k_angle, (n,))) * 3 * jnp.pi
    label = jnp.arange(n) % 2
    sign = 2.0 * label - 1.0
    points = sign[:, None] * jnp.stack([angle * jnp.cos(angle), angle * jnp.sin(angle)], 1)
    points = points / (3 * jnp.pi) + 0.05 * jax.random.normal(k_noise, (n, 2))
    return points.astype(jnp.float32), label


def logistic_regression_losses(x, y, activations, steps, rate=0.5):
    sigmoid = activations[0]

    def loss(w):
        p = sigmoid(x @ w[:-1] + w[-1])
        return -jnp.mean(y * jnp.log(p) + (1 - y) * jnp.log1p(-p))

    step = jax.jit(lambda w: w - rate * jax.grad(loss)(w))
    w = jnp.zeros(x.shape[1] + 1, x.dtype)
    losses = []
    for _ in range(steps):
        losses.append(float(loss(w)))
        w = step(w)
    return losses


def mlp_losses(x, y, activations, steps, rate=0.1, sizes=(2, 32, 32, 2)):
    _, tanh, log_softmax = activations
    labels = jax.nn.one_hot(y, sizes[-1], dtype=x.dtype)

    def loss(params):
        z = mlp.logits(params, x, activation=tanh)
        return -jnp.mean(jnp.sum(labels * log_softmax(z, axis=-1), axis=-1))

    @jax.jit
    def step(params):
        grads = jax.grad(loss)(params)
        return jax.tree_util.tree_map(lambda p, g: p - rate * g, params, grads)

    params = mlp.init(jax.random.key(1), sizes, x.dtype)
    losses = []
    for _ in range(steps):
        losses.append(float(loss(params)))
        params = step(params)
    return losses


def run(steps: int = 200) -> dict[str, dict[str, list[float]]]:
    """Loss curves: {model: {library: losses}}."""
    x, y = two_spirals(jax.random.key(0))
    return {
        "logistic regression": {
            lib: logistic_regression_losses(x, y.astype(x.dtype), acts, steps)
            for lib, acts in ACTIVATIONS.items()
        },
        "MLP 2-32-32-2": {lib: mlp_losses(x, y, acts, steps) for lib, acts in ACTIVATIONS.items()},
    }


def plot(curves: dict[str, dict[str, list[float]]], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(curves), figsize=(5 * len(curves), 3.5))
    for ax, (model, by_library) in zip(axes, curves.items(), strict=True):
        for (library, losses), style in zip(by_library.items(), ("-", "--"), strict=True):
            ax.plot(losses, style, label=library)
        ax.set_title(model)
        ax.set_xlabel("step")
        ax.set_ylabel("training loss")
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict[str, dict[str, list[float]]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=800)
    parser.add_argument("--plot", metavar="PATH")
    args = parser.parse_args(argv)
    curves = run(args.steps)
    for model, by_library in curves.items():
        first, second = by_library.values()
        gap = max(abs(a - b) for a, b in zip(first, second, strict=True))
        print(
            f"{model}: loss {first[0]:.4f} -> {first[-1]:.4f}; largest gap between curves {gap:.1e}"
        )
    if args.plot:
        plot(curves, args.plot)
        print(f"wrote {args.plot}")
    return curves


if __name__ == "__main__":
    main()
