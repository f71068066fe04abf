"""The compilation cache's integrity: entries changed since the last run are dropped
before JAX reads them, and the run passes without warnings."""

import json
import os
import subprocess
import sys

from matcalc_jax.cli import cache

from .helpers import run_verify, swap_two_and_truncate_one


def _entries(tmp_path, *contents):
    for k, content in enumerate(contents):
        (tmp_path / f"jit_f-{k}-cache").write_bytes(content)


def test_repair_drops_changed_swapped_truncated_and_unknown_entries(tmp_path):
    _entries(tmp_path, b"first program", b"second program", b"third program")
    cache.record(tmp_path)
    assert cache.repair(tmp_path) == 0  # nothing changed
    first, second = tmp_path / "jit_f-0-cache", tmp_path / "jit_f-1-cache"
    first.write_bytes(b"second program")  # two valid entries swapped
    second.write_bytes(b"first program")
    (tmp_path / "jit_f-2-cache").write_bytes(b"thi")  # truncated
    (tmp_path / "jit_g-9-cache").write_bytes(b"garbage")  # unknown
    assert cache.repair(tmp_path) == 4
    assert sorted(p.name for p in tmp_path.iterdir()) == [cache.MANIFEST]


def test_a_missing_or_unreadable_manifest_vouches_for_nothing(tmp_path):
    _entries(tmp_path, b"a program")
    assert cache.repair(tmp_path) == 1
    _entries(tmp_path, b"a program")
    (tmp_path / cache.MANIFEST).write_text("{not json")
    assert cache.repair(tmp_path) == 1


