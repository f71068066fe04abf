"""The benchmark runs and reports what it measured. Nothing here asserts a speed: timings
on a shared machine are for the benchmark's ratios, not for tests."""

import json
import shlex
from pathlib import Path

import jax.numpy as jnp
import pytest

import matcalc_jax as mj
from matcalc_jax.benchmark import output
from matcalc_jax.benchmark.rules import (
    BENCH_SCHEMA,
    BenchReport,
    Case,
    Timing,
    bench,
    bench_case,
    default_sizes,
    dispatch_time,
    time_methods,
    write_floor,
)
from matcalc_jax.cli.main import build_parser, main


@pytest.fixture(scope="module")
def report():
    return bench(["linear", "product_inner"], dtypes=["float32"], sizes=[4, 8], rounds=2)


def test_every_case_times_closed_form_autodiff_and_floor(report):
    assert [(c.rule, c.size) for c in report.cases] == [
        ("linear", 4),
        ("linear", 8),
        ("product_inner", 4),
        ("product_inner", 8),
    ]
    for case in report.cases:
        expected = {"closed", "jacfwd", "jacrev", "floor", "structured", "mv", "jvp"}
        if case.rule == "product_inner":  # scalar output: jax.grad is timed too
            expected.add("grad")
        assert set(case.timings) == expected
        for t in case.timings.values():
            assert 0 < t.p25_s <= t.median_s <= t.p75_s
            assert t.compile_s > 0 and t.samples == 2 and t.calls_per_sample >= 1
        assert case.speedup() > 0 and case.floor_multiple() > 0
        assert case.speedup("structured") > 0 and case.speedup("mv", over="jvp") > 0


def test_large_cases_time_only_the_structured_methods():
    case = bench_case(mj.rule("exp"), "float32", 64, rounds=1, max_dense_bytes=1024)
    assert set(case.timings) == {"structured", "mv", "jvp", "floor"}
    assert not case.dense
    assert case.speedup() is None and case.speedup_clear() is None
    assert case.speedup("mv", over="jvp") > 0
    assert output.rows(BenchReport((case,), {}, {}))[0][3] == "-"  # no closed-form time


def test_jacobian_shape_and_memory_are_recorded(report):
    linear = report.cases[1]
    assert linear.jacobian_shape == (9, 8)
    closed = linear.timings["closed"]
    if closed.output_bytes is not None:  # CPU and GPU backends expose memory_analysis
        assert closed.output_bytes == 9 * 8 * 4


def test_report_round_trips_through_json(report, tmp_path):
    path = tmp_path / "bench.json"
    output.write_json(report, path)
    data = json.loads(path.read_text())
    assert data["schema"] == BENCH_SCHEMA
    assert data["environment"]["platform"] == "cpu"
    assert data["settings"]["rounds"] == 2
    again = output.read_json(path)
    assert again.cases == report.cases


def test_reading_another_schema_is_an_error():
    with pytest.raises(ValueError, match="schema"):
        BenchReport.from_dict({"schema": "something/else", "cases": []})


def test_table_markdown_and_csv_have_a_row_per_case(report):
    table = output.format_table(report)
    assert table.count("\n") == 1 + len(report.cases)
    assert "speed-up" in table and "product_inner" in table
    markdown = output.format_markdown(report)
    assert markdown.count("\n| ") == len(report.cases)
    rows = output.format_csv(report).strip().splitlines()
    assert len(rows) == 1 + sum(len(c.timings) for c in report.cases)


def test_plots_are_written(report, tmp_path):
    pytest.importorskip("matplotlib")
    paths = output.write_plots(report, tmp_path)
    assert {p.name for p in paths} == {"time_vs_size_float32.png", "speedup_float32.png"}
    assert all(p.stat().st_size > 1000 for p in paths)


def test_write_floor_writes_the_jacobian_shape_and_dtype():
    out = write_floor(jnp.float32(2.0), shape=(3, 4))
    assert out.shape == (3, 4) and out.dtype == jnp.float32
    assert float(out[0, 1]) == 2.0
    assert write_floor(jnp.float64(2.0), shape=()).shape == ()  # logistic_scalar's Jacobian


