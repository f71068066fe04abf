"""The ``matcalc-jax`` command: ``verify``, ``bench``, ``list`` and ``docs``."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import linecache
import math
import os
import signal
import sys
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, NoReturn, TextIO

from matcalc_jax.cli.console import WIDTH, Interrupts, Progress, clip, seconds
from matcalc_jax.verification.processes import WorkerDiedError

PLATFORMS = ("cpu", "gpu", "default")


def _split(values: Sequence[str] | None) -> list[str] | None:
    """Accept both ``--rules a b`` and ``--rules a,b``."""
    if values is None:
        return None
    return [item for value in values for item in value.split(",") if item]


def _dtypes(args: argparse.Namespace) -> list[str] | None:
    """``--dtype``'s names (None when not given); given but naming none (``--dtype ""``) is
    a usage error, not the default."""
    names = _split(args.dtype)
    if names is not None and not names:
        raise ValueError(f"{args.command}: --dtype {' '.join(args.dtype)!r} names no dtype")
    return names


def _max_bytes(args: argparse.Namespace) -> int:
    """``--max-gib`` in bytes; under one byte is a usage error naming the option."""
    limit = int(args.max_gib * 2**30)
    if limit < 1:
        raise ValueError(f"{args.command}: --max-gib {args.max_gib} is under one byte")
    return limit


class EnvironmentUnavailableError(Exception):
    """This machine cannot do what was asked (no such platform, no float64): exit code 3."""


class StdoutUnwritableError(Exception):
    """Standard output took no more (a full disk, ``> /dev/full``): one line, exit code 2,
    as for a ``--json`` file that cannot be written."""


class _GuardedStdout:
    """Standard output whose failed writes are ``StdoutUnwritableError`` (a full disk,
    ``> /dev/full``), told apart from every other ``OSError`` of a run (a cache, a file);
    a closed pipe stays a ``BrokenPipeError``: the reader went away, which is no error."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream

    def _guarded(self, action: Callable[[], Any]) -> Any:
        try:
            return action()
        except BrokenPipeError:
            raise
        except OSError as error:
            raise StdoutUnwritableError(
                f"cannot write to standard output ({error.strerror or error})"
            ) from None

    def write(self, text: str) -> int:
        return self._guarded(lambda: self.stream.write(text))

    def flush(self) -> None:
        self._guarded(self.stream.flush)

    def __getattr__(self, name: str) -> Any:  # fileno, isatty, encoding, ...
        return getattr(self.stream, name)


@contextlib.contextmanager
def _stdout_guarded() -> Iterator[None]:
    """Run with ``sys.stdout`` guarded, flushed at the end (what a command leaves in the
    buffer fails there, not at the interpreter's exit); the caller's stream given back. A
    closed one (``>&-``) is refused before any work: every command writes there."""
    stream = sys.stdout
    if stream is None:
        raise StdoutUnwritableError("cannot write to standard output (it is closed)")
    sys.stdout = _GuardedStdout(stream)
    try:
        yield
        sys.stdout.flush()
    finally:
        sys.stdout = stream


@contextlib.contextmanager
def _stderr_open() -> Iterator[None]:
    """A closed standard error (``2>&-``, which Python makes ``None``) read as the null
    device while the command runs: its notes, progress and errors are dropped, neither a
    crash nor printed to standard output (where ``print(file=None)`` goes)."""
    if sys.stderr is not None:
        yield
        return
    with open(os.devnull, "w", encoding="utf-8") as null:
        sys.stderr = null
        try:
            yield
        finally:
            sys.stderr = None