def test_the_manifest_is_written_whole(tmp_path):
    _entries(tmp_path, b"x", b"y")
    cache.record(tmp_path)
    recorded = json.loads((tmp_path / cache.MANIFEST).read_text())
    assert sorted(recorded) == ["jit_f-0-cache", "jit_f-1-cache"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary left


def test_verify_repairs_a_damaged_cache_and_passes_quietly(tmp_path):
    """Two entries swapped and one truncated between runs: the next run drops them, says
    so in one note, passes, and the run after it finds nothing to drop."""
    directory, argv = (
        tmp_path / "cache",
        ["--rules", "linear", "--dtype", "float32", "--sizes", "2"],
    )
    run_verify(argv, directory)
    files = sorted(p for p in (directory / "xla").iterdir() if p.name.endswith("-cache"))
    assert len(files) >= 3
    swap_two_and_truncate_one(files)
    err = run_verify(argv, directory)
    assert "dropped 3 compilation cache entries" in err
    assert "warning" not in err.lower()
    assert "dropped" not in run_verify(argv, directory)


def test_files_not_named_as_jax_names_its_entries_are_left_alone(tmp_path):
    """A folder given as the cache may hold the user's files: only JAX's entries (and
    their access times) are ever dropped."""
    _entries(tmp_path, b"a program")
    (tmp_path / "jit_f-0-atime").write_bytes(b"123")
    (tmp_path / "notes.txt").write_text("mine")
    assert cache.repair(tmp_path) == 2  # no manifest: neither entry is vouched for
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


def test_a_folder_in_the_manifest_s_place_is_replaced_by_the_manifest(tmp_path):
    """Otherwise no manifest could ever be written, and every run would drop every entry."""
    (tmp_path / cache.MANIFEST).mkdir()
    _entries(tmp_path, b"a program")
    cache.record(tmp_path)
    assert (tmp_path / cache.MANIFEST).is_file()
    assert cache.repair(tmp_path) == 0


def test_the_default_cache_is_matcalc_jax_cache_then_xdg_cache_home_then_home(
    monkeypatch, tmp_path
):
    """The order docs/verification.md gives; and this suite's processes run with their own
    (tests/conftest.py), never the user's ~/.cache/matcalc-jax, which a test running the
    command without ``--cache-dir`` once filled and repaired."""
    from pathlib import Path

    from matcalc_jax.cli.main import cache_directory

    suite_cache = Path(__file__).resolve().parents[1] / "build" / "test-cache" / "matcalc-jax"
    assert cache_directory() == suite_cache
    monkeypatch.setenv("MATCALC_JAX_CACHE", str(tmp_path / "own"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_directory() == tmp_path / "own"
    monkeypatch.delenv("MATCALC_JAX_CACHE")
    assert cache_directory() == tmp_path / "xdg" / "matcalc-jax"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_directory() == tmp_path / "home" / ".cache" / "matcalc-jax"


def test_a_cache_directory_the_user_named_that_cannot_be_made_is_a_usage_error(
    monkeypatch, tmp_path, capsys
):
    """``--cache-dir FILE/sub`` and ``MATCALC_JAX_CACHE=FILE`` ran the whole verification
    without a cache, with two notes, where ``--cache-dir FILE`` exited 2: a place the user
    named is refused before the run, in one line naming it."""
    from matcalc_jax.cli.main import main

    a_file = tmp_path / "a-file"
    a_file.write_text("")
    argv = ["verify", "--rules", "exp", "--dtype", "float32", "--sizes", "2"]
    assert main([*argv, "--cache-dir", f"{a_file}/sub"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        f"matcalc-jax: error: verify: --cache-dir {a_file}/sub: cannot make the directory "
        "(Not a directory)"
    )
    monkeypatch.setenv("MATCALC_JAX_CACHE", str(a_file))
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"matcalc-jax: error: verify: MATCALC_JAX_CACHE={a_file} is not a directory"


def test_a_default_cache_directory_that_cannot_be_made_is_one_note(monkeypatch, tmp_path, capsys):
    """Where the default place cannot be made (a read-only home, ``$XDG_CACHE_HOME`` a
    file) the run goes on without a cache, said in one note, not one per part of it."""
    from matcalc_jax.cli.main import main

    a_file = tmp_path / "a-file"
    a_file.write_text("")
    monkeypatch.delenv("MATCALC_JAX_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(a_file))
    assert main(["verify", "--rules", "exp", "--dtype", "float32", "--sizes", "2"]) == 0
    notes = [line for line in capsys.readouterr().err.splitlines() if "note" in line]
    assert notes == [
        f"matcalc-jax: note: no cache: {a_file}/matcalc-jax: cannot make the directory "
        "(Not a directory); nothing compiled is kept"
    ]


def test_one_cache_directory_spelled_two_ways_is_one_cache(tmp_path):
    """JAX's compile options hold its cache's path, so ``--cache-dir rel`` and the same
    folder spelled ``/abs/./rel/../rel/`` kept two sets of JAX's entries (7 of 23 compiled
    again); the directory is resolved before JAX is given it."""
    argv = ["--rules", "exp", "--dtype", "float32", "--sizes", "2"]
    run_verify(argv, "rel", cwd=tmp_path)
    entries = set(os.listdir(tmp_path / "rel" / "xla"))
    run_verify(argv, f"{tmp_path}/./rel/../rel/")
    assert len(entries) > 1  # the run's compiles and their manifest
    assert set(os.listdir(tmp_path / "rel" / "xla")) == entries


def test_an_earlier_run_s_size_estimates_are_read_and_kept_by_rule(tmp_path):
    """``verify`` keeps ``case_bytes``'s estimates beside its caches (a warm run traced 159
    rules' shapes again, its first 1.3 s). Each rule keeps its latest code's alone; a
    damaged file is read as none."""
    read = {"exp|old|2|jax 1": 10, "log|d1|2|jax 1": 20}
    known = {**read, "exp|new|2|jax 1": 11, "exp|new|4|jax 1": 12}
    cache.keep_entries(tmp_path, known, read)
    kept = cache.read_entries(tmp_path)
    assert kept == {"log|d1|2|jax 1": 20, "exp|new|2|jax 1": 11, "exp|new|4|jax 1": 12}
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary left
    (tmp_path / cache.ENTRIES).write_text('{"exp|new|2|jax 1": -3, "a": true, "b": 5')
    assert cache.read_entries(tmp_path) == {}
    (tmp_path / cache.ENTRIES).write_text('{"exp|new|2|jax 1": -3, "a": true, "b": 5}')
    assert cache.read_entries(tmp_path) == {"b": 5}
    assert cache.read_entries(tmp_path / "absent") == {}


def test_a_kept_size_estimate_is_the_one_verify_refuses_by(tmp_path):
    """The estimate in the cache directory is the one used, for the rule's present code
    only: an estimate of 2**40 entries for ``exp`` at size 2 refuses that request (exit 2),
    the same estimate under another digest is not read, and a damaged file is none."""
    import matcalc_jax as mj
    from matcalc_jax.verification import harness

    key = harness.entries_key(mj.rule("exp"), 2)
    argv = ["--rules", "exp", "--dtype", "float32", "--sizes", "2"]
    directory = tmp_path / "cache"
    directory.mkdir()
    stale = key.replace(key.split("|")[1], "0" * 64)
    (directory / cache.ENTRIES).write_text(json.dumps({stale: 2**40}))
    run_verify(argv, directory)
    kept = cache.read_entries(directory)
    assert kept[key] < 100 and stale not in kept  # estimated from the shapes, and kept
    (directory / cache.ENTRIES).write_text(json.dumps({key: 2**40}))
    env = {k: v for k, v in os.environ.items() if k != "JAX_COMPILATION_CACHE_DIR"}
    done = subprocess.run(
        [sys.executable, "-m", "matcalc_jax", "verify", *argv, "--cache-dir", str(directory)],
        capture_output=True, text=True, timeout=300, env=env,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr[-2000:]
    assert "rule 'exp' at size 2 (float32) needs about" in done.stderr
    (directory / cache.ENTRIES).write_text("{damaged")
    run_verify(argv, directory)
    assert cache.read_entries(directory)[key] == kept[key]