def test_default_sizes_cover_every_rule():
    for r in mj.rules():
        assert len(default_sizes(r)) >= 3
        assert default_sizes(r, quick=True) == (r.quick_size,)
    assert max(default_sizes(mj.rule("softmax"))) == 16384  # structured only above 4096
    assert max(default_sizes(mj.rule("chain_vector"))) == 2048


def test_cli_bench_writes_its_outputs(tmp_path, capsys):
    json_path, csv_path, md_path = tmp_path / "b.json", tmp_path / "b.csv", tmp_path / "b.md"
    code = main(
        [
            "bench",
            "--rules",
            "exp",
            "--sizes",
            "4",
            "--rounds",
            "1",
            "--json",
            str(json_path),
            "--csv",
            str(csv_path),
            "--markdown",
            str(md_path),
        ]
    )
    assert code == 0
    out = capsys.readouterr().out
    assert "exp" in out and "speed-up" in out
    assert json.loads(json_path.read_text())["cases"][0]["rule"] == "exp"
    assert csv_path.read_text().startswith("rule,dtype,size,method")
    assert md_path.read_text().startswith("| rule |")


def test_cli_bench_rejects_zero_rounds():
    with pytest.raises(SystemExit):
        main(["bench", "--rounds", "0"])


def test_model_benchmark_runs_and_reports_both_libraries(tmp_path, capsys):
    path = tmp_path / "models.json"
    assert main(["bench-models", "--quick", "--rounds", "1", "--json", str(path)]) == 0
    out = capsys.readouterr().out
    assert "jax.nn step / matcalc_jax.nn step" in out
    assert "closed-form backprop" in out
    data = json.loads(path.read_text())
    assert {c["case"] for c in data["cases"]} == {"mlp_train_step", "mlp_gradient"}
    gradient = next(c for c in data["cases"] if c["case"] == "mlp_gradient")
    assert set(gradient["timings"]) == {"closed", "grad", "grad_jax_nn"}


