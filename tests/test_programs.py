"""The cache of compiled programs: a warm run loads what a cold run compiled, a damaged or
swapped file is dropped and compiled again, and no entry outlives what it depends on."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax._src import compilation_cache  # reset_cache: JAX has no public way to reopen it

import matcalc_jax as mj
from matcalc_jax.verification import harness
from matcalc_jax.verification import programs as programs_module
from matcalc_jax.verification.programs import ProgramCache, context_key

from .helpers import run_verify, swap_two_and_truncate_one, wrong_linear


def _function(scale):
    """A program with a LAPACK call (its kernels must be set up before a loaded copy runs)."""

    def f(inputs):
        return {"inverse": jnp.linalg.inv(inputs["a"]) * scale, "sum": inputs["a"].sum()}

    return f


_INPUTS = {"a": jnp.array([[2.0, 1.0], [0.5, 3.0]], jnp.float32)}


def _compiled(cache, name, scale=1.0):
    return cache.compiled(name, _function(scale), _INPUTS)


def test_a_second_cache_loads_what_the_first_compiled(tmp_path):
    first = _compiled(ProgramCache(tmp_path), ("p",))
    cache = ProgramCache(tmp_path)
    compiled = cache.compiled(("p",), lambda inputs: pytest.fail("compiled again"), _INPUTS)
    assert cache.loaded == 1 and cache.dropped == 0
    expected = np.linalg.inv(np.asarray(_INPUTS["a"]))
    np.testing.assert_allclose(compiled(_INPUTS)["inverse"], expected, rtol=1e-6)
    np.testing.assert_array_equal(compiled(_INPUTS)["sum"], first(_INPUTS)["sum"])


def test_damaged_and_swapped_files_are_dropped_and_compiled_again(tmp_path):
    cache = ProgramCache(tmp_path)
    for k in range(4):  # four programs that differ by a scale
        _compiled(cache, (k,), scale=float(k + 1))
    files = {k: tmp_path / cache._key("program", (k,), _INPUTS) for k in range(4)}
    files[0].write_bytes(files[0].read_bytes()[:100])  # truncated
    files[1].write_bytes(b"garbage")
    second, third = files[2].read_bytes(), files[3].read_bytes()
    files[2].write_bytes(third)  # two valid files swapped
    files[3].write_bytes(second)
    again = ProgramCache(tmp_path)
    for k in range(4):
        compiled = _compiled(again, (k,), scale=float(k + 1))
        expected = np.linalg.inv(np.asarray(_INPUTS["a"])) * (k + 1)
        np.testing.assert_allclose(compiled(_INPUTS)["inverse"], expected, rtol=1e-6)
    assert again.dropped == 4 and again.loaded == 0
    fresh = ProgramCache(tmp_path)  # rewritten whole: the next reader loads all four
    for k in range(4):
        _compiled(fresh, (k,), scale=float(k + 1))
    assert fresh.loaded == 4 and fresh.dropped == 0
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary left


def test_arrays_and_values_round_trip_and_survive_damage(tmp_path):
    cache = ProgramCache(tmp_path)
    tree = {"args": (jnp.arange(3.0), jnp.ones((2, 2), jnp.bfloat16)), "t": jnp.zeros(1)}
    cache.arrays(("x",), lambda: tree)
    loaded = ProgramCache(tmp_path).arrays(("x",), lambda: pytest.fail("drawn again"))
    assert jax.tree_util.tree_structure(loaded) == jax.tree_util.tree_structure(tree)
    for a, b in zip(
        jax.tree_util.tree_leaves(loaded), jax.tree_util.tree_leaves(tree), strict=True
    ):
        assert a.dtype == b.dtype
        np.testing.assert_array_equal(a, b)
    assert cache.value(("v",), lambda: {"n": [1, 2]}) == {"n": [1, 2]}
    for path in tmp_path.iterdir():
        path.write_bytes(path.read_bytes()[:-1])  # every file loses its last byte
    again = ProgramCache(tmp_path)
    assert again.value(("v",), lambda: {"n": [3]}) == {"n": [3]}
    again.arrays(("x",), lambda: tree)
    assert again.dropped == 2


def test_an_entry_that_is_a_directory_is_dropped_and_kept_again(tmp_path):
    """A directory where an entry's file belongs was read as absent, computed again and
    never kept (the rename onto it failed), on every run."""
    key = ProgramCache(tmp_path)._key("value", ("v",))
    (tmp_path / key).mkdir()
    (tmp_path / key / "inside").write_text("")
    cache = ProgramCache(tmp_path)
    assert cache.value(("v",), lambda: [1]) == [1]
    assert cache.dropped == 1
    again = ProgramCache(tmp_path)
    assert again.value(("v",), lambda: pytest.fail("computed again")) == [1]
    assert again.loaded == 1 and again.dropped == 0


def test_a_dead_writer_s_temporary_file_is_removed_and_a_live_one_s_kept(tmp_path):
    """A run killed between writing an entry's temporary file and renaming it left the
    file forever; the next cache opened removes it, not a running writer's."""
    import subprocess
    import sys

    ended = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                           capture_output=True, text=True, check=True)  # fmt: skip
    dead = tmp_path / f".{'a' * 64}.{int(ended.stdout)}.1.tmp"
    live = tmp_path / f".{'b' * 64}.{os.getpid()}.1.tmp"
    other = tmp_path / "notes.tmp"  # not one of the cache's names
    for path in (dead, live, other):
        path.write_bytes(b"partial")
    ProgramCache(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([live.name, other.name])


def test_the_key_changes_with_everything_a_program_depends_on(tmp_path, monkeypatch):
    base = context_key()
    with jax.enable_x64(not jax.config.jax_enable_x64):
        assert context_key() != base  # the calling thread's 64-bit mode
    with jax.default_matmul_precision("highest"):
        assert context_key() != base
    machine = programs_module._machine()
    for field in ("source", "jax", "jaxlib", "platform", "cpu_flags"):
        changed = {**machine, field: str(machine[field]) + "x"}
        monkeypatch.setattr(programs_module, "_machine", lambda changed=changed: changed)
        assert context_key() != base, field
    monkeypatch.undo()
    assert context_key() == base
    cache = ProgramCache(tmp_path)
    other = {"a": jnp.ones((3, 3), jnp.float32)}
    assert cache._key("program", ("p",), _INPUTS) != cache._key("program", ("p",), other)
    faster = {"xla_backend_optimization_level": 0}
    assert cache._key("program", ("p",), _INPUTS) != cache._key("program", ("p",), _INPUTS, faster)


def test_a_rule_record_changed_in_a_running_process_is_not_served_its_kept_programs(tmp_path):
    """The package's files fix a key, but a record's function swapped inside a process
    (a wrong closed form) must not be checked by what the right one compiled: the key
    holds the compiled code of the record's functions, and of what their closures hold."""

    from matcalc_jax.verification.programs import code_digest

    wrong = wrong_linear()
    assert mj.verify(["linear"], dtypes="float32", sizes=2, programs=tmp_path).passed
    report = harness.check_rules([(0, wrong)], ["float32"], [2], 0, lambda e: None, 1,
                                 ProgramCache(tmp_path))  # fmt: skip
    assert {c.reference for c in report if not c.passed} >= {"jacfwd", "jacrev"}

    def closing_over(k):
        return lambda x: k(x)

    def plus(x):
        return x + 1

    def times(x):
        return x * 2

    assert code_digest(plus) != code_digest(times)
    assert code_digest(closing_over(plus)) != code_digest(closing_over(times))
    assert code_digest(closing_over(plus)) == code_digest(closing_over(plus))


def test_a_helper_of_a_form_patched_in_a_running_process_is_not_served_kept_programs(
    tmp_path, monkeypatch
):
    """The record's functions unchanged, but a module-level helper they call by name
    (``linear._matrix_vector``) replaced by a wrong one: the kept programs and eager result
    are the right helper's, so the key follows the functions a record reaches by a global
    name too (a passing report was served before). Without a cache of programs, the
    programs this process traced before are not reused either."""
    import matcalc_jax.forms.linear as linear
    from matcalc_jax.verification.programs import code_digest

    assert mj.verify(["linear"], dtypes="float32", sizes=2, programs=tmp_path).passed
    assert mj.verify(["linear"], dtypes="float32", sizes=2).passed  # traced in this process
    right = linear._matrix_vector

    def wrong(*args, **kwargs):
        A, x = right(*args, **kwargs)
        return 2 * A, x

    monkeypatch.setattr(linear, "_matrix_vector", wrong)
    fresh = mj.verify(["linear"], dtypes="float32", sizes=2)
    assert not fresh.passed
    report = mj.verify(["linear"], dtypes="float32", sizes=2, programs=tmp_path)
    assert [c.reference for c in report.failures()] == [c.reference for c in fresh.failures()]
    before = code_digest(_calls_helper)  # a function of the caller's own module
    assert code_digest(_calls_helper) == before
    monkeypatch.setitem(_calls_helper.__globals__, "_helper", lambda x: x - 1)
    assert code_digest(_calls_helper) != before


def test_a_method_of_an_operator_patched_in_a_running_process_is_not_served_kept_programs(
    tmp_path, monkeypatch
):
    """A method of the class a form builds (``Diagonal.to_dense``, which the checks of an
    elementwise rule's structured form call) replaced by a wrong one: the key follows the
    classes a record reaches by name into their methods' code (it did not follow classes,
    and a passing report was served)."""
    from matcalc_jax.operators import Diagonal

    assert mj.verify(["exp"], dtypes="float32", sizes=2, programs=tmp_path).passed
    right = Diagonal.to_dense
    monkeypatch.setattr(Diagonal, "to_dense", lambda self: 2 * right(self))
    fresh = mj.verify(["exp"], dtypes="float32", sizes=2)
    assert not fresh.passed
    report = mj.verify(["exp"], dtypes="float32", sizes=2, programs=tmp_path)
    assert [c.reference for c in report.failures()] == [c.reference for c in fresh.failures()]


def _helper(x):
    return x + 1


def _calls_helper(x):
    return _helper(x) * 2


_DIGESTS = """
import matcalc_jax as mj
from matcalc_jax.verification.programs import code_digest
def digests():
    return [code_digest(r.fn, r.make_example, r.closed_form, r.structured_form, r.hessian_form,
                        r.structured_hessian_form) for r in mj.rules() + mj.programs()]
before = digests()
mj.verify(["trace_quadratic", "det"], dtypes="float32", sizes=2)
print(before == digests(), hash("?") % 1000, before)
"""


def test_a_rule_s_code_digest_is_the_same_in_every_process_and_after_a_run():
    """The key of a rule's kept programs is the same whatever the process's string hashing,
    and after the rule has run (``marshal``'s bytes follow reference counts: a warm run
    once compiled ``trace_quadratic`` and ``det`` again, and kept them under new names)."""
    import subprocess
    import sys

    runs = []
    for seed in ("1", "2"):
        environment = {**os.environ, "PYTHONHASHSEED": seed}
        done = subprocess.run(
            [sys.executable, "-c", _DIGESTS], capture_output=True, text=True, timeout=600,
            env=environment, check=True,
        )  # fmt: skip
        same_after_a_run, string_hash, digests = done.stdout.split(" ", 2)
        assert same_after_a_run == "True", done.stdout
        runs.append((string_hash, digests))
    assert runs[0][0] != runs[1][0]  # the two processes hashed strings differently
    assert runs[0][1] == runs[1][1]


def test_a_program_compiled_with_other_options_is_not_loaded(tmp_path):
    _compiled(ProgramCache(tmp_path), ("p",))
    cache = ProgramCache(tmp_path)
    options = {"xla_backend_optimization_level": 0}
    compiled = cache.compiled(("p",), _function(1.0), _INPUTS, options)
    assert cache.loaded == 0  # compiled again, with the options asked for
    again = ProgramCache(tmp_path)
    again.compiled(("p",), lambda inputs: pytest.fail("compiled again"), _INPUTS, options)
    assert again.loaded == 1
    np.testing.assert_allclose(compiled(_INPUTS)["sum"], 6.5)


def test_the_source_digest_covers_every_module_and_table(monkeypatch, tmp_path):
    package = tmp_path / "package"
    (package / "sub").mkdir(parents=True)
    (package / "a.py").write_text("x = 1\n")
    (package / "sub" / "b.py").write_text("y = 2\n")
    monkeypatch.setattr(programs_module, "_PACKAGE", package)
    programs_module.source_digest.cache_clear()
    try:
        before = programs_module.source_digest()
        programs_module.source_digest.cache_clear()
        (package / "sub" / "b.py").write_text("y = 3\n")
        changed = programs_module.source_digest()
        assert changed != before
        programs_module.source_digest.cache_clear()
        (package / "sub" / "rules.toml").write_text("[r]\ntitle = 't'\n")
        assert programs_module.source_digest() != changed
    finally:
        programs_module.source_digest.cache_clear()


def test_a_read_only_directory_still_compiles(tmp_path):
    cache = ProgramCache(tmp_path)
    tmp_path.chmod(0o500)
    try:
        compiled = _compiled(cache, ("p",))
        np.testing.assert_allclose(compiled(_INPUTS)["sum"], 6.5)
    finally:
        tmp_path.chmod(0o700)


def test_a_kept_program_never_comes_from_jax_s_own_cache(tmp_path):
    """JAX's persistent cache on, holding the very program: what is kept is XLA's own
    compile (a copy of JAX's cached executable would lack its machine code and fail), and
    the program is not written to JAX's cache."""
    jax_cache = tmp_path / "xla"
    previous = {
        name: getattr(jax.config, name)
        for name in ("jax_compilation_cache_dir", "jax_persistent_cache_min_compile_time_secs")
    }
    jax.config.update("jax_compilation_cache_dir", str(jax_cache))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
    # JAX opens its cache once per process: a test before this one, in this worker, may
    # have opened it elsewhere (or found it off).
    compilation_cache.reset_cache()
    try:
        jax.jit(_function(1.0)).lower(_INPUTS).compile()  # JAX's cache now holds it
        written = sorted(p.name for p in jax_cache.iterdir())
        first = ProgramCache(tmp_path / "p")
        _compiled(first, ("p",))
        assert sorted(p.name for p in jax_cache.iterdir()) == written
        second = ProgramCache(tmp_path / "p")
        compiled = _compiled(second, ("p",))
        assert second.loaded == 1
        expected = np.linalg.inv(np.asarray(_INPUTS["a"]))
        np.testing.assert_allclose(compiled(_INPUTS)["inverse"], expected, rtol=1e-6)
    finally:
        for name, value in previous.items():
            jax.config.update(name, value)
        compilation_cache.reset_cache()


def test_verify_loads_its_programs_and_repairs_damaged_ones(tmp_path):
    """A fresh process loads the programs (LAPACK's among them) the last one compiled; two
    files swapped and one truncated between runs are dropped, said in one note, and
    compiled again; the run after that drops nothing."""
    directory = tmp_path / "cache"
    argv = ["--rules", "inverse,linear,softmax", "--dtype", "float32", "--sizes", "2"]
    run_verify(argv, directory)
    kept = directory / "programs"
    files = sorted(p for p in kept.iterdir() if p.stat().st_size > 2000)  # programs
    assert len(files) >= 3
    names = sorted(p.name for p in kept.iterdir())
    assert "dropped" not in run_verify(argv, directory)  # a warm run: everything loaded
    assert sorted(p.name for p in kept.iterdir()) == names
    swap_two_and_truncate_one(files)
    err = run_verify(argv, directory)
    assert "dropped 3 damaged compiled programs" in err
    assert "warning" not in err.lower()
    assert "dropped" not in run_verify(argv, directory)


def test_the_key_leaves_out_where_jax_keeps_its_compiles_and_nothing_else(tmp_path, monkeypatch):
    """The same cache directory spelled relative or absolute gave another key (a warm run
    compiled everything again); an option that can change a program still changes it."""
    base = context_key()
    before = jax.config.jax_compilation_cache_dir
    try:
        jax.config.update("jax_compilation_cache_dir", str(tmp_path / "xla"))
        assert context_key() == base
        jax.config.update("jax_compilation_cache_dir", "relative/xla")
        assert context_key() == base
    finally:
        jax.config.update("jax_compilation_cache_dir", before)
    with jax.numpy_rank_promotion("raise"):
        assert context_key() != base
