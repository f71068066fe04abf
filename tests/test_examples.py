"""The training example runs and the two libraries give the same loss curves."""

import importlib.util
from pathlib import Path

import pytest

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "train.py"


def load_example():
    spec = importlib.util.spec_from_file_location("train_example", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_training_example_curves_coincide_and_fall(tmp_path):
    example = load_example()
    path = tmp_path / "curves.png"
    curves = example.main(["--steps", "30", "--plot", str(path)])
    for model, by_library in curves.items():
        ours, theirs = by_library["matcalc_jax.nn"], by_library["jax.nn"]
        assert ours == pytest.approx(theirs, rel=1e-4), model
        assert ours[-1] < ours[0], model
    assert path.stat().st_size > 1000
