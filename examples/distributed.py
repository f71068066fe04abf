"""The sharded per-example Jacobian and the sharded Gram Hessian across processes.

Each process runs this script; together they form one JAX runtime (``jax.distributed``) whose
devices make one mesh. The batch and the dataset's rows are split over every device of every
process; each process draws the same data (same keys) and keeps only its own rows.

Two processes on one machine, four emulated CPU devices each (CPU collectives over gloo)::

    export XLA_FLAGS=--xla_force_host_platform_device_count=4
    python examples/distributed.py --coordinator 127.0.0.1:12355 --processes 2 --id 0 &
    python examples/distributed.py --coordinator 127.0.0.1:12355 --processes 2 --id 1

Across hosts, the same with the first host's address as ``--coordinator`` and one ``--id``
per host (on GPUs, drop ``XLA_FLAGS``: each process sees its own accelerators). With
``--out PATH``, process 0 writes the gathered results as an ``.npz`` file.
"""

from __future__ import annotations

import argparse

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding, PartitionSpec

from matcalc_jax.benchmark.scale import (
    collectives,
    gram_cases,
    gram_data,
    per_example_data,
    per_example_mlp_jacobian,
)


def global_array(value: jax.Array, mesh: jax.sharding.Mesh, spec: PartitionSpec) -> jax.Array:
    """A global array of ``value``'s shape laid out by ``spec``; this process fills only the
    pieces on its own devices."""
    host = np.asarray(value)
    sharding = NamedSharding(mesh, spec)
    return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])


def run(batch: int = 64, width: int = 8, rows: int = 1024, d: int = 8) -> dict[str, np.ndarray]:
    """Both programs on a mesh of all devices of all processes; every result gathered whole."""
    mesh = jax.make_mesh((jax.device_count(),), ("batch",))
    by_rows, whole = PartitionSpec("batch"), PartitionSpec()
    xs, W1, W2 = per_example_data(batch, width)
    xs, W1, W2 = (
        global_array(xs, mesh, by_rows),
        global_array(W1, mesh, whole),
        global_array(W2, mesh, whole),
    )
    w, X, y = gram_data(rows, d)
    w, X, y = (
        global_array(w, mesh, whole),
        global_array(X, mesh, by_rows),
        global_array(y, mesh, by_rows),
    )

    jacobian = jax.jit(per_example_mlp_jacobian)
    J = jacobian(xs, W1, W2)
    hessian, newton_step = jax.jit(gram_cases()["to_dense"]), jax.jit(gram_cases()["newton_step"])
    results = {
        "blocks": J.blocks,
        "mv": jax.jit(lambda J, v: J.mv(v))(J, xs),
        "hessian": hessian(w, X, y),
        "newton_step": newton_step(w, X, y),
    }
    gathered = {
        name: multihost_utils.process_allgather(v, tiled=True) for name, v in results.items()
    }
    programs = {
        "jacobian": jacobian.lower(xs, W1, W2).compile().as_text(),
        "newton_step": newton_step.lower(w, X, y).compile().as_text(),
    }
    for name, hlo in programs.items():
        ops = [c.op for c in collectives(hlo)]
        gathered[f"{name}_all_gathers"] = np.array(ops.count("all-gather"))
        gathered[f"{name}_all_reduces"] = np.array(ops.count("all-reduce"))
    gathered["blocks_local_rows"] = np.array(
        sum(s.data.shape[0] for s in J.blocks.addressable_shards)
    )
    return gathered


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--coordinator", required=True, help="HOST:PORT of process 0")
    parser.add_argument("--processes", type=int, required=True, help="number of processes")
    parser.add_argument("--id", type=int, required=True, help="this process's index")
    parser.add_argument("--out", help="process 0 writes the gathered results here (.npz)")
    parser.add_argument("--timeout", type=int, default=60, help="seconds to wait for the others")
    args = parser.parse_args(argv)
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(
        args.coordinator, args.processes, args.id, initialization_timeout=args.timeout
    )
    results = run()
    print(
        f"process {jax.process_index()}/{jax.process_count()}: {jax.local_device_count()} of "
        f"{jax.device_count()} devices, {int(results['blocks_local_rows'])} examples here",
        flush=True,
    )
    if args.out and jax.process_index() == 0:
        np.savez(args.out, **results)
    jax.distributed.shutdown()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
