"""The command line: list, verify (table, exit code, JSON), docs --check, bad arguments."""

import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import pytest

import matcalc_jax as mj
from matcalc_jax.cli.main import main
from matcalc_jax.verification.harness import Check, Report
from matcalc_jax.verification.report import report_lines, verdict

from .helpers import swap_in_wrong_linear

ROOT = Path(__file__).resolve().parents[1]


def test_list_prints_every_rule_in_aligned_columns_of_at_most_100(capsys):
    assert main(["list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["id", "formula", "source"]
    for r in mj.rules() + mj.programs():
        assert any(line.startswith(r.id + " ") for line in lines)
    assert lines[-1].split()[-1] == "program"
    assert max(len(line) for line in lines) <= 100
    formula_at = {
        line.index(r.plain[:20])
        for r in mj.rules()
        for line in lines[1:]
        if line.startswith(r.id + " ")
    }
    assert len(formula_at) == 1  # every formula starts in the same column
    assert main(["list", "--wide"]) == 0
    wide = capsys.readouterr().out
    assert all(r.plain in wide and r.source in wide for r in mj.rules())


def _verify(argv, capsys):
    code = main(["verify", "--no-cache", *argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_verify_prints_a_table_of_at_most_100_columns_and_writes_json(capsys, tmp_path):
    path = tmp_path / "report.json"
    code, out, err = _verify(
        ["--rules", "linear,softmax", "--dtype", "float32", "--sizes", "3", "--json", str(path)],
        capsys,
    )
    assert code == 0
    assert "device: cpu" in out
    assert "2 of 2 rules pass" in out
    assert "verdict: PASS, all 20 checks of 2 rules passed" in out.splitlines()
    table = [line for line in out.splitlines() if not line.startswith("report written")]
    assert max(len(line) for line in table) <= 100
    data = json.loads(path.read_text())
    assert data["passed"] is True and set(data["rules"]) == {"linear", "softmax"}
    # a log (stderr is not a terminal here) gets one progress line per rule
    assert "[1/2] linear: 10 checks, pass" in err and "[2/2] softmax: 10 checks, pass" in err


def test_verify_wide_adds_the_formulas(capsys):
    code, out, _ = _verify(
        ["--rules", "linear", "--dtype", "float32", "--sizes", "2", "--wide"], capsys
    )
    assert code == 0 and "d(Ax)/dx = A^T" in out


def test_verify_json_dash_writes_json_to_stdout_and_the_table_to_stderr(capsys):
    code, out, err = _verify(
        ["--rules", "identity", "--dtype", "float32", "--sizes", "2", "--json", "-"], capsys
    )
    assert code == 0
    assert json.loads(out)["passed"] is True  # stdout is JSON and nothing else
    assert "verdict: PASS" in err
    assert not Path("-").exists()


def test_old_spellings_still_work_with_a_deprecation_note(capsys, tmp_path):
    code, _, err = _verify(["--rules", "identity", "--dtype", "float32", "--size", "2"], capsys)
    assert code == 0
    assert "--size is deprecated; use --sizes" in err


def test_verify_exits_1_and_says_fail_when_a_check_fails(capsys, monkeypatch):
    swap_in_wrong_linear(monkeypatch)
    code, out, err = _verify(["--rules", "linear", "--dtype", "float32", "--sizes", "2"], capsys)
    assert code == 1
    assert "verdict: FAIL" in out and "verdict: PASS" not in out
    assert out.splitlines()[2].startswith("verdict: FAIL")  # the header says it too
    assert "FAIL linear float32 size 2 vs jacfwd" in out
    assert "[1/1] linear: 10 checks, FAIL" in err


def test_verdict_counts_failures_and_names_the_rules():
    def check(rule_id, passed):
        return Check(rule_id, "float32", 2, "jacfwd", 0.0 if passed else 1.0, 1e-5, passed)

    report = Report((check("a", True), check("b", False), check("b", False)), {})
    assert verdict(report) == "verdict: FAIL, 2 of 3 checks failed, in 1 of 2 rules (b)"
    assert verdict(Report((check("a", True),), {})) == "verdict: PASS, 1 check of 1 rule passed"
    env = {"platform": "cpu", "device_kind": "cpu", "jax": "0", "x64": True}
    two = Report((check("a", True), check("a", True)), env | {"matmul_precision": None})
    assert verdict(two) == "verdict: PASS, all 2 checks of 1 rule passed"
    assert verdict(Report((check("b", False),), {})) == (
        "verdict: FAIL, 1 of 1 check failed, in 1 of 1 rule (b)"
    )
    assert report_lines(two)[-2] == "1 of 1 rule passes (2 checks)"
    assert verdict(Report((), {})) == "verdict: nothing was checked"


def test_verify_unknown_rule_exits_2_with_the_known_ids(capsys):
    assert main(["verify", "--rules", "nope"]) == 2
    err = capsys.readouterr().err
    assert "unknown rule id 'nope'" in err and "softmax" in err


@pytest.mark.parametrize("dtype", ["float8", "complex64", "int32"])
def test_verify_a_dtype_it_does_not_check_exits_2(capsys, dtype):
    """A complex dtype too: the rules are real maps (it would otherwise run as its parts')."""
    assert main(["verify", "--no-cache", "--dtype", dtype]) == 2
    err = capsys.readouterr().err
    assert f"dtype '{dtype}' is not one it checks" in err and "float32, float64" in err


@pytest.mark.parametrize(
    "argv",
    [
        ["--sizes", "0"],
        ["--size", "-1"],
        ["--timeout", "0"],
        ["--max-gib", "0"],
        ["--max-gib", "nan"],
        ["--max-gib", "inf"],
        ["--max-gib", "1e400"],
    ],
)
def test_verify_bad_numbers_are_usage_errors(capsys, argv):
    with pytest.raises(SystemExit) as info:
        main(["verify", *argv])
    assert info.value.code == 2
    assert "expected a positive" in capsys.readouterr().err


def _run_cli(*argv, env=None, timeout=120):
    return subprocess.run(
        [sys.executable, "-m", "matcalc_jax", *argv],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )


def _has_gpu() -> bool:
    try:
        return bool(jax.devices("gpu"))
    except RuntimeError:
        return False


@pytest.mark.skipif(_has_gpu(), reason="this machine has a GPU")
@pytest.mark.parametrize("command", ["verify", "bench"])
def test_a_platform_this_machine_lacks_exits_3_with_one_line(command):
    result = _run_cli(command, "--platform", "gpu")
    assert result.returncode == 3
    assert result.stderr.strip().splitlines() == [
        "matcalc-jax: error: --platform gpu: JAX finds no gpu device on this machine"
    ]


def test_the_watchdog_stops_a_stuck_run_with_exit_1_and_says_where():
    stuck = (
        "import sys, time; import matcalc_jax.verification.harness as h; "
        "h.run_case = lambda *a, **k: time.sleep(120); "
        "from matcalc_jax.cli.main import main; "
        "sys.exit(main(['verify', '--no-cache', '--rules', 'exp', '--dtype', 'float32', "
        "'--sizes', '2', '--timeout', '1']))"
    )
    result = subprocess.run(
        [sys.executable, "-c", stuck], capture_output=True, text=True, timeout=100
    )
    assert result.returncode == 1
    assert "no progress for" in result.stderr
    assert "at exp float32 size 2" in result.stderr


def test_docs_check_passes_on_the_committed_file(capsys):
    assert main(["docs", "--check", "--out", str(ROOT / "docs" / "rules.md")]) == 0


def test_docs_check_fails_on_a_stale_file(tmp_path, capsys):
    stale = tmp_path / "rules.md"
    stale.write_text("# old\n")
    assert main(["docs", "--check", "--out", str(stale)]) == 1
    assert main(["docs", "--out", str(stale)]) == 0
    assert main(["docs", "--check", "--out", str(stale)]) == 0


def test_python_dash_m_runs_the_same_command():
    result = subprocess.run(
        [sys.executable, "-m", "matcalc_jax", "list"], capture_output=True, text=True, check=True
    )
    assert "chain_matrix_trace" in result.stdout


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--rules", ""], "--rules names no rule"),
        (["--rules", "softmax", "--no-cache", "--cache-dir", "x"], "contradict each other"),
        (["--rules", "softmax", "--json", "."], "is a directory"),
        (["--rules", "softmax", "--json", "no/such/folder/r.json"], "does not exist"),
        (["--rules", "softmax", "--seed", "1" * 23], "expected an integer in"),
        (["--rules", "softmax", "--cache-dir", ""], "--cache-dir is empty"),
        (["--rules", "softmax", "--cache-dir", "/dev/null"], "is not a directory"),
        (["--rules", "softmax", "--cache-dir", __file__], "is not a directory"),
        (["--rules", "softmax", "--cache-dir", os.fsdecode(b"c\xff")], "is not UTF-8 as this"),
        (["--rules", "softmax", "--json", ""], "--json is empty"),
        (["--rules", "softmax", "--json", "new.json/"], "ends with a separator"),
        (["--rules", "softmax", "--dtype", ""], "--dtype '' names no dtype"),
        (["--rules", "softmax", "--dtype", ","], "--dtype ',' names no dtype"),
        (["--rules", "softmax", "--max-gib", "1e-30"], "--max-gib 1e-30 is under one byte"),
        (["--rules", "softmax,nope"], "unknown rule id 'nope'"),
        (["--rules", "inverse", "--sizes", "200"], "over the limit of 4.0 GiB"),
        (["--rules", "softmax", "--sizes", "4", "--max-gib", "1e-8"], "over the limit of 0.0 GiB"),
    ],
)
def test_verify_refuses_bad_requests_before_any_work(capsys, monkeypatch, tmp_path, argv, message):
    """Usage errors exit 2 with one line, before a check runs (no verdict is printed) and
    before the cache is opened: an unknown rule id or an oversized case neither created
    nor repaired the default cache (it was made, and its JAX entries checked, first)."""
    monkeypatch.setenv("MATCALC_JAX_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)  # a relative path wrongly made lands here
    assert main(["verify", *argv]) == 2
    captured = capsys.readouterr()
    assert message in captured.err and "verdict" not in captured.out
    assert not (tmp_path / "cache").exists()


def test_verify_json_is_strict_when_a_check_fails(tmp_path, monkeypatch):
    """A failed check's infinite error is the string "inf": strict parsers read the file."""
    failed = Check("softmax", "float32", 4, "jacfwd", float("inf"), 1e-6, False)
    nan = Check("softmax", "float32", 4, "jacrev", float("nan"), 1e-6, False)
    report = Report((failed, nan), {"platform": "cpu"})
    text = report.to_json(tmp_path / "r.json")

    def refuse(constant):
        raise ValueError(f"not strict JSON: {constant}")

    data = json.loads(text, parse_constant=refuse)
    assert data["checks"][0]["error"] == "inf" and data["checks"][1]["error"] == "nan"
    assert data["rules"]["softmax"]["max_error"]["float32"]["jacfwd"] == "inf"


def test_a_selection_counts_each_rule_once_and_takes_one_id_as_a_string():
    report = mj.verify("linear", dtypes=["float32"], sizes=[3, 3])
    assert report.rule_ids == ("linear",) and len(report.checks) == 10
    twice = mj.verify(["linear", "linear"], dtypes=["float32"], sizes=[3])
    assert len(twice.checks) == 10
    with pytest.raises(ValueError, match="sizes"):
        mj.verify(["linear"], dtypes=["float32"], sizes=[2.5])


@pytest.mark.parametrize("argv", [["softmax", "--sizes", "100000"], ["inverse", "--sizes", "200"]])
def test_verify_refuses_a_case_too_large_before_running_it(capsys, argv):
    """A case estimated over the memory limit is refused with one line and exit 2, before
    anything is allocated; the limit names its flag."""
    assert main(["verify", "--no-cache", "--rules", *argv, "--dtype", "float32"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "GiB, over the limit of 4.0 GiB" in err
    assert "--max-gib" in err


@pytest.mark.parametrize(
    "rule, size",
    [
        ("trace_linear", "3037000500"),  # its Jacobian's entries overflowed 64 bits
        ("linear", "9223372036854775807"),
        ("linear", "99999999999999999999"),
        ("inverse", "2147483648"),  # 32-bit LAPACK dimensions
    ],
)
def test_verify_refuses_a_size_beyond_what_it_counts_in_one_line(capsys, rule, size):
    argv = ["verify", "--no-cache", "--rules", rule, "--dtype", "float32", "--sizes", size]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "expected positive integers up to 2147483647" in err


def test_a_program_whose_inner_arrays_outgrow_its_jacobian_is_refused_by_them():
    """gp_log_likelihood's Jacobian is a few numbers, its kernel matrix n x n: at n = 46341
    it needs 17 GB in float64, and XLA would abort the process allocating it."""
    from matcalc_jax.verification.harness import case_bytes

    n = 46341
    assert case_bytes(mj.rule("gp_log_likelihood"), "float64", n) >= n * n * 8
    with pytest.raises(ValueError, match="GiB, over the limit"):
        mj.verify(["gp_log_likelihood"], dtypes=["float64"], sizes=[n])


def test_case_bytes_counts_the_jacobian_of_the_shapes():
    from matcalc_jax.verification.harness import case_bytes

    # inverse at 200: a (200, 200, 200, 200) Jacobian, 8 copies of float32 entries
    assert case_bytes(mj.rule("inverse"), "float32", 200) == 200**4 * 4 * 8
    assert case_bytes(mj.rule("softmax"), "float64", 10) == 10 * 10 * 8 * 8


def test_case_bytes_reads_a_rule_s_shapes_once_per_size_whatever_the_dtype(monkeypatch):
    """verify estimates every case before the run (318 of them by default): the shapes are
    the same in every dtype, so each rule and size is traced once and the dtype scales it."""
    from matcalc_jax.verification import harness

    traced = []
    make_jaxpr = jax.make_jaxpr
    monkeypatch.setattr(jax, "make_jaxpr", lambda *a, **k: traced.append(1) or make_jaxpr(*a, **k))
    harness._case_entries.cache_clear()
    rule = mj.rule("softmax")
    sizes = {d: harness.case_bytes(rule, d, 7) for d in ("float32", "float64", "bfloat16")}
    assert sizes == {"float32": 7 * 7 * 4 * 8, "float64": 7 * 7 * 8 * 8, "bfloat16": 7 * 7 * 8 * 8}
    assert len(traced) == 1


_PARENT = """
import os, sys
from matcalc_jax.site.build import run_reaped
child = "import os, time; open({pidfile!r}, 'w').write(str(os.getpid())); time.sleep(120)"
run_reaped([sys.executable, "-c", child], dict(os.environ))
"""


def test_a_terminated_site_server_stops_its_child(tmp_path):
    """SIGTERM to ``site --serve`` (here its runner) ends the MkDocs child too."""
    import signal
    import time

    pidfile = tmp_path / "child.pid"
    parent = subprocess.Popen([sys.executable, "-c", _PARENT.format(pidfile=str(pidfile))])
    try:
        for _ in range(600):
            if pidfile.exists() and pidfile.read_text():
                break
            time.sleep(0.05)
        child = int(pidfile.read_text())
        parent.send_signal(signal.SIGTERM)
        assert parent.wait(timeout=30) == 128 + signal.SIGTERM
        for _ in range(200):  # the child was waited for: it no longer exists
            try:
                os.kill(child, 0)
            except ProcessLookupError:
                break
            time.sleep(0.05)
        else:
            os.kill(child, signal.SIGKILL)
            raise AssertionError("the child outlived its parent")
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()


def test_ctrl_c_is_one_line_and_exit_130(capsys, monkeypatch):
    import importlib

    cli = importlib.import_module("matcalc_jax.cli.main")

    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "_verify", interrupted)  # the parser binds it when built
    assert cli.main(["verify", "--no-cache"]) == 130
    err = capsys.readouterr().err
    assert "interrupted" in err and "Traceback" not in err


@pytest.mark.parametrize(
    "signal_name, code, said", [("SIGINT", 130, "interrupted"), ("SIGTERM", 143, "terminated")]
)
def test_a_signal_python_lost_still_ends_the_run_with_its_exit_code(
    capsys, monkeypatch, signal_name, code, said
):
    """JAX's garbage-collection callback swallows a KeyboardInterrupt raised inside it:
    the command still exits 130 (143 for SIGTERM), never 0, and says so in one line."""
    import contextlib
    import importlib
    import signal

    cli = importlib.import_module("matcalc_jax.cli.main")

    def lost(args):
        with contextlib.suppress(KeyboardInterrupt):  # as in a callback from C
            signal.raise_signal(getattr(signal, signal_name))
        return 0

    before = signal.getsignal(signal.SIGTERM)
    monkeypatch.setattr(cli, "_verify", lost)
    assert cli.main(["verify", "--no-cache"]) == code
    assert capsys.readouterr().err.strip() == f"matcalc-jax: {said}"
    assert signal.getsignal(signal.SIGTERM) is before


@pytest.mark.parametrize("kind", ["link to nowhere", "full device"])
def test_a_json_path_that_cannot_be_written_is_one_line_and_exit_2(capsys, tmp_path, kind):
    """A link to a missing file is refused before the run; a full device (only known when
    writing) after it, in one line, not a traceback."""
    if kind == "link to nowhere":
        path = tmp_path / "r.json"
        path.symlink_to(tmp_path / "missing" / "r.json")
    else:
        path = Path("/dev/full")
        if not path.exists():
            pytest.skip("no /dev/full here")
    argv = ["verify", "--no-cache", "--rules", "linear", "--sizes", "2", "--dtype", "float32"]
    assert main([*argv, "--json", str(path)]) == 2
    captured = capsys.readouterr()
    errors = [line for line in captured.err.splitlines() if "error" in line]
    assert len(errors) == 1 and "Traceback" not in captured.err
    if kind == "link to nowhere":
        assert "is a link to a missing file" in errors[0] and "verdict" not in captured.out
    else:
        assert "No space left on device" in errors[0] and "verdict: PASS" in captured.out


def test_jax_s_cache_write_warnings_are_left_out_and_said_once(tmp_path, capsys, monkeypatch):
    """A cache that cannot be written (read-only, removed during the run) makes JAX warn
    once per program: those warnings are left out, in the worker processes too, and one
    note says it after the run."""
    import importlib
    import warnings

    cli = importlib.import_module("matcalc_jax.cli.main")
    monkeypatch.delenv("PYTHONWARNINGS", raising=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with cli._cache_write_warnings_left_out():
            assert "ignore:Error writing persistent" in os.environ["PYTHONWARNINGS"]
            jax_s = "Error writing persistent compilation cache entry for 'jit_f': ..."
            warnings.warn(jax_s, stacklevel=1)
            warnings.warn("another warning", stacklevel=1)
    assert [str(w.message) for w in caught] == ["another warning"]
    assert "PYTHONWARNINGS" not in os.environ

    cli._say_if_unwritable(str(tmp_path))  # writable: nothing to say
    cli._say_if_unwritable(str(tmp_path / "removed"))
    notes = capsys.readouterr().err.strip().splitlines()
    assert len(notes) == 1 and "removed" in notes[0] and "could not be written" in notes[0]


def test_an_internal_error_is_not_read_as_a_usage_error(monkeypatch):
    """A ValueError raised inside JAX or NumPy (a bug) keeps its traceback; only the
    package's own checks are usage errors (exit 2)."""
    import importlib

    import numpy as np

    cli = importlib.import_module("matcalc_jax.cli.main")

    def broken(args):
        np.zeros(2).reshape(3)  # NumPy raises: not a usage error

    monkeypatch.setattr(cli, "_verify", broken)
    with pytest.raises(ValueError, match="reshape"):
        cli.main(["verify", "--no-cache"])


def test_a_key_error_of_the_package_s_own_lookup_is_not_a_usage_error(monkeypatch):
    """A KeyError from a subscript in the package's code (a parameter a newer JAX renamed)
    is a bug and keeps its traceback; a ``raise`` of the package's own check (an unknown
    rule id) is a usage error, exit 2 in one line."""
    import importlib

    cli = importlib.import_module("matcalc_jax.cli.main")

    from types import SimpleNamespace

    from matcalc_jax.transform.registry import RULES

    def broken(args):  # the scan rule given an equation without the parameters it reads
        return RULES["scan"](None, SimpleNamespace(params={}), [], [])

    monkeypatch.setattr(cli, "_verify", broken)
    with pytest.raises(KeyError, match="jaxpr"):
        cli.main(["verify", "--no-cache"])
    monkeypatch.undo()
    assert cli.main(["verify", "--rules", "no_such_rule", "--no-cache"]) == 2


def _children(pid):
    """The processes whose parent is ``pid`` (Linux: read from /proc)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def _gone(pids, seconds=30):
    import time

    for _ in range(int(seconds / 0.1)):
        alive = []
        for pid in pids:
            try:
                os.kill(pid, 0)
                if "Z" in Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]:
                    continue  # a zombie has ended
                alive.append(pid)
            except (ProcessLookupError, FileNotFoundError):
                pass
        if not alive:
            return True
        time.sleep(0.1)
    return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
@pytest.mark.parametrize("how", ["SIGINT", "SIGTERM", "SIGKILL"])
def test_verify_in_processes_leaves_no_worker_behind(how):
    """Ctrl-C ends a run in worker processes in one line, exit 130 (SIGTERM: 143), and
    stops the workers; a killed run's workers die with it."""
    import signal
    import time

    run = subprocess.Popen(
        [sys.executable, "-m", "matcalc_jax", "verify", "--no-cache", "--processes", "2",
         "--dtype", "float32"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        workers = []
        for _ in range(600):  # the two workers (and multiprocessing's resource tracker)
            workers = [p for p in _children(run.pid) if "spawn_main" in _cmdline(p)]
            if len(workers) == 2:
                break
            time.sleep(0.1)
        assert len(workers) == 2
        time.sleep(1)
        run.send_signal(getattr(signal, how))
        try:
            _, err = run.communicate(timeout=60)
        except subprocess.TimeoutExpired as timeout:  # say what the run was doing
            run.kill()
            tail = (timeout.stderr or b"")[-1500:]
            pytest.fail(f"{how}: still running after 60 s; its stderr ends {tail!r}")
        if how != "SIGKILL":
            code, said = (130, "interrupted") if how == "SIGINT" else (143, "terminated")
            assert run.returncode == code
            assert said in err and "Traceback" not in err and "leaked" not in err
        assert _gone(workers)
    finally:
        if run.poll() is None:
            run.kill()
            run.communicate()


def _cmdline(pid):
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    except OSError:
        return ""


def test_an_interrupt_lost_on_the_way_is_raised_at_the_next_step():
    """Ctrl-C whose KeyboardInterrupt something swallowed (a finalizer, a C callback) stops
    the run at its next step; outside the block Ctrl-C is Python's own again."""
    import contextlib
    import signal

    from matcalc_jax.cli.console import Interrupts

    before = signal.getsignal(signal.SIGINT)
    with Interrupts() as interrupts:
        interrupts.check()  # nothing asked yet
        with contextlib.suppress(KeyboardInterrupt):  # lost on the way
            signal.raise_signal(signal.SIGINT)
        with pytest.raises(KeyboardInterrupt):
            interrupts.check()
    assert signal.getsignal(signal.SIGINT) is before


@pytest.mark.parametrize(
    ("argv", "said"),
    [
        (["docs", "--out", "{dir}"], "docs: --out {dir} is a directory"),
        (["accuracy", "--out", "{dir}"], "accuracy: --out {dir} is a directory"),
        (["bench", "--quick", "--rules", "identity", "--csv", "{dir}/no/t.csv"], "does not exist"),
        (["bench", "--quick", "--rules", "identity", "--markdown", ""], "--markdown is empty"),
        (["bench-models", "--quick", "--json", "{dir}"], "bench-models: --json {dir} is a"),
        (["bench-transform", "--quick", "--markdown", "{dir}/no/t.md"], "does not exist"),
        (["bench-hessian", "--quick", "--plot", "{dir}"], "bench-hessian: --plot {dir} is a"),
        (["bench", "--quick", "--rules", "identity", "--plots", __file__], "is a file"),
        (["bench", "--quick", "--rules", "identity", "--plots", ""], "expected a folder path"),
        (["bench", "--quick", "--rules", "identity", "--dtype", ""], "names no dtype"),
        (["bench-hessian", "--quick", "--plot", "-"], "--plot is a PNG, not for stdout"),
        (["bench", "--quick", "--json", "-", "--csv", "-"], "--json and --csv are both -"),
        (["docs", "--check", "--out", "{dir}"], "docs: --out {dir} is a directory"),
        (["docs", "--check", "--out", ""], "--check reads --out; got ''"),
    ],
    ids=[
        "docs",
        "accuracy",
        "bench csv",
        "bench markdown",
        "models",
        "transform",
        "hessian",
        "plots a file",
        "plots empty",
        "bench dtype empty",
        "plot to stdout",
        "two to stdout",
        "docs check a directory",
        "docs check empty",
    ],
)
def test_every_command_refuses_an_output_path_before_any_work(capsys, tmp_path, argv, said):
    argv = [a.format(dir=tmp_path) for a in argv]
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert captured.err.strip() == f"matcalc-jax: error: {said.format(dir=tmp_path)}" or (
        said.format(dir=tmp_path) in captured.err and len(captured.err.splitlines()) == 1
    )
    assert "device:" not in captured.out  # nothing ran


def test_an_output_write_that_fails_after_the_work_is_one_line_and_exit_2(capsys):
    if not Path("/dev/full").exists():
        pytest.skip("no /dev/full here")
    assert main(["docs", "--out", "/dev/full"]) == 2
    err = capsys.readouterr().err
    assert err.strip() == "matcalc-jax: error: docs: --out /dev/full: No space left on device"


def test_bench_models_runs_float64_in_64_bit_mode_and_refuses_other_dtypes(capsys, monkeypatch):
    """--dtype float64 once timed float32 arrays under a float64 label (64-bit mode off)."""
    import importlib

    models = importlib.import_module("matcalc_jax.benchmark.models")
    seen = []
    monkeypatch.setattr(models, "bench_models", lambda **kw: seen.append(
        (kw["dtype"], jax.numpy.ones(1, kw["dtype"]).dtype.name)) or ())  # fmt: skip
    monkeypatch.setattr(models, "format_models", lambda cases: "")
    with jax.enable_x64(False):  # as on the command line (the suite runs with it on)
        assert main(["bench-models", "--quick", "--dtype", "float64"]) == 0
    assert seen == [("float64", "float64")]
    assert main(["bench-models", "--quick", "--dtype", "int32"]) == 2
    assert "bench-models: dtype 'int32' is not one it checks" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "said"),
    [
        (["bench-scale", "--quick", "--devices", "3"], "must be a power of two up to 64"),
        (["bench", "--quick", "--rules", "identity", "--sizes", "99999999999"], "up to 2147483647"),
    ],
    ids=["devices that do not split the batch", "a size past 2^31 - 1"],
)
def test_bench_arguments_it_cannot_run_are_usage_errors(capsys, argv, said):
    """A JAX sharding traceback and an OverflowError traceback (exit 1) before."""
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert said in err and len(err.strip().splitlines()) == 1


def test_site_refuses_a_bad_address_and_a_build_path_that_is_a_file(capsys, tmp_path, monkeypatch):
    """mkdocs' OverflowError traceback, a NotADirectoryError traceback (exit 1) before."""
    with pytest.raises(SystemExit) as stopped:
        main(["site", "--serve", "--address", "127.0.0.1:99999"])
    assert stopped.value.code == 2
    assert "a port from 1 to 65535; got '127.0.0.1:99999'" in capsys.readouterr().err
    (tmp_path / "file").write_text("")
    monkeypatch.chdir(ROOT)  # site runs from the repository's root
    assert main(["site", "--build", str(tmp_path / "file")]) == 2
    assert capsys.readouterr().err.strip().endswith("is not a directory")


def test_docs_check_of_a_file_that_is_not_text_is_stale(tmp_path, capsys):
    """A UnicodeDecodeError traceback (exit 1) before: a file that is not the page is stale."""
    page = tmp_path / "rules.md"
    page.write_bytes(bytes(range(128, 256)))
    assert main(["docs", "--check", "--out", str(page)]) == 1
    assert "is stale" in capsys.readouterr().err


def test_dash_is_stdout_for_every_output_and_the_table_then_goes_to_stderr(
    capsys, tmp_path, monkeypatch
):
    """docs, bench's --csv and the benchmarks' --json wrote a file named "-" before."""
    import importlib

    monkeypatch.chdir(tmp_path)
    assert main(["docs", "--out", "-"]) == 0
    captured = capsys.readouterr()
    assert captured.out.startswith("# ") and "wrote" not in captured.out + captured.err
    models = importlib.import_module("matcalc_jax.benchmark.models")
    monkeypatch.setattr(models, "bench_models", lambda **kw: ())
    monkeypatch.setattr(models, "format_models", lambda cases: "the table")
    assert main(["bench-models", "--quick", "--json", "-"]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["schema"].startswith("matcalc-jax/bench-models")
    assert "the table" in captured.err
    assert not (tmp_path / "-").exists()


def _verify_into_a_closed_pipe(argv, monkeypatch):
    """main(["verify", ...]) with stdout a pipe whose reader is gone (``| head -c 0``)."""
    import io

    read, write = os.pipe()
    os.close(read)
    stdout = io.TextIOWrapper(os.fdopen(write, "wb", buffering=0), write_through=True)
    monkeypatch.setattr(sys, "stdout", stdout)
    try:
        return main(["verify", *argv])
    finally:
        monkeypatch.undo()
        stdout.close()


@pytest.mark.parametrize("failing", [False, True], ids=["passing", "failing"])
def test_a_closed_pipe_keeps_verify_s_verdict(monkeypatch, failing):
    """`verify | head` exited 0 with a failed check (a pipefail script read a pass)."""
    if failing:
        swap_in_wrong_linear(monkeypatch)
    argv = ["--rules", "linear", "--dtype", "float32", "--sizes", "2", "--processes", "1"]
    argv += ["--no-cache"]  # in this process: the user's cache is not the suite's to fill
    assert _verify_into_a_closed_pipe(argv, monkeypatch) == (1 if failing else 0)
    argv += ["--json", "-"]
    if failing:
        swap_in_wrong_linear(monkeypatch)
    assert _verify_into_a_closed_pipe(argv, monkeypatch) == (1 if failing else 0)


def test_a_worker_process_that_dies_is_one_line_and_exit_1(capsys, monkeypatch):
    """A worker killed (the out-of-memory killer) ended the run with a BrokenProcessPool
    traceback: now a WorkerDiedError naming the task, one line from the command."""
    import importlib

    from matcalc_jax.verification import processes

    cli = importlib.import_module("matcalc_jax.cli.main")

    results = processes.ordered_map(os._exit, [(1,)], 1)  # a worker that ends at once
    with pytest.raises(processes.WorkerDiedError, match="task 0"):
        next(results)

    def died(args):
        raise processes.WorkerDiedError("verify: a worker process ended while checking x")

    monkeypatch.setattr(cli, "_verify", died)
    assert main(["verify", "--rules", "softmax"]) == 1
    assert capsys.readouterr().err.strip() == (
        "matcalc-jax: error: verify: a worker process ended while checking x"
    )


def test_main_called_from_python_gives_back_the_caller_s_jax_options(tmp_path):
    """``main([...])`` in a caller's process (a notebook, a test) set the platform and the
    compilation cache's options for the process and kept them: the caller's later
    programs went to the command's cache, which the next run then dropped as unvouched.
    Now the run keeps its compiles in its own cache and gives the options back."""
    import jax.numpy as jnp

    options = (
        "jax_platforms",
        "jax_compilation_cache_dir",
        "jax_persistent_cache_min_compile_time_secs",
        "jax_persistent_cache_min_entry_size_bytes",
    )
    before = {name: getattr(jax.config, name) for name in options}
    argv = ["verify", "--rules", "exp", "--dtype", "float32", "--sizes", "3"]
    assert main([*argv, "--cache-dir", str(tmp_path / "run")]) == 0
    assert {name: getattr(jax.config, name) for name in options} == before
    kept = set(os.listdir(tmp_path / "run" / "xla"))
    assert len(kept) > 1  # the run's own compiles, beside its manifest
    jax.jit(lambda x: jnp.sinh(x) * 3.25 - 0.125)(jnp.arange(5.0)).block_until_ready()
    assert set(os.listdir(tmp_path / "run" / "xla")) == kept


_VERIFY_EXP = ["verify", "--rules", "exp", "--dtype", "float32", "--sizes", "2", "--no-cache"]


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
@pytest.mark.parametrize(
    "argv",
    [
        _VERIFY_EXP,
        [*_VERIFY_EXP, "--json", "-"],
        ["list"],
        ["list", "--wide"],
        ["--help"],
        ["verify", "--help"],
        ["docs", "--help"],
    ],
    ids=["verify table", "verify json", "list", "list wide", "help", "verify help", "docs help"],
)
def test_a_full_standard_output_is_one_line_and_exit_2(argv):
    """``verify > /dev/full`` (and ``list > /dev/full``): a passing run ended in an
    ``OSError`` traceback, exit 1; ``--help > /dev/full`` exited 0, having written nothing
    (argparse drops a failed write)."""
    with open("/dev/full", "w") as full:
        done = subprocess.run(
            [sys.executable, "-m", "matcalc_jax", *argv],
            stdout=full, stderr=subprocess.PIPE, text=True, timeout=300,
        )  # fmt: skip
    assert done.returncode == 2, done.stderr[-2000:]
    assert "Traceback" not in done.stderr
    named = "--help" if "--help" in argv else argv[0]
    assert done.stderr.splitlines()[-1] == (
        f"matcalc-jax: error: {named}: cannot write to standard output (No space left on device)"
    )


def _closing(descriptor, argv):
    """``python -m matcalc_jax *argv`` started with ``descriptor`` closed (``>&-``), by the
    shell (a ``preexec_fn`` would fork this multithreaded process)."""
    return ["sh", "-c", f'exec "$0" -m matcalc_jax "$@" {descriptor}>&-', sys.executable, *argv]


def test_a_closed_standard_output_is_one_line_and_exit_2_before_any_work():
    """``verify >&-`` ran every check, then an ``AttributeError`` traceback, exit 1;
    ``list >&-`` exited 0 having written nothing."""
    for argv in (_VERIFY_EXP, ["list"]):
        done = subprocess.run(_closing(1, argv), stderr=subprocess.PIPE, text=True, timeout=300)
        assert done.returncode == 2, done.stderr[-2000:]
        assert done.stderr.splitlines() == [
            f"matcalc-jax: error: {argv[0]}: cannot write to standard output (it is closed)"
        ]


def test_a_closed_standard_error_leaves_the_report_and_the_exit_code_as_they_are():
    """``verify 2>&-`` was exit 1 with nothing on stdout (an ``AttributeError`` in the
    progress line); an error with stderr closed must not land on stdout either."""
    done = subprocess.run(_closing(2, _VERIFY_EXP), stdout=subprocess.PIPE, text=True, timeout=300)
    assert done.returncode == 0
    assert done.stdout.splitlines()[-1] == "verdict: PASS, all 10 checks of 1 rule passed"
    refused = subprocess.run(
        _closing(2, ["verify", "--rules", "nope"]), stdout=subprocess.PIPE, text=True, timeout=300
    )
    assert (refused.returncode, refused.stdout) == (2, "")


def test_json_to_dev_stdout_is_json_alone_on_standard_output(tmp_path):
    """``--json /dev/stdout > FILE`` truncated the table and wrote "wrote /dev/stdout"
    inside the JSON, exit 0 on a file no parser reads: it is written as ``--json -``."""
    out = tmp_path / "out.json"
    with open(out, "w") as stdout:
        done = subprocess.run(
            [sys.executable, "-m", "matcalc_jax", *_VERIFY_EXP, "--json", "/dev/stdout"],
            stdout=stdout, stderr=subprocess.PIPE, text=True, timeout=300,
        )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(out.read_text())["schema"] == "matcalc-jax/verify/1"
    assert "verdict: PASS" in done.stderr  # the table went to stderr, as for --json -


def test_main_gives_back_the_caller_s_standard_output(capsys):
    """``main`` guards standard output while it runs and hands the caller's stream back."""
    stream = sys.stdout
    assert main(["list"]) == 0
    assert sys.stdout is stream
    assert "product_inner" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("argv", "said"),
    [
        (["verify", "--sizes", "x"], "matcalc-jax verify: error: argument --sizes"),
        (["verify", "--no-such-option"], "matcalc-jax: error: unrecognized arguments"),
        (["no-such-command"], "matcalc-jax: error: argument command: invalid choice"),
    ],
)
def test_a_usage_error_argparse_finds_is_one_line(capsys, argv, said):
    """argparse printed its usage block before the error (six lines for verify); the docs
    promise one line naming the option, and where the usage is."""
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1, err
    assert err.startswith(said) and err.rstrip().endswith("--help)")


@pytest.mark.parametrize("failing", [("float64",), ("float64", "float32")], ids=["f64", "both"])
def test_the_float64_check_says_no_float64_only_when_float32_works(monkeypatch, failing):
    """Every TypeError of the first program (a cache path XLA's options could not take)
    was reported as "float64 is not available", exit 3; it is so only when the same
    program runs in float32."""
    import importlib

    import jax.numpy as jnp

    cli = importlib.import_module("matcalc_jax.cli.main")  # the module, not main()
    ones = jnp.ones

    def refusing(shape, dtype=None):
        if jnp.dtype(dtype).name in failing:
            raise TypeError("incompatible function arguments")
        return ones(shape, dtype)

    monkeypatch.setattr(jnp, "ones", refusing)
    expected = cli.EnvironmentUnavailableError if len(failing) == 1 else RuntimeError
    with pytest.raises(expected) as raised:
        cli._require_x64()
    assert ("try --no-cache" in str(raised.value)) == (len(failing) == 2)
