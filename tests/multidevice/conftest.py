"""Fixtures for the tests that need eight devices (``tests/test_sharding.py`` runs this folder
in a subprocess with ``XLA_FLAGS=--xla_force_host_platform_device_count=8``).

Each test runs on both kinds of mesh JAX offers: explicit axes (the sharding is part of each
array's type; ``jax.make_mesh``'s default) and automatic axes (the GSPMD partitioner decides).
"""

import jax
import pytest
from jax.sharding import AxisType, NamedSharding, PartitionSpec

jax.config.update("jax_enable_x64", True)

DEVICES = 8


@pytest.fixture(params=[AxisType.Explicit, AxisType.Auto], ids=["explicit", "auto"])
def mesh(request) -> jax.sharding.Mesh:
    if jax.device_count() < DEVICES:
        pytest.fail(f"these tests need {DEVICES} devices; JAX has {jax.device_count()}")
    return jax.make_mesh((DEVICES,), ("batch",), axis_types=(request.param,))


@pytest.fixture
def rows(mesh) -> NamedSharding:
    """Split along the leading axis (examples, dataset rows)."""
    return NamedSharding(mesh, PartitionSpec("batch"))


@pytest.fixture
def whole(mesh) -> NamedSharding:
    """A full copy on every device."""
    return NamedSharding(mesh, PartitionSpec())