def test_cli_bench_json_dash_prints_json_alone_and_old_out_still_works(tmp_path, capsys):
    argv = ["bench", "--rules", "identity", "--sizes", "4", "--rounds", "1"]
    assert main([*argv, "--json", "-"]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["cases"][0]["rule"] == "identity"
    assert "speed-up" in captured.err and max(map(len, captured.err.splitlines())) <= 100
    path = tmp_path / "old.json"
    assert main([*argv, "--out", str(path)]) == 0
    assert "--out is deprecated; use --json" in capsys.readouterr().err
    assert json.loads(path.read_text())["schema"] == BENCH_SCHEMA


def _timing(method, median, noise=False):
    spread = median / 100
    return Timing(
        "r",
        "float32",
        4,
        method,
        0.0,
        median,
        median - spread,
        median + spread,
        1000,
        3,
        None,
        None,
        noise,
    )


def test_a_timing_that_is_dispatch_noise_is_never_a_clear_win():
    # 390 times faster, quartiles far apart: clear, unless the fast side is dispatch noise
    fast, slow = _timing("closed", 1e-6), _timing("jacfwd", 3.9e-4)
    floor = _timing("floor", 1e-6)
    case = Case("r", "float32", 4, (4, 4), {"closed": fast, "jacfwd": slow, "floor": floor})
    assert case.speedup() == pytest.approx(390) and case.speedup_clear() is True
    noisy = dict(case.timings, closed=_timing("closed", 1e-6, noise=True))
    case = Case("r", "float32", 4, (4, 4), noisy)
    assert case.noisy() is True and case.speedup_clear() is False
    report = BenchReport((case,), {}, {})
    assert "noise" in output.format_table(report).splitlines()[2].split()


def test_times_under_twice_the_dispatch_cost_are_marked_noise():
    args = (jnp.ones(3),)
    timings = time_methods(
        "r", "float32", 3, {"sum": jnp.sum}, {"sum": args}, rounds=1, dispatch_s=1.0
    )
    assert timings["sum"].noise  # any call is under 2 s
    timings = time_methods(
        "r", "float32", 3, {"sum": jnp.sum}, {"sum": args}, rounds=1, dispatch_s=0.0
    )
    assert not timings["sum"].noise
    assert 0 < dispatch_time(rounds=1, calls=10) < 1.0


def test_transform_benchmark_reports_its_ratios(tmp_path, capsys):
    path = tmp_path / "transform.json"
    code = main(
        ["bench-transform", "--quick", "--no-peers", "--rounds", "1",
         "--programs", "nn_softmax", "per_example_mlp", "--json", str(path)]
    )  # fmt: skip
    assert code == 0
    data = json.loads(path.read_text())
    assert [row["program"] for row in data["ratios"]] == ["nn_softmax", "per_example_mlp"]
    for row in data["ratios"]:
        assert {"build_speedup", "dense_speedup", "mv_over_jvp", "build_over_forward"} <= set(row)
        assert row["build_speedup"] > 0 and "build_speedup_vs_asdex" not in row
    blocks = data["special"]["per_example_mlp"]
    assert blocks["operator"] == "BlockDiagonal"
    assert blocks["stored_entries"] == blocks["batch"] * blocks["width"] ** 2
    million = data["special"]["elementwise_million"]
    assert million["temp_bytes_per_entry"] is not None and million["n"] == 10_000
    assert "| nn_softmax |" in capsys.readouterr().out


def test_hessian_benchmark_reports_structures_and_ratios(tmp_path, capsys):
    path, plot = tmp_path / "hessian.json", tmp_path / "hessian.png"
    code = main(
        ["bench-hessian", "--quick", "--no-peers", "--rounds", "1",
         "--programs", "glm", "rosenbrock", "--json", str(path), "--plot", str(plot)]
    )  # fmt: skip
    assert code == 0 and plot.stat().st_size > 0
    data = json.loads(path.read_text())
    rows = {row["program"]: row for row in data["programs"]}
    assert rows["glm"]["structure"] == "WeightedGram"
    assert rows["rosenbrock"]["structure"] == "Banded"
    assert rows["rosenbrock"]["stored_entries"] == 3 * rows["rosenbrock"]["n"]
    for row in rows.values():
        assert row["build_speedup"] > 0 and row["dense_speedup"] > 0
        assert {"build", "dense", "jax_hessian"} <= set(row["preparation_s"])
        assert "asdex" not in row["timings"]
    special = data["special"]
    assert special["separable_million"]["n"] == 10_000
    assert (
        special["laplacian_mlp"]["speedup"] > 0 and "folx_speedup" not in special["laplacian_mlp"]
    )
    assert special["gauss_newton"]["mv_over_recipe"] > 0
    assert "| glm | 64 | WeightedGram |" in capsys.readouterr().out


def test_hessian_benchmark_refuses_an_unknown_program():
    from matcalc_jax.benchmark.hessian import bench_hessian

    with pytest.raises(ValueError, match="unknown programs"):
        bench_hessian(["nope"], quick=True)


def test_scale_benchmark_reports_memory_and_bytes_moved(tmp_path, capsys):
    """In this one-device process: the one-device column, and the chunk table."""
    path, table = tmp_path / "scale.json", tmp_path / "scale.md"
    code = main(
        ["bench-scale", "--quick", "--devices", "1", "--json", str(path),
         "--markdown", str(table)]
    )  # fmt: skip
    assert code == 0
    data = json.loads(path.read_text())
    assert {(r["program"], r["method"]) for r in data["sharded"]} == {
        ("per_example", "transform"), ("per_example", "batched_jacobian"),
        ("per_example", "mv"), ("per_example", "jacfwd (dense, compiled only)"),
        ("gram", "to_dense"), ("gram", "mv"), ("gram", "diagonal"), ("gram", "newton_step"),
    }  # fmt: skip
    for record in data["sharded"]:
        assert record["devices"] == 1 and record["moved_bytes"] == 0
        assert record["resident_bytes"] >= record["argument_bytes"] > 0
        assert (record["seconds"] is None) == ("compiled only" in record["method"])
    outputs = {r["method"]: r["output_bytes"] for r in data["sharded"]}
    batch = 64  # the quick size: the dense Jacobian is batch times the blocks
    assert outputs["jacfwd (dense, compiled only)"] == batch * outputs["transform"]
    by_case: dict = {}
    for record in data["chunks"]:
        by_case.setdefault(record["case"], []).append(record)
        assert record["max_difference"] < 1e-6
    for records in by_case.values():
        assert records[0]["chunk_size"] is None and records[-1]["chunk_size"] == 4
        assert records[-1]["temp_bytes"] < records[1]["temp_bytes"]
    assert "| gram | newton_step |" in table.read_text()
    assert "| per_example | transform |" in capsys.readouterr().out


def test_scale_benchmark_refuses_more_devices_than_there_are(capsys):
    assert main(["bench-scale", "--quick", "--devices", "64"]) == 3
    assert "JAX has 1 device(s)" in capsys.readouterr().err


@pytest.mark.parametrize("script", ["run_cpu.sh", "run_gpu.sh"])
def test_benchmark_scripts_name_real_commands_and_options(script):
    """Every matcalc-jax line of bench/run_*.sh parses (a renamed option fails here, not on
    the one machine that runs the script)."""
    text = (Path(__file__).resolve().parents[1] / "bench" / script).read_text()
    commands = [
        line for line in text.replace("\\\n", " ").splitlines() if line.startswith("matcalc-jax")
    ]
    assert commands
    parser = build_parser()
    for command in commands:
        words = shlex.split(command.split("|")[0])[1:]
        parser.parse_args(words)  # exits 2 on an unknown command or option


def test_each_case_is_benchmarked_once_and_an_unknown_program_is_named():
    """--dtype float64 float64 timed the same case twice; bench-transform took any rule id
    (--programs softmax ran a catalogue rule it has no sizes for) and repeated ids."""
    from matcalc_jax.benchmark.rules import bench
    from matcalc_jax.benchmark.transform import bench_transform

    report = bench(["identity"], dtypes=["float32", "float32"], sizes=[4], quick=True)
    assert [(c.dtype, c.size) for c in report.cases] == [("float32", 4)]
    with pytest.raises(ValueError, match=r"bench-transform: unknown programs \['softmax'\]"):
        bench_transform(["layer_norm", "softmax"], quick=True)


def test_the_hessian_benchmark_states_sizes_in_a_unit_that_shows_them():
    """--quick said jax.hessian "would need 0.0 TB" (800 MB at n = 10^4)."""
    from matcalc_jax.benchmark.hessian import _bytes

    assert [_bytes(b) for b in (8e12, 8e8, 4e5, 12)] == [
        "8.0 TB",
        "800.0 MB",
        "400.0 kB",
        "12 bytes",
    ]


def test_a_case_too_large_for_memory_is_refused_before_anything_runs(capsys):
    """--sizes 60000 ran into RESOURCE_EXHAUSTED (the floor writes the 13 GiB Jacobian)."""
    from matcalc_jax.benchmark.rules import bench, case_bytes, default_sizes

    with pytest.raises(ValueError, match=r"'identity' at size 60000 \(float32\) needs about 13"):
        bench(["identity"], sizes=[60000], quick=True)
    assert main(["bench", "--quick", "--rules", "identity", "--sizes", "60000"]) == 2
    err = capsys.readouterr().err
    assert "raise the limit (--max-gib)" in err and "Traceback" not in err
    # every default sweep fits the default limit
    assert (
        max(
            case_bytes(r, d, s)
            for r in mj.rules()
            for d in ("float32", "float64")
            for s in default_sizes(r, False)
        )
        <= 4 * 2**30
    )
