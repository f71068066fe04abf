"""Compiled programs kept between runs: a warm ``verify`` neither traces, lowers nor compiles.

JAX's persistent compilation cache saves XLA's compile, but every run still traces each
program in Python and lowers it to find the cache key; for the harness that is most of a
run. ``ProgramCache`` keeps the compiled executables themselves
(``jax.experimental.serialize_executable``), and small values derived from the same
programs (the entries an operator stores), in files named by a key that fixes everything
a program depends on:

- the source of every module of the package (SHA-256 of the files' bytes): a changed rule,
  form, operator or harness changes every key;
- JAX's, jaxlib's and Python's versions, the backend (platform, its version, the device
  kinds and count), the CPU (its architecture and feature flags), the ``XLA_FLAGS`` and every
  ``JAX_*`` / ``XLA_*`` environment variable, and every JAX configuration value, the
  calling thread's 64-bit mode and matrix-product precision included;
- the program's name (rule, dtype, size, which program; for ``verify``, the compiled
  code of the rule record's functions and of the functions they reach, ``code_digest``, so
  that a record changed inside a running process is not served what its files compiled)
  and the shapes, dtypes and tree of its arguments.

A stale entry is impossible, not merely unlikely: any difference gives another name. The
key is written inside the file too, with the SHA-256 of the payload; a file that is truncated,
altered or holds another key's program (two files swapped) is deleted and the program
compiled and written again, by a temporary file and a rename, so that a reader sees a
whole file or none. Two processes may share one directory.

Programs are kept on the CPU only, where this is tested; elsewhere each run compiles
them. Loading an executable runs code from the file, as JAX's own compilation cache does:
keep the directory as private as the one JAX's cache lives in.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import pickle
import platform
import shutil
import threading
import types
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy
import jaxlib
import numpy as np

#: The first line of every file, naming the format.
MAGIC = b"matcalc-jax-program/1\n"
_PACKAGE = Path(__file__).resolve().parents[1]


@functools.lru_cache(maxsize=1)
def source_digest() -> str:
    """SHA-256 of every Python module and TOML table of the package: each relative path and
    its bytes."""
    digest = hashlib.sha256()
    for path in sorted(p for p in _PACKAGE.rglob("*") if p.suffix in (".py", ".toml")):
        data = path.read_bytes()
        digest.update(f"{path.relative_to(_PACKAGE).as_posix()}\0{len(data)}\0".encode())
        digest.update(data)
    return digest.hexdigest()


def code_digest(*functions: Any) -> str:
    """SHA-256 of the compiled code of ``functions``, of what a ``functools.partial`` or a
    wrapper holds, of the functions their closures hold (two levels down), and of the
    functions they reach by a global name (a function of this package or of the caller's
    own module, named directly or as an attribute of a module of this package, and so on
    from those): a function replaced inside a running process (a rule record's closed form
    swapped by a test, a helper of a form patched, a user's edited cell) gives another key,
    which the package's files alone would not. A class reached so (an operator a form
    builds) adds the code of its methods and its bases' of this package (``_class_sha``),
    not what those methods reach: a method patched in the process gives another key too.
    """
    digest = hashlib.sha256()
    seen: set[int] = set()
    held: list[Any] = []  # the functions seen stay alive, so their ids stay theirs

    def add(function: Any, depth: int) -> None:
        function = getattr(function, "func", function)  # functools.partial
        if id(function) in seen:
            return
        seen.add(id(function))
        held.append(function)
        if isinstance(function, type):  # a class: its methods' code, not what they reach
            digest.update(repr(function.__qualname__).encode())
            digest.update(_class_sha(function))
            return
        code = getattr(function, "__code__", None)
        if code is None:
            digest.update(repr(type(function).__qualname__).encode())
            return
        digest.update(_code_sha(code))
        for name, reached in _globals_reached(function, code):
            digest.update(name.encode() + b"\0")
            add(reached, depth)
        if depth == 0:
            return
        inner = [getattr(function, "__wrapped__", None)]
        inner += [cell.cell_contents for cell in function.__closure__ or () if _filled(cell)]
        for item in inner:
            if callable(item):
                add(item, depth - 1)

    for function in functions:
        add(function, 2)
    return digest.hexdigest()


@functools.lru_cache(maxsize=4096)
def _code_sha(code: types.CodeType) -> bytes:
    """SHA-256 of ``_code_bytes(code)`` (a code object never changes: kept per object)."""
    return hashlib.sha256(_code_bytes(code)).digest()


def _in_package(module: str) -> bool:
    """Whether ``module`` (a name) is this package or one of its modules."""
    return module.split(".")[0] == __name__.split(".")[0]


def _names(code: types.CodeType) -> list[str]:
    """The global and attribute names a code object and its nested code objects use."""
    names = list(code.co_names)
    for constant in code.co_consts:
        if isinstance(constant, types.CodeType):
            names += _names(constant)
    return names


def _globals_reached(function: Any, code: types.CodeType) -> list[tuple[str, Any]]:
    """The functions ``function`` reaches by a name of its code: a global of its module,
    or an attribute of a module of this package it names (``linear._matrix_vector``), when
    that function is this package's or of ``function``'s own module."""
    namespace = getattr(function, "__globals__", None)
    if not isinstance(namespace, dict):
        return []
    home = getattr(function, "__module__", None)

    def ours(value: Any) -> bool:
        module = getattr(value, "__module__", None) or ""
        followed = isinstance(value, (types.FunctionType, type))
        return followed and (module == home or _in_package(module))

    names = _names(code)
    reached = []
    for name in dict.fromkeys(names):
        value = namespace.get(name)
        if ours(value):
            reached.append((name, value))
        elif isinstance(value, types.ModuleType) and _in_package(value.__name__):
            for attribute in dict.fromkeys(names):
                inner = getattr(value, attribute, None)
                if ours(inner):
                    reached.append((f"{name}.{attribute}", inner))
    return reached


#: Per class: the identities of what it and its bases of this package hold (kept alive
#: with them, so that an id stays theirs), and the SHA-256 of its methods' code.
_CLASS_SHAS: dict[type, tuple[tuple, tuple, bytes]] = {}


def _class_sha(cls: type) -> bytes:
    """SHA-256 of the code of the functions ``cls`` and its bases of this package define:
    methods, static and class methods, properties' accessors (``object``'s and other
    libraries' bases are part of the environment's key). Computed again only when one of
    those classes holds another member (a method patched in the process)."""
    chain = [k for k in cls.__mro__ if k is cls or _in_package(k.__module__ or "")]
    members = tuple(tuple(vars(k).items()) for k in chain)
    identity = tuple(tuple(map(id, (value for _, value in items))) for items in members)
    kept = _CLASS_SHAS.get(cls)
    if kept is not None and kept[1] == identity:
        return kept[2]
    digest = hashlib.sha256()
    for klass, items in zip(chain, members, strict=True):
        for name, member in items:
            inner = getattr(member, "__func__", member)  # staticmethod, classmethod
            accessors = [getattr(inner, part, None) for part in ("fget", "fset", "func")]
            for function in [inner, *accessors]:
                if isinstance(function, types.FunctionType):
                    label = f"{klass.__qualname__}.{name}".encode()
                    digest.update(label + b"\0" + _code_sha(function.__code__))
    _CLASS_SHAS[cls] = (members, identity, digest.digest())
    return digest.digest()


def _code_bytes(code: types.CodeType) -> bytes:
    """A code object's bytecode, names and constants (nested code objects the same way),
    written the same in every process. Not ``marshal``: its bytes depend on the objects'
    reference counts at the time, so the same function gave several keys in one run."""
    return repr(
        (code.co_qualname, code.co_code, code.co_names, code.co_varnames, code.co_freevars,
         [_constant(c) for c in code.co_consts])
    ).encode()  # fmt: skip


def _constant(value: Any) -> Any:
    """A constant of a code object, written independently of the process's string hashing
    (a set's order) and of where objects live."""
    if isinstance(value, types.CodeType):
        return _code_bytes(value)
    if isinstance(value, (frozenset, set)):
        return ("set", sorted(repr(_constant(v)) for v in value))
    if isinstance(value, tuple):
        return tuple(_constant(v) for v in value)
    return repr(value)


def _filled(cell: Any) -> bool:
    try:
        cell.cell_contents  # noqa: B018 (an empty cell raises)
    except ValueError:
        return False
    return True


@functools.lru_cache(maxsize=1)
def _machine() -> dict[str, Any]:
    """What the process sees of the machine and the runtime; constant within a process."""
    devices = jax.devices()
    cpu_flags = ""
    with (  # the features XLA's CPU code generator targets
        contextlib.suppress(OSError),
        open("/proc/cpuinfo", encoding="utf-8", errors="replace") as handle,
    ):
        cpu_flags = next((line for line in handle if line.startswith("flags")), "")
    return {
        "source": source_digest(),
        "jax": jax.__version__,
        "jaxlib": jaxlib.__version__,
        "python": platform.python_version(),
        "platform": devices[0].platform,
        "platform_version": devices[0].client.platform_version,
        "devices": [device.device_kind for device in devices],
        "machine": platform.machine(),
        "processor": platform.processor(),
        "cpu_flags": cpu_flags,
        "environment": sorted(
            (name, value)
            for name, value in os.environ.items()
            if name.startswith(("JAX_", "XLA_", "TF_", "CUDA_", "LIBTPU"))
            and name.lower() not in _WHERE_COMPILES_ARE_KEPT
        ),
    }


#: JAX options (and their environment variables) that say where and when JAX keeps what it
#: compiled, not what it compiles: left out of the key, so that one directory spelled two
#: ways (relative, absolute) finds the same programs. The options that can change a
#: program (XLA's own caches, profile-guided compiles) stay in it.
_WHERE_COMPILES_ARE_KEPT = frozenset(
    {
        "jax_compilation_cache_dir",
        "jax_compilation_cache_max_size",
        "jax_persistent_cache_min_compile_time_secs",
        "jax_persistent_cache_min_entry_size_bytes",
    }
)


def context_key() -> str:
    """The part of a key that is the same for every program of this thread and process."""
    context = {
        **_machine(),
        "config": sorted(
            (name, repr(value))
            for name, value in jax.config.values.items()
            if name not in _WHERE_COMPILES_ARE_KEPT
        ),
        "x64": bool(jax.config.jax_enable_x64),  # thread-local: read in the calling thread
        "matmul_precision": repr(jax.config.jax_default_matmul_precision),
    }
    return hashlib.sha256(json.dumps(context, sort_keys=True).encode()).hexdigest()


def signature(arguments: Any) -> str:
    """The tree, shapes, dtypes and weak types of ``arguments``: what a program is compiled
    for."""
    leaves, tree = jax.tree_util.tree_flatten(arguments)
    shapes = [str(jax.typeof(leaf)) for leaf in leaves]
    weak = [bool(getattr(leaf, "weak_type", False)) for leaf in leaves]
    return f"{tree}|{shapes}|{weak}"


@functools.lru_cache(maxsize=1)
def _initialize_cpu_kernels() -> None:
    """Make the CPU runtime's LAPACK kernels callable before any loaded program runs.

    jaxlib sets them up when it first lowers a linear-algebra operation; a program loaded
    from a file skips lowering, and its LAPACK calls would jump through unset pointers (a
    segmentation fault). Lowering one small Cholesky sets them up, compiling nothing.
    """
    import jax.numpy as jnp

    jax.jit(jnp.linalg.cholesky).lower(jax.ShapeDtypeStruct((1, 1), jnp.float32))


def compile_fresh(
    function: Callable, arguments: Any, compiler_options: dict[str, Any] | None = None
) -> jax.stages.Compiled:
    """``jax.jit(function).lower(arguments).compile()``, never served by JAX's persistent
    cache, and not written to it.

    An executable JAX loads from its persistent cache serializes without its machine code
    (jaxlib 0.10 on CPU: the loaded copy fails with "Function ... not found"), so a program
    to be kept must come from XLA itself. JAX's cache key includes the program's name: a
    name no compile has used before (a random suffix) cannot be found there. The compile
    also runs with this thread's minimum compile time for writing to that cache set to
    infinity, so that the program, which only this cache will reuse, is not written there.
    """

    def program(*args: Any) -> Any:
        return function(*args)

    program.__name__ = program.__qualname__ = f"matcalc_{uuid.uuid4().hex}"
    lowered = jax.jit(program, compiler_options=compiler_options).lower(arguments)
    with _not_written_to_jax_cache():
        return lowered.compile()


def _not_written_to_jax_cache() -> contextlib.AbstractContextManager:
    """This thread's minimum compile time for JAX's persistent cache set to infinity (a
    private JAX option; where it is missing, the program is written there and never read)."""
    from jax._src import config as jax_config

    state = getattr(jax_config, "persistent_cache_min_compile_time_secs", None)
    return state(float("inf")) if callable(state) else contextlib.nullcontext()


def _alive(pid: int) -> bool:
    """Whether process ``pid`` runs on this machine (one of another user's counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # PermissionError: it exists
        return True
    return True


class ProgramCache:
    """Compiled programs and derived values in ``directory``, keyed as the module says.

    ``compiled(name, lower, arguments)`` returns the compiled program ``lower()`` gives,
    from the directory when it holds it; ``value(name, compute)`` a JSON value the same
    way. ``dropped`` counts the damaged files deleted, ``loaded`` the entries read. Every
    method is safe to call from several threads.
    """

    def __init__(self, directory: str | os.PathLike) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.dropped = 0
        self.loaded = 0
        self._lock = threading.Lock()
        self._remove_leftovers()

    def _remove_leftovers(self) -> None:
        """Delete the temporary files of writers that died before renaming them (a run
        killed mid-write): ``.KEY.PID.THREAD.tmp`` whose process is gone from this
        machine. Another live run's are left to it."""
        for path in self.directory.glob(".*.tmp"):
            parts = path.name.split(".")  # see _temporary: "", key, pid, thread, "tmp"
            if len(parts) == 5 and parts[2].isdigit() and not _alive(int(parts[2])):
                with contextlib.suppress(OSError):
                    path.unlink()

    def _temporary(self, key: str) -> Path:
        """Where this thread writes ``key`` before renaming it: ``.KEY.PID.THREAD.tmp``
        (``_remove_leftovers`` reads the writer's process id from it)."""
        return self.directory / f".{key}.{os.getpid()}.{threading.get_ident()}.tmp"

    def _key(
        self, kind: str, name: tuple, arguments: Any = None, options: dict | None = None
    ) -> str:
        parts = [context_key(), kind, repr(name)]
        if arguments is not None:
            parts.append(signature(arguments))
        if options:
            parts.append(repr(sorted(options.items())))
        return hashlib.sha256("\n".join(parts).encode()).hexdigest()

    def _read(self, key: str) -> bytes | None:
        """The payload stored under ``key``; ``None`` when absent, and when damaged (the
        file is then deleted)."""
        path = self.directory / key
        try:
            data = path.read_bytes()
        except IsADirectoryError:  # not an entry: it would keep the program from being kept
            self._drop(path)
            return None
        except OSError:
            return None
        header = MAGIC + key.encode() + b"\n"
        body = data[len(header) + 65 :]
        digest = data[len(header) : len(header) + 64]
        if data.startswith(header) and hashlib.sha256(body).hexdigest().encode() == digest:
            with self._lock:
                self.loaded += 1
            return body
        self._drop(path)
        return None

    def _drop(self, path: Path) -> None:
        try:
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink()
        except OSError:  # already removed by another process, or a read-only directory
            return
        with self._lock:
            self.dropped += 1

    def _write(self, key: str, body: bytes) -> None:
        data = MAGIC + key.encode() + b"\n" + hashlib.sha256(body).hexdigest().encode() + b"\n"
        temporary = self._temporary(key)
        try:
            temporary.write_bytes(data + body)
            os.replace(temporary, self.directory / key)
        except OSError:  # full or read-only: the program is still compiled, only not kept
            with contextlib.suppress(OSError):
                temporary.unlink()

    def compiled(
        self,
        name: tuple,
        function: Callable,
        arguments: Any,
        compiler_options: dict[str, Any] | None = None,
    ) -> jax.stages.Compiled:
        """``function`` jit-compiled for ``arguments`` (one positional argument, a pytree)
        with ``compiler_options``: loaded when stored under ``name`` with the same options,
        else compiled (``compile_fresh``) and stored for the next run."""
        from jax.experimental import serialize_executable

        if _machine()["platform"] != "cpu":  # kept on the CPU only, where it is tested
            return jax.jit(function, compiler_options=compiler_options).lower(arguments).compile()
        _initialize_cpu_kernels()
        key = self._key("program", name, arguments, compiler_options)
        body = self._read(key)
        if body is not None:
            try:
                executable, in_tree, out_tree = pickle.loads(body)
                return serialize_executable.deserialize_and_load(executable, in_tree, out_tree)
            except Exception:  # any failure to load is a damaged entry
                self._drop(self.directory / key)
        compiled = compile_fresh(function, arguments, compiler_options)
        try:
            body = pickle.dumps(serialize_executable.serialize(compiled))
        except Exception:  # a backend that cannot serialize: compile each run
            return compiled
        self._write(key, body)
        return compiled

    def arrays(self, name: tuple, compute: Callable[[], Any]) -> Any:
        """The pytree of arrays named ``name``: loaded when stored, else ``compute()``,
        stored. For inputs drawn at random: the same key and code draw the same numbers."""
        key = self._key("arrays", name)
        body = self._read(key)
        if body is not None:
            try:
                tree, leaves = pickle.loads(body)
                return jax.tree_util.tree_unflatten(tree, [jax.device_put(a) for a in leaves])
            except Exception:  # any failure to load is a damaged entry
                self._drop(self.directory / key)
        result = compute()
        leaves, tree = jax.tree_util.tree_flatten(result)
        self._write(key, pickle.dumps((tree, [np.asarray(leaf) for leaf in leaves])))
        return result

    def value(self, name: tuple, compute: Callable[[], Any]) -> Any:
        """The JSON value named ``name``: loaded when stored, else ``compute()``, stored."""
        key = self._key("value", name)
        body = self._read(key)
        if body is not None:
            try:
                return json.loads(body)
            except ValueError:
                self._drop(self.directory / key)
        result = compute()
        self._write(key, json.dumps(result).encode())
        return result