class _Deprecated(argparse.Action):
    """An old spelling of an option: it still works, with a note on stderr."""

    def __init__(self, *args, instead: str, **kwargs) -> None:
        self.instead = instead
        super().__init__(*args, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        setattr(namespace, self.dest, values)
        print(
            f"matcalc-jax: note: {option_string} is deprecated; use {self.instead}",
            file=sys.stderr,
        )


def _compile_for_speed() -> None:
    """Compile without LLVM optimization in this process: ``verify`` run as a command
    (``main()`` without arguments), before JAX has started its backends; never when a
    program calls ``main([...])`` in its own process.

    ``verify``'s programs, its eager closed forms and its draws each run once on a few hundred
    numbers: compilation is their whole cost, and optimizing the code would only slow it.
    """
    from jax._src import xla_bridge

    flags = os.environ.get("XLA_FLAGS", "")
    if "xla_backend_optimization_level" in flags or xla_bridge.backends_are_initialized():
        return
    os.environ["XLA_FLAGS"] = f"{flags} --xla_backend_optimization_level=0".strip()


def _select_platform(platform: str) -> None:
    """Point JAX at ``platform``; ``EnvironmentUnavailableError`` when it has none."""
    import jax

    if platform == "cpu":
        jax.config.update("jax_platforms", "cpu")
    elif platform == "gpu":
        jax.config.update("jax_platforms", "cuda")
    try:
        jax.devices()
    except Exception as error:  # RuntimeError, or a bare AssertionError from jax's backends
        text = str(error).strip()
        reason = f" ({text.splitlines()[0]})" if text else ""
        raise EnvironmentUnavailableError(
            f"--platform {platform}: JAX finds no {platform} device on this machine{reason}"
        ) from None


def _require_x64() -> None:
    """``EnvironmentUnavailableError`` unless float64 arrays work on the default device."""
    import jax
    import jax.numpy as jnp

    from matcalc_jax import runtime

    with runtime.x64(True):
        try:
            ok = jnp.ones(2, jnp.float64).sum().dtype == jnp.float64
        except (TypeError, ValueError, NotImplementedError) as error:  # no 64-bit support?
            try:  # the same program in float32: if it fails too, float64 is not the cause
                jnp.ones(2, jnp.float32).sum().block_until_ready()
            except Exception:
                raise _unexpected(error) from error
            raise EnvironmentUnavailableError(
                f"float64 is not available on {jax.devices()[0].platform}: {error}"
            ) from None
        except Exception as error:  # anything else is not about float64: say so
            raise _unexpected(error) from error
    if not ok:
        raise EnvironmentUnavailableError(
            f"float64 is not available on {jax.devices()[0].platform} (JAX gives float32)"
        )


def _unexpected(error: Exception) -> RuntimeError:
    """The float64 check's failure that is not about float64 (a float32 program fails
    too: a damaged JAX cache or installation), with what to try."""
    return RuntimeError(
        f"the float64 check failed unexpectedly ({type(error).__name__}: {error}); a "
        "float32 program fails too, so float64 is not the cause: try --no-cache"
    )


def cache_directory() -> Path:
    """Where ``verify`` keeps what it compiled: ``$MATCALC_JAX_CACHE``, else
    ``$XDG_CACHE_HOME/matcalc-jax``, else ``~/.cache/matcalc-jax``. Its ``programs/`` holds
    the case programs (``matcalc_jax.verification.programs``), its ``xla/`` JAX's
    persistent compilation cache (the eager operations and input draws)."""
    if os.environ.get("MATCALC_JAX_CACHE"):
        return Path(os.environ["MATCALC_JAX_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "matcalc-jax"


def _enable_compilation_cache(directory: Path) -> str | None:
    """Turn on JAX's persistent compilation cache in ``directory`` for every program; a
    directory set by the user's own ``JAX_COMPILATION_CACHE_DIR`` wins. Returns the
    directory, or None if it can't be made."""
    import jax

    from matcalc_jax.cli import cache

    own = not os.environ.get("JAX_COMPILATION_CACHE_DIR")
    path = os.environ.get("JAX_COMPILATION_CACHE_DIR") or str(directory)
    try:
        Path(path).mkdir(parents=True, exist_ok=True)
    except OSError as error:
        print(f"matcalc-jax: note: no compilation cache ({error})", file=sys.stderr)
        return None
    if own:  # the user's own JAX cache is theirs to keep: no entry of it is deleted
        removed = cache.repair(path)
        if removed:
            print(
                f"matcalc-jax: note: dropped {removed} compilation cache entries no finished "
                "run vouched for (damaged, or another run's in progress); compiled again",
                file=sys.stderr,
            )
    jax.config.update("jax_compilation_cache_dir", path)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    _reopen_jax_cache()  # JAX opens its cache once: a caller's process had opened its own
    return path


def _reopen_jax_cache() -> None:
    """Make JAX open its persistent compilation cache again, from its options, at the next
    compile."""
    from jax.experimental.compilation_cache import compilation_cache

    compilation_cache.reset_cache()


#: The JAX options a command sets for its own run (the platform; where and when JAX keeps
#: what it compiled), given back when ``main`` returns: a caller's process keeps its own.
_JAX_OPTIONS = (
    "jax_platforms",
    "jax_compilation_cache_dir",
    "jax_persistent_cache_min_compile_time_secs",
    "jax_persistent_cache_min_entry_size_bytes",
)


@contextlib.contextmanager
def _jax_options_given_back() -> Iterator[None]:
    """Restore ``_JAX_OPTIONS`` on the way out (``main`` called from Python, as a notebook
    or a test calls it), and JAX's cache to the caller's directory if the run moved it."""
    import jax

    before = {name: getattr(jax.config, name) for name in _JAX_OPTIONS}
    try:
        yield
    finally:
        changed = {name for name, value in before.items() if getattr(jax.config, name) != value}
        for name in changed:
            jax.config.update(name, before[name])
        if "jax_compilation_cache_dir" in changed:
            _reopen_jax_cache()


def _default_processes() -> int:
    """Worker processes for ``verify``: one per core this process may use, at most 4."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    return max(1, min(cores, 4))


def _program_cache(directory: Path):
    """The cache of compiled programs in ``directory``; ``None``, with a note, when it
    cannot be made."""
    from matcalc_jax.verification.programs import ProgramCache

    try:
        return ProgramCache(directory)
    except OSError as error:
        print(f"matcalc-jax: note: no cache of compiled programs ({error})", file=sys.stderr)
        return None


def print_report(report, *, wide: bool = False, out=None) -> None:
    """Print the verify report (``verification/report.py`` renders it), each line fitted to
    100 columns unless ``wide``."""
    from matcalc_jax.verification.report import report_lines

    width = None if wide else WIDTH
    for line in report_lines(report, wide=wide, width=WIDTH):
        print(clip(line, width), file=out or sys.stdout)


def _hang(label: str, waited: float) -> None:
    """The watchdog's end of a stuck run: say where, then leave with exit code 1."""
    print(
        f"\nmatcalc-jax: error: no progress for {waited:.0f} s at {label}; stopping. The "
        "program may be deadlocked; rerun with --timeout to wait longer.",
        file=sys.stderr,
        flush=True,
    )
    os._exit(1)


def _check_output_path(command: str, path: str | None, option: str = "--json") -> None:
    """Refuse an output path that cannot be written, before any work (``-`` is stdout)."""
    if path is None or path == "-":
        return
    if not path:
        raise ValueError(f"{command}: {option} is empty; expected a file path, or - for stdout")
    if path.endswith(("/", os.sep)):
        raise ValueError(f"{command}: {option} {path} ends with a separator; expected a file path")
    target = Path(path)
    if target.is_symlink() and not target.exists():
        raise ValueError(f"{command}: {option} {path} is a link to a missing file")
    if target.is_dir():
        raise ValueError(f"{command}: {option} {path} is a directory; expected a file path")
    folder = target.parent if str(target.parent) else Path(".")
    if not folder.is_dir():
        raise ValueError(f"{command}: {option} {path}: the folder {folder} does not exist")
    if not os.access(folder, os.W_OK) or (target.exists() and not os.access(target, os.W_OK)):
        raise ValueError(f"{command}: {option} {path} cannot be written (permission denied)")


#: The options that name a file a command writes, checked before any work; ``-`` is stdout
#: for each but ``--plot`` (a PNG).
OUTPUT_OPTIONS = {"json": "--json", "csv": "--csv", "markdown": "--markdown", "out": "--out",
                  "plot": "--plot"}  # fmt: skip


def _check_output_paths(args: argparse.Namespace) -> None:
    """``_check_output_path`` for each output option the command was given, at most one
    of them ``-``; ``--plots`` a folder it can make; ``docs --check`` reads its ``--out``."""
    command = args.command
    if command == "docs" and args.check:
        _check_input_path(command, args.out, "--out")
        return
    for attribute in OUTPUT_OPTIONS:
        if _is_standard_output(getattr(args, attribute, None)):
            setattr(args, attribute, "-")  # /dev/stdout, or the file stdout goes to
    given = {option: getattr(args, attribute, None) for attribute, option in OUTPUT_OPTIONS.items()}
    to_stdout = [option for option, path in given.items() if path == "-"]
    if "--plot" in to_stdout:
        raise ValueError(f"{command}: --plot is a PNG, not for stdout; expected a file path")
    if len(to_stdout) > 1:
        raise ValueError(f"{command}: {' and '.join(to_stdout)} are both -; one output at most "
                         "goes to stdout")  # fmt: skip
    for option, path in given.items():
        _check_output_path(command, path, option)
    if getattr(args, "plots", None) is not None:
        _check_output_folder(command, args.plots, "--plots")


def _is_standard_output(path: str | None) -> bool:
    """Whether ``path`` is the file standard output writes (``/dev/stdout``, or the file
    it was redirected to): written as ``-``, since writing it as a file truncated the
    table before it and put "wrote PATH" inside it. The null device is left a path."""
    if not path or path == "-":
        return False
    try:
        target, out = os.stat(path), os.fstat(sys.stdout.fileno())
        null = os.stat(os.devnull)
    except (OSError, ValueError, AttributeError, io.UnsupportedOperation):
        return False  # a new file, or a stream without a descriptor (captured)
    same = (target.st_dev, target.st_ino) == (out.st_dev, out.st_ino)
    return same and (target.st_dev, target.st_ino) != (null.st_dev, null.st_ino)


def _check_output_folder(command: str, path: str, option: str) -> None:
    """Refuse a folder that cannot be made or written into, before any work."""
    if not path or path == "-":
        raise ValueError(f"{command}: {option} is {path!r}; expected a folder path")
    target = Path(path)
    if target.exists() and not target.is_dir():
        raise ValueError(f"{command}: {option} {path} is a file; expected a folder path")
    existing = target
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir() or not os.access(existing, os.W_OK):
        raise ValueError(f"{command}: {option} {path} cannot be written (in {existing})")


def _check_input_path(command: str, path: str, option: str) -> None:
    """Refuse a path to read that is not a file (``docs --check``); a missing one is
    stale, not an error."""
    if not path or path == "-":
        raise ValueError(f"{command}: --check reads {option}; got {path!r}, expected a file path")
    if Path(path).is_dir():
        raise ValueError(f"{command}: {option} {path} is a directory; expected a file path")


def _table_stream(args: argparse.Namespace) -> TextIO:
    """Where the command's table goes: stdout, or stderr when an output option is ``-``
    (stdout then carries that file alone)."""
    taken = any(getattr(args, attribute, None) == "-" for attribute in OUTPUT_OPTIONS)
    return sys.stderr if taken else sys.stdout


def _write(args: argparse.Namespace, option: str, path: str, text: str, note: Any = None) -> None:
    """Write an output: ``-`` is stdout, a file is said on ``note`` (stdout by default:
    "wrote PATH"). A failure after the run (a full disk, a folder removed meanwhile) is
    one line and exit 2, as a path refused before it."""
    if path == "-":
        sys.stdout.write(text if text.endswith("\n") else text + "\n")
        return
    try:
        Path(path).write_text(text, encoding="utf-8")
    except OSError as error:
        reason = error.strerror or str(error)
        raise ValueError(f"{args.command}: {option} {path}: {reason}") from None
    print(f"wrote {path}", file=note or sys.stdout)


def _verify(args: argparse.Namespace) -> int:
    from matcalc_jax.cli import cache
    from matcalc_jax.verification import harness
    from matcalc_jax.verification.harness import DTYPES, checked_dtypes, checked_request

    dtypes = list(checked_dtypes(_dtypes(args) or DTYPES))
    if args.cache_dir == "":
        raise ValueError("verify: --cache-dir is empty; expected a directory")
    if args.no_cache and args.cache_dir:
        raise ValueError("verify: --no-cache and --cache-dir contradict each other; pass one")
    if args.rules is not None and not _split(args.rules):
        raise ValueError("verify: --rules names no rule; expected ids (matcalc-jax list)")
    # the whole request (rule ids, sizes, the memory limit) is checked before the cache is
    # opened: a usage error neither creates nor repairs a cache (an earlier run's size
    # estimates are read from it, if it is there)
    read = {} if args.no_cache else cache.read_entries(_cache_directory_named(args))
    harness.KNOWN_ENTRIES.update(read)
    checked_request(_split(args.rules), dtypes, args.sizes, args.seed, _max_bytes(args))
    directory = None if args.no_cache else _made_cache_directory(args)
    if directory is None:
        return _run_verify(args, dtypes, None)
    cache.keep_entries(directory, harness.KNOWN_ENTRIES, read)
    jax_cache = _enable_compilation_cache(directory / "xla")
    try:
        with _cache_write_warnings_left_out():
            return _run_verify(args, dtypes, _program_cache(directory / "programs"))
    finally:
        if jax_cache is not None and not os.environ.get("JAX_COMPILATION_CACHE_DIR"):
            cache.record(jax_cache)
        if jax_cache is not None:
            _say_if_unwritable(jax_cache)


def _printable(path: str) -> str:
    """``path`` as any stream can print it: bytes the locale could not decode (surrogates)
    written as escapes."""
    return path.encode("utf-8", "backslashreplace").decode("utf-8")


def _cache_directory_named(args: argparse.Namespace) -> Path:
    """``verify``'s cache directory as given (``--cache-dir``, else ``cache_directory()``),
    neither made nor resolved."""
    return Path(args.cache_dir) if args.cache_dir else cache_directory()


def _made_cache_directory(args: argparse.Namespace) -> Path | None:
    """``verify``'s cache directory, made. One the user named (``--cache-dir``,
    ``$MATCALC_JAX_CACHE``) that cannot be made is a usage error naming it; the default one
    (a read-only home) is a note, and the run keeps nothing (None)."""
    if args.cache_dir:
        directory, named = Path(args.cache_dir), f"--cache-dir {_printable(args.cache_dir)}"
    elif os.environ.get("MATCALC_JAX_CACHE"):
        directory = cache_directory()
        named = f"MATCALC_JAX_CACHE={_printable(os.environ['MATCALC_JAX_CACHE'])}"
    else:
        directory, named = cache_directory(), None
    if named and directory.exists() and not directory.is_dir():
        raise ValueError(f"verify: {named} is not a directory")
    try:
        str(directory).encode("utf-8")  # JAX passes it on to XLA as UTF-8
        directory.mkdir(parents=True, exist_ok=True)
        # one directory however it is spelled: JAX's compile options (and so its cache's
        # keys) hold the path
        directory = directory.resolve()
    except (OSError, UnicodeEncodeError) as error:
        problem = (
            "is not UTF-8 as this locale decodes it (JAX's compilation cache takes UTF-8 paths)"
            if isinstance(error, UnicodeEncodeError)
            else f"cannot make the directory ({error.strerror or error})"
        )
        if named:
            raise ValueError(f"verify: {named}: {problem}") from None
        print(
            f"matcalc-jax: note: no cache: {_printable(str(directory))}: {problem}; nothing "
            "compiled is kept",
            file=sys.stderr,
        )
        return None
    return directory


def _say_if_unwritable(jax_cache: str) -> None:
    """One note when the compilation cache cannot be written (JAX's warning per program
    is left out by ``_cache_write_warnings_left_out``)."""
    if not os.access(jax_cache, os.W_OK | os.X_OK):
        print(
            f"matcalc-jax: note: the compilation cache {jax_cache} could not be written "
            "(read-only, or removed during the run); what was compiled is not kept",
            file=sys.stderr,
        )


#: The start of JAX's warning for each program it could not write to its cache.
_CACHE_WRITE_WARNING = "Error writing persistent compilation cache entry"


@contextlib.contextmanager
def _cache_write_warnings_left_out() -> Iterator[None]:
    """JAX's warning for each program it could not write to the compilation cache (a
    read-only or removed cache: one per program, hundreds of lines) left out, here and in
    the worker processes (``PYTHONWARNINGS``); ``_verify`` says it once, at the end."""
    previous = os.environ.get("PYTHONWARNINGS")
    ignore = f"ignore:{_CACHE_WRITE_WARNING}"
    os.environ["PYTHONWARNINGS"] = f"{previous},{ignore}" if previous else ignore
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=_CACHE_WRITE_WARNING)
            yield
    finally:
        if previous is None:
            os.environ.pop("PYTHONWARNINGS", None)
        else:
            os.environ["PYTHONWARNINGS"] = previous


def _run_verify(args: argparse.Namespace, dtypes: list[str], programs=None) -> int:
    from matcalc_jax.cli.watchdog import Watchdog
    from matcalc_jax.verification.harness import reference_dtype, verify

    if any(reference_dtype(d) == "float64" for d in dtypes):
        _require_x64()
    progress = Progress()

    def show(event) -> None:
        interrupts.check()  # Ctrl-C, even if its KeyboardInterrupt was lost on the way
        label = f"{event.rule} {event.dtype} size {event.size}: {event.stage}"
        if event.kind == "stage":
            watchdog.beat(label)
            progress.bar(event.cases_done, event.cases_total, label)
            return
        failed = sum(not c.passed for c in event.checks)
        outcome = "pass" if not failed else f"FAIL ({failed} failed)"
        progress.line(
            f"[{event.rule_index + 1}/{event.rule_count}] {event.rule}: "
            f"{len(event.checks)} checks, {outcome}, {seconds(event.elapsed_s)}"
        )

    interrupts = args.interrupts
    with Watchdog(args.timeout, _hang) as watchdog:
        report = verify(
            _split(args.rules), dtypes=dtypes, sizes=args.sizes, seed=args.seed, progress=show,
            max_bytes=_max_bytes(args), programs=programs,
            processes=args.processes or _default_processes(),
        )  # fmt: skip
    progress.finish()
    if programs is not None and programs.dropped:
        print(
            f"matcalc-jax: note: dropped {programs.dropped} damaged compiled programs; "
            "they were compiled again",
            file=sys.stderr,
        )
    args.verdict = 0 if report.passed else 1  # kept if the reader of stdout goes away
    to_stdout = args.json == "-"
    print_report(report, wide=args.wide, out=sys.stderr if to_stdout else sys.stdout)
    print(f"verify took {seconds(progress.elapsed())}", file=sys.stderr)
    if args.json:
        _write(args, "--json", args.json, report.to_json() + "\n")
    return args.verdict


def _bench(args: argparse.Namespace) -> int:
    from matcalc_jax.benchmark import output
    from matcalc_jax.benchmark.rules import bench

    progress = Progress()

    def show(done: int, total: int, label: str) -> None:
        progress.bar(done, total, label)
        if done:
            progress.line(f"[{done}/{total}] {previous[0]}")
        previous[0] = label

    previous = [""]
    report = bench(
        _split(args.rules),
        dtypes=_dtypes(args) or ("float32",),
        sizes=args.sizes,
        quick=args.quick,
        rounds=args.rounds,
        progress=show,
        max_bytes=_max_bytes(args),
    )
    progress.finish()
    out = _table_stream(args)
    width = None if args.wide else WIDTH
    env = report.environment
    lines = [
        f"device: {env['platform']} ({env['device_kind']}), jax {env['jax']}, "
        f"{env['cpu_count']} cpus; medians of {report.settings['rounds']} rounds",
    ]
    if args.quick:
        lines.append(
            "quick mode: proves that the benchmark runs; its few short rounds do not say "
            "which method is faster"
        )
    lines += output.format_table(report, wide=args.wide).splitlines()
    lines += [
        "speed-up: best of jacfwd/jacrev over closed form; clear: closed form's upper quartile",
        "below autodiff's lower, and both well above the timer's resolution and the dispatch",
        "cost (else 'noise'); x floor: closed form over the time to write the Jacobian",
    ]
    if any(case.hessian for case in report.cases):
        lines += [
            "Hessians: speed-up is jax.hessian over the closed-form Hessian; H v is the dense",
            "closed-form Hessian formed and applied to a vector; hvp is the structured",
            "Hessian's mv; ratios above 1 mean hvp is faster",
        ]
    for line in lines:
        print(clip(line, width), file=out)
    print(f"bench took {seconds(progress.elapsed())}", file=sys.stderr)
    if args.json:
        _write(args, "--json", args.json, output.to_json_text(report) + "\n", out)
    if args.csv:
        _write(args, "--csv", args.csv, output.format_csv(report), out)
    if args.markdown:
        _write(args, "--markdown", args.markdown, output.format_markdown(report), out)
    if args.plots:
        for path in output.write_plots(report, args.plots):
            print(f"wrote {path}", file=out)
    return 0


def _bench_models(args: argparse.Namespace) -> int:
    import json

    from matcalc_jax import runtime
    from matcalc_jax.benchmark.models import bench_models, format_models
    from matcalc_jax.runtime import environment
    from matcalc_jax.verification.harness import checked_dtypes

    (dtype,) = checked_dtypes([args.dtype], "bench-models")
    if dtype == "float64":
        _require_x64()
    with runtime.x64(dtype == "float64"):  # float64 arrays are float32 without it
        cases = bench_models(dtype=dtype, quick=args.quick, rounds=args.rounds)
        env = environment()
    out = _table_stream(args)
    print(f"device: {env['platform']} ({env['device_kind']}), jax {env['jax']}", file=out)
    print(format_models(cases), file=out)
    if args.json:
        data = {
            "schema": "matcalc-jax/bench-models/1",
            "environment": env,
            "cases": [
                {
                    "case": c.rule,
                    "dtype": c.dtype,
                    "width": c.size,
                    "batch": c.jacobian_shape[0],
                    "timings": {m: dataclasses.asdict(t) for m, t in c.timings.items()},
                }
                for c in cases
            ],
        }
        _write(args, "--json", args.json, json.dumps(data, indent=1) + "\n", out)
    return 0


def _progress(done: int, total: int, label: str) -> None:
    """A benchmark's progress, one line a step on stderr."""
    print(f"[{done}/{total}] {label}", file=sys.stderr, flush=True)


def _bench_transform(args: argparse.Namespace) -> int:
    from matcalc_jax.benchmark.transform import bench_transform, format_transform

    data = bench_transform(
        args.programs, quick=args.quick, rounds=args.rounds,
        peers=() if args.no_peers else None, progress=_progress,
    )  # fmt: skip
    return _report(args, data, format_transform)


def _bench_hessian(args: argparse.Namespace) -> int:
    from matcalc_jax.benchmark.hessian import bench_hessian, format_hessian, write_plot

    data = bench_hessian(
        args.programs, quick=args.quick, rounds=args.rounds,
        peers=() if args.no_peers else None, progress=_progress,
    )  # fmt: skip
    code = _report(args, data, format_hessian)
    if args.plot:
        out = _table_stream(args)
        print(f"wrote {write_plot(data, args.plot)}", file=out)
    return code


def _report(args: argparse.Namespace, data: dict, formatter: Callable[[dict], str]) -> int:
    """Print where it ran and the table; write ``--json`` and ``--markdown`` when asked."""
    import json

    import jax

    from matcalc_jax.runtime import environment

    data["environment"] = env = environment()
    count = f" x {jax.device_count()}" if jax.device_count() > 1 else ""
    out = _table_stream(args)
    print(f"device: {env['platform']} ({env['device_kind']}){count}, jax {env['jax']}", file=out)
    table = formatter(data)
    print(table, file=out)
    if args.json:
        _write(args, "--json", args.json, json.dumps(data, indent=1) + "\n", out)
    if args.markdown:
        _write(args, "--markdown", args.markdown, table + "\n", out)
    return 0


def _site(args: argparse.Namespace) -> int:
    from matcalc_jax.site.build import SiteError, assemble, mkdocs

    root = Path.cwd()
    if not (root / "mkdocs.yml").exists() or not (root / "docs").is_dir():
        raise EnvironmentUnavailableError(
            f"site: no mkdocs.yml and docs/ in {root}; run it from the repository's root"
        )
    build = root / args.build
    if build.exists() and not build.is_dir():
        raise ValueError(f"site: --build {args.build} is not a directory")
    try:
        config = assemble(root, build)
        code = mkdocs(config, serve=args.serve, address=args.address)
    except SiteError as error:
        raise EnvironmentUnavailableError(f"site: {error}") from None
    if code == 0 and not args.serve:
        print(f"built {root / args.build / 'site' / 'index.html'}")
    return 1 if code else 0


def _emulate_cpu_devices(count: int) -> None:
    """Ask for ``count`` CPU devices before JAX starts its backends (``jax_num_cpu_devices``,
    as ``--xla_force_host_platform_device_count`` does); too late once they have started,
    and then the devices JAX has are used."""
    import contextlib

    import jax

    # An older jax has no such option; a running backend refuses it.
    with contextlib.suppress(AttributeError, RuntimeError, ValueError):
        jax.config.update("jax_num_cpu_devices", count)


#: The most devices ``bench-scale`` splits its smallest batch (64 rows, ``--quick``) over.
SCALE_MAX_DEVICES = 64


def _bench_scale(args: argparse.Namespace) -> int:
    import jax

    from matcalc_jax.benchmark.scale import bench_scale, format_scale

    uneven = [c for c in args.devices if c & (c - 1) or c > SCALE_MAX_DEVICES]
    if uneven:
        raise ValueError(
            f"bench-scale: --devices {' '.join(map(str, uneven))}: a device count must be a "
            f"power of two up to {SCALE_MAX_DEVICES} (the sweep splits batches of 64 and 2048 "
            "rows evenly)"
        )
    available = jax.device_count()
    counts = sorted({c for c in args.devices if c <= available})
    if not counts:
        raise EnvironmentUnavailableError(
            f"bench-scale --devices {' '.join(map(str, args.devices))}: JAX has {available} "
            "device(s)"
        )
    if len(counts) < len(set(args.devices)):
        print(f"bench-scale: JAX has {available} device(s); measuring {counts}", file=sys.stderr)

    def progress(label: str) -> None:
        print(f"  {label}", file=sys.stderr, flush=True)

    return _report(args, bench_scale(counts, quick=args.quick, progress=progress), format_scale)


def _list(args: argparse.Namespace) -> int:
    from matcalc_jax.catalogue import programs, rules

    catalogue = rules() + programs()
    id_width = max(len(r.id) for r in catalogue)
    formula_width = max(len(r.plain) for r in catalogue) if args.wide else 44
    width = None if args.wide else WIDTH

    def row(rule_id: str, formula: str, source: str) -> str:
        formula = clip(formula, formula_width).ljust(formula_width)
        return clip(f"{rule_id.ljust(id_width)}  {formula}  {source}", width)

    print(row("id", "formula", "source"))
    for r in catalogue:
        print(row(r.id, r.plain, r.source))
    return 0


def _docs(args: argparse.Namespace) -> int:
    from matcalc_jax.site.rules_page import render_rules_markdown

    text = render_rules_markdown()
    path = Path(args.out)
    if args.check:
        try:
            current = path.read_text(encoding="utf-8") if path.exists() else None
        except UnicodeDecodeError:  # not the page it should be: stale
            current = None
        except OSError as error:
            raise ValueError(f"docs: --out {path}: {error.strerror or error}") from None
        if current != text:
            print(f"{path} is stale: run `matcalc-jax docs --out {path}`", file=sys.stderr)
            return 1
        print(f"{path} is up to date")
        return 0
    _write(args, "--out", args.out, text)
    return 0


def _accuracy(args: argparse.Namespace) -> int:
    import jax

    jax.config.update("jax_platforms", "cpu")
    jax.config.update("jax_enable_x64", True)
    from matcalc_jax.verification import accuracy as _accuracy

    _write(args, "--out", args.out, _accuracy.markdown(), sys.stderr)
    return 0


VERIFY_EXAMPLES = """examples:
  matcalc-jax verify                                  every rule, float32 and float64, sizes 1 4 16
  matcalc-jax verify --rules inverse softmax --sizes 2 8
  matcalc-jax verify --dtype bfloat16 float16         low precision, against float64 references
  matcalc-jax verify --json report.json               also write every check as JSON
  matcalc-jax verify --json - | jq .passed            JSON on stdout, the table on stderr
  matcalc-jax verify --platform gpu                   on a GPU (exit 3 if there is none)

exit codes: 0 every check passed; 1 a check failed, a worker process died, or a step made no
progress for --timeout seconds (the verdict stands when the reader of stdout goes away); 2 a
usage error, or --json could not be written; 3 this machine cannot do what was asked (no such
platform, no float64); 130 interrupted (Ctrl-C); 143 terminated (SIGTERM)."""

BENCH_EXAMPLES = """examples:
  matcalc-jax bench --quick                           proves the benchmark runs (< 30 s)
  matcalc-jax bench --rules softmax linear --dtype float32 float64 --sizes 256 1024
  matcalc-jax bench --json results.json --csv results.csv --markdown table.md
  matcalc-jax bench --platform gpu                    on a GPU (exit 3 if there is none)"""


def _output_arguments(parser: argparse.ArgumentParser) -> None:
    """``--json``, ``--markdown`` and ``--platform`` of the benchmarks that report by
    ``_report``."""
    parser.add_argument("--json", metavar="PATH", help="write the results as JSON")
    parser.add_argument("--markdown", metavar="PATH", help="write the tables as Markdown")
    parser.add_argument(
        "--platform", choices=PLATFORMS, default="cpu", help="cpu (default), gpu, or default"
    )


def _program_arguments(parser: argparse.ArgumentParser, quick: str, peers: str) -> None:
    """The options of the benchmarks of programs against autodiff and their peers."""
    parser.add_argument("--programs", nargs="+", metavar="ID", help="program ids")
    parser.add_argument("--quick", action="store_true", help=quick)
    parser.add_argument("--rounds", type=_positive, help="rounds (default 7; quick 3)")
    parser.add_argument("--no-peers", action="store_true", help=f"leave out {peers}")
    _output_arguments(parser)


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer; got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer; got {value}")
    return value


def _address(text: str) -> str:
    """HOST:PORT with a port from 1 to 65535 (mkdocs' own check is a traceback)."""
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise argparse.ArgumentTypeError(
            f"expected HOST:PORT, a port from 1 to 65535; got {text!r}"
        )
    return text


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seconds; got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number of seconds; got {text}")
    return value


def _gib(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of GiB; got {text!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"expected a positive number of GiB; got {text}")
    return value


def _add_common(command: argparse.ArgumentParser, default_dtypes: str) -> None:
    """The options ``verify`` and ``bench`` share, spelled the same."""
    command.add_argument("--rules", nargs="+", metavar="ID", help="rule ids (default: all)")
    command.add_argument(
        "--dtype",
        "--dtypes",
        dest="dtype",
        nargs="+",
        metavar="DTYPE",
        help=f"dtypes (default: {default_dtypes}); float16 and bfloat16 too",
    )
    command.add_argument(
        "--sizes", nargs="+", type=_positive, metavar="N", help="sizes (default: per rule)"
    )
    command.add_argument(
        "--json",
        metavar="PATH",
        help="write the results as JSON; - for stdout (the table then goes to stderr)",
    )
    command.add_argument("--wide", action="store_true", help="lines longer than 100 columns")
    command.add_argument(
        "--max-gib",
        type=_gib,
        default=4.0,
        metavar="GIB",
        help="refuse a case estimated to need more memory than this, before running (default 4)",
    )
    command.add_argument(
        "--platform",
        choices=PLATFORMS,
        default="cpu",
        help="cpu (default), gpu, or default (JAX's own choice)",
    )


class _Parser(argparse.ArgumentParser):
    """argparse's parser with a usage error in one line (argparse prints the usage block
    first): the option, what it got and expected, and where the usage is."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="matcalc-jax",
        description="Matrix-calculus rules: closed-form Jacobians checked against JAX autodiff.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    raw = argparse.RawDescriptionHelpFormatter

    def command(name: str, about: str, examples: str, dtypes: str) -> argparse.ArgumentParser:
        parser = commands.add_parser(name, help=about, epilog=examples, formatter_class=raw)
        _add_common(parser, dtypes)
        return parser

    verify = command(
        "verify",
        "check every closed form against jacfwd, jacrev and finite differences",
        VERIFY_EXAMPLES,
        "float32 float64",
    )
    verify.add_argument(
        "--size",
        dest="sizes",
        nargs="+",
        type=_positive,
        action=_Deprecated,
        instead="--sizes",
        help=argparse.SUPPRESS,
    )
    verify.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    verify.add_argument(
        "--timeout",
        type=_seconds,
        default=300.0,
        metavar="SECONDS",
        help="fail when one step makes no progress for this long (default: 300)",
    )
    verify.add_argument(
        "--no-cache",
        action="store_true",
        help="compile every program afresh; keep none (default: what is compiled is kept "
        "in ~/.cache/matcalc-jax or $MATCALC_JAX_CACHE for the next run)",
    )
    verify.add_argument(
        "--cache-dir", metavar="DIR", help="the directory of what is compiled, kept between runs"
    )
    verify.add_argument(
        "--processes",
        type=_positive,
        metavar="N",
        help="check the rules in N worker processes (default: one per core, at most 4)",
    )
    verify.set_defaults(run=_verify)

    bench = command(
        "bench",
        "time closed forms against jacfwd, jacrev and the write floor",
        BENCH_EXAMPLES,
        "float32",
    )
    bench.add_argument(
        "--out", dest="json", action=_Deprecated, instead="--json", help=argparse.SUPPRESS
    )
    bench.add_argument(
        "--quick", action="store_true", help="one small size per rule, three short rounds"
    )
    bench.add_argument("--rounds", type=_positive, help="rounds of samples (default 7; quick 3)")
    bench.add_argument("--csv", metavar="PATH", help="write every timing as CSV")
    bench.add_argument("--markdown", metavar="PATH", help="write the table as Markdown")
    bench.add_argument("--plots", metavar="DIR", help="write PNG plots (needs matplotlib)")
    bench.set_defaults(run=_bench)

    models = commands.add_parser(
        "bench-models",
        help="time an MLP training step with matcalc_jax.nn against jax.nn, and the "
        "closed-form backprop against jax.grad",
    )
    models.add_argument("--dtype", default="float32", help="dtype (default: float32)")
    models.add_argument("--quick", action="store_true", help="one small size, three rounds")
    models.add_argument("--rounds", type=_positive, help="rounds of samples (default 7; quick 3)")
    models.add_argument("--json", metavar="PATH", help="write the results as JSON")
    models.add_argument(
        "--out", dest="json", action=_Deprecated, instead="--json", help=argparse.SUPPRESS
    )
    models.add_argument(
        "--platform", choices=PLATFORMS, default="cpu", help="cpu (default), gpu, or default"
    )
    models.set_defaults(run=_bench_models)

    transform = commands.add_parser(
        "bench-transform",
        help="time matcalc_jax.jacobian on the corpus programs against jax.jacfwd / "
        "jax.jacrev (and asdex, sparsejac when installed)",
    )
    _program_arguments(transform, "one small size, three rounds", "asdex, sparsejac")
    transform.set_defaults(run=_bench_transform)

    second = commands.add_parser(
        "bench-hessian",
        help="time matcalc_jax.hessian, laplacian and gauss_newton against jax.hessian, "
        "jax.jacfwd(jax.grad(f)) (and asdex, folx when installed)",
    )
    _program_arguments(second, "small sizes, three rounds", "asdex, folx")
    second.add_argument("--plot", metavar="PATH", help="write a PNG of the speed-ups")
    second.set_defaults(run=_bench_hessian)

    scale = commands.add_parser(
        "bench-scale",
        help="per-device memory and bytes moved of the sharded per-example Jacobian and Gram "
        "Hessian over 1, 2, 4, 8 devices, and the peak memory of chunk_size",
        epilog="On the CPU it emulates the devices (jax_num_cpu_devices); they share the "
        "host's cores, so only memory and bytes moved scale, not time.",
    )
    scale.add_argument(
        "--devices", nargs="+", type=_positive, default=[1, 2, 4, 8], metavar="N",
        help="device counts (default 1 2 4 8)",
    )  # fmt: skip
    scale.add_argument("--quick", action="store_true", help="small sizes, one round")
    _output_arguments(scale)
    scale.set_defaults(run=_bench_scale)

    site = commands.add_parser(
        "site",
        help="build the reference site strictly into build/site (MkDocs Material; needs the "
        "docs extra and npm), or serve it",
    )
    site.add_argument("--serve", action="store_true", help="serve it, rebuilding on change")
    site.add_argument(
        "--address", type=_address, default="127.0.0.1:8000", help="HOST:PORT for --serve"
    )
    site.add_argument("--build", default="build", help="the build folder (default: build)")
    site.set_defaults(run=_site, platform="default")

    listing = commands.add_parser(
        "list", help="list the rules with their formulas, then the transform's corpus programs"
    )
    listing.add_argument("--wide", action="store_true", help="lines longer than 100 columns")
    listing.set_defaults(run=_list, platform="default")

    accuracy = commands.add_parser(
        "accuracy",
        help="measure matcalc_jax.nn and jax.nn against mpmath (ulps) and write the table",
    )
    accuracy.add_argument("--out", default="-", help="a Markdown file, or - for stdout")
    accuracy.set_defaults(run=_accuracy, platform="cpu")
    docs = commands.add_parser("docs", help="write docs/rules.md from the catalogue")
    docs.add_argument("--out", default="docs/rules.md", help="path (default: docs/rules.md)")
    docs.add_argument("--check", action="store_true", help="exit 1 if the file is stale")
    docs.set_defaults(run=_docs, platform="default")
    return parser


def _raised_by_the_package(error: BaseException) -> bool:
    """True when ``error`` was raised by a ``raise`` statement of this package's own code
    (its checks of what it was asked: an unknown rule, a bad size), not inside JAX, NumPy
    or Python, nor by the package's own subscript or call (``params["num_consts"]`` that a
    newer JAX no longer has): a bug, whose traceback must be seen rather than read as a
    usage error."""
    package = str(Path(__file__).resolve().parents[1])
    frame = error.__traceback__
    while frame is not None and frame.tb_next is not None:
        frame = frame.tb_next
    if frame is None:
        return False
    filename = frame.tb_frame.f_code.co_filename
    if not str(Path(filename).resolve()).startswith(package):
        return False
    return linecache.getline(filename, frame.tb_lineno).lstrip().startswith("raise ")


def _stdout_to_devnull() -> None:
    """Point the process's standard output at the null device (if it has one)."""
    if sys.stdout is None:
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; the return value is the exit code (see ``verify --help``)."""
    with _stderr_open():
        return _main(argv)


def _parsed(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> argparse.Namespace:
    """``parser.parse_args(argv)``: a usage error exits 2 there, with argparse's message. Its
    ``--help`` text goes through the stdout guard (argparse drops a failed write, so
    ``--help > /dev/full`` exited 0 having written nothing). A closed stdout is refused by
    the command's own guard, which names the command (argparse writes ``--help`` to stderr
    then)."""
    if sys.stdout is None:
        return parser.parse_args(argv)
    try:
        with _stdout_guarded():
            try:
                return parser.parse_args(argv)
            except SystemExit:
                sys.stdout.flush()
                raise
    except StdoutUnwritableError as error:
        _stdout_to_devnull()
        print(f"matcalc-jax: error: --help: {error}", file=sys.stderr)
        raise SystemExit(2) from None


def _main(argv: Sequence[str] | None) -> int:
    parser = build_parser()
    args = _parsed(parser, argv)
    args.interrupts = interrupts = Interrupts()
    try:
        with interrupts, _jax_options_given_back(), _stdout_guarded():
            if args.command == "verify" and argv is None:  # the command line, not a caller's
                _compile_for_speed()
            if args.command == "bench-scale" and args.platform == "cpu":
                _emulate_cpu_devices(max(args.devices))
            if args.platform != "default" or args.command in ("verify", "bench"):
                _select_platform(args.platform)
            _check_output_paths(args)
            code = args.run(args)
            interrupts.check()  # a signal whose KeyboardInterrupt Python lost on the way
            return code
    except EnvironmentUnavailableError as error:
        print(f"matcalc-jax: error: {error}", file=sys.stderr)
        return 3
    except KeyboardInterrupt:
        if interrupts.signal == signal.SIGTERM:
            print("\nmatcalc-jax: terminated", file=sys.stderr)
            return 143
        print("\nmatcalc-jax: interrupted", file=sys.stderr)
        return 130
    except StdoutUnwritableError as error:
        _stdout_to_devnull()  # what is left in its buffer would fail again at exit
        print(f"matcalc-jax: error: {args.command}: {error}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # the reader of stdout went away (| head): stop quietly
        _stdout_to_devnull()
        # verify's verdict stands whoever reads the table (a failed check is 1, also for
        # `verify | head` under pipefail); cut off before it, verify did not pass
        return getattr(args, "verdict", 1) if args.command == "verify" else 0
    except WorkerDiedError as error:
        print(f"matcalc-jax: error: {error}", file=sys.stderr)
        return 1
    except (KeyError, ValueError, TypeError) as error:
        if not _raised_by_the_package(error):  # a bug, not a usage error: show it
            raise
        message = error.args[0] if error.args else str(error)
        print(f"matcalc-jax: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
