"""The README's Python examples run as written."""

from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_python_blocks_run():
    from .helpers import python_blocks

    blocks = python_blocks(README.read_text(encoding="utf-8"))
    assert len(blocks) >= 2
    namespace: dict = {}
    for block in blocks:
        exec(compile(block, str(README), "exec"), namespace)
    import jax
    import jax.numpy as jnp

    from .helpers import assert_jacobians_close

    W, x = namespace["W"], namespace["x"]
    assert_jacobians_close(namespace["J"], jax.jacfwd(lambda x: jnp.tanh(W @ x))(x))
    w, X, y = namespace["w"], namespace["X"], namespace["y"]
    assert namespace["r"].id == "logistic_regression"
    hessian = jax.hessian(namespace["r"].fn)(w, X, y)
    assert_jacobians_close(namespace["H"], hessian)
    v = jnp.ones(w.shape[0], w.dtype)
    assert_jacobians_close(namespace["Hop"].mv(v), namespace["H"] @ v)
    # the transform's example: exact log|det| of a 10^6 diagonal, softmax's structure
    z = namespace["z"]
    derivative = 1 + 0.65 * (1 - jnp.tanh(1.3 * z - 0.2) ** 2)
    assert_jacobians_close(namespace["Jf"].logdet(), jnp.sum(jnp.log(derivative)))
    assert type(namespace["Js"]).__name__ == "DiagonalPlusLowRank"
    logits = jnp.arange(4.0)
    assert_jacobians_close(namespace["Js"].to_dense(), jax.jacfwd(jax.nn.softmax)(logits))
    # across devices (one here): the row-split Gram Hessian and a chunked dense Jacobian
    Xd, yd, wd = namespace["Xd"], namespace["yd"], namespace["wd"]
    assert_jacobians_close(namespace["Hs"].to_dense(), mj_hessian(wd, Xd, yd))
    expected = jax.jacfwd(jax.vmap(jax.nn.softmax))(jnp.ones((8, 3)))
    assert_jacobians_close(namespace["Jb"].to_dense(chunk_size=4), expected)


def mj_hessian(w, X, y):
    import jax

    from matcalc_jax import logistic_regression_loss

    return jax.hessian(logistic_regression_loss)(w, X, y)
