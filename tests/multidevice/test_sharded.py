"""Sharded in, sharded out, on eight devices: per-example Jacobians stay split by example and
move nothing; Gram Hessians of a row-split dataset add partial sums with one all-reduce and
never gather the rows. Every check reads the compiled program (its HLO and its per-device
memory) and compares the values with one device's."""

import importlib.util
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec

import matcalc_jax as mj
from matcalc_jax.benchmark.scale import (
    closed_per_example_jacobian,
    collectives,
    compiled,
    footprint,
    gram_cases,
    gram_data,
    per_example_data,
    per_example_mlp_jacobian,
)

from ..helpers import assert_jacobians_close

BATCH, WIDTH, ROWS, D = 64, 8, 512, 6
EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def _builders() -> dict:
    def autodiff(xs, W1, W2):
        return mj.batched_jacobian(jax.jacfwd(lambda x: jnp.tanh(W2 @ jnp.tanh(W1 @ x))), xs)

    return {
        "transform": per_example_mlp_jacobian,
        "closed": closed_per_example_jacobian,
        "jacfwd": autodiff,
    }


BUILDERS = _builders()


def _split_by_examples(array: jax.Array) -> None:
    """The array is laid out over all eight devices along its leading axis, one slice each."""
    assert isinstance(array.sharding, NamedSharding), array.sharding
    assert array.sharding.spec[0] in array.sharding.mesh.axis_names, array.sharding.spec
    shards = array.addressable_shards
    assert len(shards) == 8
    assert {s.data.shape[0] for s in shards} == {array.shape[0] // 8}


def _replicated(array: jax.Array) -> None:
    assert array.sharding.is_fully_replicated, array.sharding


def _ops(fn, *args) -> list[str]:
    return [c.op for c in collectives(compiled(fn, *args).as_text())]


@pytest.fixture
def per_example(rows, whole):
    xs, W1, W2 = per_example_data(BATCH, WIDTH, jnp.float64)  # a solve amplifies rounding
    sharded = (jax.device_put(xs, rows), jax.device_put(W1, whole), jax.device_put(W2, whole))
    return (xs, W1, W2), sharded


@pytest.mark.parametrize("name", list(BUILDERS))
def test_per_example_blocks_stay_split_and_move_nothing(per_example, name):
    build = BUILDERS[name]
    plain, sharded = per_example
    J = jax.jit(build)(*sharded)
    assert isinstance(J, mj.BlockDiagonal)
    _split_by_examples(J.blocks)
    assert _ops(build, *sharded) == []
    assert_jacobians_close(J.blocks, jax.jit(build)(*plain).blocks)


def test_per_example_products_stay_split_and_move_nothing(per_example, rows, whole):
    plain, sharded = per_example
    J1 = jax.jit(per_example_mlp_jacobian)(*plain)
    J = jax.jit(per_example_mlp_jacobian)(*sharded)
    xs = sharded[0]
    cases = {
        "mv": (lambda J, v: J.mv(v), xs),
        "vm": (lambda J, u: J.vm(u), xs),
        "solve": (lambda J, b: J.solve(b), xs),
        "transpose mv": (lambda J, u: J.T.mv(u), xs),
        "mv of a whole tangent": (lambda J, v: J.mv(v), jax.device_put(plain[0], whole)),
    }
    for label, (fn, vector) in cases.items():
        result = jax.jit(fn)(J, vector)
        _split_by_examples(result)
        assert _ops(fn, J, vector) == [], label
        assert_jacobians_close(result, fn(J1, plain[0]))
    diagonal = jax.jit(lambda J: J.diagonal())(J)
    _split_by_examples(diagonal)
    assert_jacobians_close(diagonal, J1.diagonal())


def test_trace_and_logdet_add_one_scalar_per_device(per_example):
    plain, sharded = per_example
    J = jax.jit(per_example_mlp_jacobian)(*sharded)
    J1 = jax.jit(per_example_mlp_jacobian)(*plain)
    for method in ("trace", "logdet"):
        found = collectives(compiled(lambda J, m=method: getattr(J, m)(), J).as_text())
        assert [(c.op, c.bytes) for c in found] == [("all-reduce", 8)], method  # one float64
        assert_jacobians_close(getattr(J, method)(), getattr(J1, method)())


@pytest.mark.parametrize("name", ["transform", "closed"])
def test_per_example_memory_per_device_falls_eightfold(mesh, name):
    """One device holds 1/8 of the batch's blocks, and its temporaries are 1/8 too."""
    build = BUILDERS[name]
    xs, W1, W2 = per_example_data(BATCH, WIDTH)
    one = jax.make_mesh((1,), ("batch",), axis_types=mesh.axis_types, devices=jax.devices()[:1])
    measured = {}
    for m in (one, mesh):
        rows, whole = NamedSharding(m, PartitionSpec("batch")), NamedSharding(m, PartitionSpec())
        args = (jax.device_put(xs, rows), jax.device_put(W1, whole), jax.device_put(W2, whole))
        measured[m.size] = footprint(build, *args)
    alone, split = measured[1], measured[8]
    assert split.output_bytes * 8 == alone.output_bytes
    weights = W1.nbytes + W2.nbytes  # copied whole to every device
    assert split.argument_bytes == xs.nbytes // 8 + weights
    assert split.temp_bytes <= alone.temp_bytes / 8 + 1024, (split, alone)


@pytest.fixture
def dataset(rows, whole):
    w, X, y = gram_data(ROWS, D)
    w = w + 0.1  # away from 0, so that the weights s(1 - s) differ between rows
    sharded = (jax.device_put(w, whole), jax.device_put(X, rows), jax.device_put(y, rows))
    return (w, X, y), sharded


@pytest.mark.parametrize(("method", "values"), [("to_dense", D * D), ("mv", D), ("diagonal", D)])
def test_gram_adds_partial_products_once_and_never_gathers_rows(dataset, method, values):
    plain, sharded = dataset
    fn = gram_cases()[method]
    found = collectives(compiled(fn, *sharded).as_text())
    assert [(c.op, c.bytes) for c in found] == [("all-reduce", values * 4)]
    result = jax.jit(fn)(*sharded)
    _replicated(result)
    assert_jacobians_close(result, fn(*plain))


@pytest.mark.parametrize("gradient", [mj.logistic_regression_gradient, mj.least_squares_gradient])
def test_gradients_of_a_row_split_dataset_reduce_once(dataset, gradient):
    plain, sharded = dataset
    found = collectives(compiled(gradient, *sharded).as_text())
    assert [(c.op, c.bytes) for c in found] == [("all-reduce", D * 4)]
    assert_jacobians_close(jax.jit(gradient)(*sharded), gradient(*plain))


def test_newton_step_is_one_all_reduce_of_hessian_and_gradient(dataset):
    plain, sharded = dataset
    step = gram_cases()["newton_step"]
    found = collectives(compiled(step, *sharded).as_text())
    assert "all-gather" not in {c.op for c in found}
    assert sum(c.bytes for c in found) == (D * D + D) * 4
    assert len(found) == 1, found  # XLA combines the (d, d) and (d,) reductions
    assert_jacobians_close(jax.jit(step)(*sharded), step(*plain))


def test_least_squares_hessian_of_row_split_rows(dataset):
    plain, sharded = dataset
    H = jax.jit(lambda *a: mj.least_squares_hessian(*a, structured=True).to_dense())
    assert _ops(H, *sharded) == ["all-reduce"]
    assert_jacobians_close(H(*sharded), mj.least_squares_hessian(*plain))


def test_newton_example_matches_one_device():
    path = EXAMPLES / "newton_logistic.py"
    spec = importlib.util.spec_from_file_location("newton_logistic", path)
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    result = example.main(["--rows", "2048", "--features", "8"])
    losses = [loss for loss, _ in result["history"]]
    assert losses == sorted(losses, reverse=True) and len(losses) >= 3
    assert result["history"][-1][1] < 1e-4 * 2048
    assert [c.op for c in result["collectives"]] == ["all-reduce"]
    _split_by_examples(result["X"])
    X, y = example.dataset(jax.random.key(0), 2048, 8)
    w_one, _ = example.fit(X, y)
    assert np.allclose(result["w"], w_one, rtol=1e-4, atol=1e-5)


def test_chunked_to_dense_of_sharded_operators(mesh, per_example, dataset):
    """chunk_size on a split operator: the same dense array; whole on every device on an
    explicit mesh (on an automatic one the partitioner may keep it split)."""
    explicit = mesh.axis_types[0] == jax.sharding.AxisType.Explicit
    plain, sharded = per_example
    small = [a[:16] if a.shape[0] == BATCH else a for a in plain]  # (16, 8, 16, 8) dense
    small_sharded = [jax.device_put(a, s.sharding) for a, s in zip(small, sharded, strict=True)]
    J = jax.jit(per_example_mlp_jacobian)(*small_sharded)
    dense = jax.jit(lambda J: J.to_dense(chunk_size=24))(J)
    if explicit:
        _replicated(dense)
    assert_jacobians_close(dense, per_example_mlp_jacobian(*small).to_dense())
    plain, sharded = dataset
    H = mj.logistic_regression_hessian(*sharded, structured=True)
    dense = jax.jit(lambda H: H.to_dense(chunk_size=4))(H)
    if explicit:
        _replicated(dense)
    assert_jacobians_close(dense, mj.logistic_regression_hessian(*plain))
