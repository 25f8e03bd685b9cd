"""The key of a call: what must be equal for a stored value to stand for running it again.

A key is a SHA-256 of four parts:

- the code of the function and of the user's own functions it calls, transitively (the walk
  of ``introspect.reachable``, entering only functions of ``__main__`` and of modules no
  installed package provides: installed code is covered by the environment part). Code is
  hashed as compiled code objects, not as source text: bytecode, constants (nested code
  objects recursively), the names it uses, argument counts and flags. Comments, blank lines
  and formatting compile to the same code, so editing them keeps the key, while any change
  of what runs changes it; and it works for code whose source cannot be read (a lambda typed
  at a prompt). Default argument values, module-level constants the code names (numbers,
  strings and tuples of them) and the methods of the user's classes it names count too. The
  docstring of each function does not.
- the arguments, bound to the signature (so ``f(1, b=2)``, ``f(b=2, a=1)`` and ``f(1)`` with
  ``b=2`` the default are one call) and hashed with ``joblib.hash``: numpy arrays by content.
- the environment: on a cluster the key of the environment the job would get
  (``plan_environment``: Python version and pinned requirements, or the interpreter or conda
  environment named by the settings); locally the Python version and the versions of the
  installed distributions the call uses.
- the function's module and qualified name.

Python's bytecode differs between versions; the key includes the version anyway.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import types
from collections.abc import Callable, Iterable
from concurrent.futures import Future
from typing import Any

from ..config import ClusterConfig
from ..environment import classify_modules, plan_environment
from ..introspect import reachable

#: Module-level values that count by value when the code names them.
_PLAIN = (int, float, complex, str, bytes, bool, type(None))
_KEYWORDS = inspect.Parameter.VAR_KEYWORD


def function_name(func: Callable[..., Any]) -> str:
    """``module.qualname`` of a function, as listings show it."""
    module = getattr(func, "__module__", None) or "?"
    name = getattr(func, "__qualname__", None) or getattr(func, "__name__", None) or repr(func)
    return f"{module}.{name}"


@functools.lru_cache(maxsize=1024)
def _own_module(name: str) -> bool:
    """Whether a module is the user's: ``__main__``, or one that no installed package has."""
    top = name.partition(".")[0]
    if top == "__main__":
        return True
    _, local = classify_modules({top})
    return top in local


def is_own(func: Any) -> bool:
    """Whether a function is the user's own code (its module is), which the key walks into."""
    module = getattr(func, "__module__", None)
    return isinstance(module, str) and _own_module(module)


def code_digest(func: Callable[..., Any]) -> str:
    """The hash of the code of ``func`` and of the user's functions it reaches (see module doc).

    Each function counts once, whatever order the walk meets them in.
    """
    parts = []
    for reached in reachable(func, follow=is_own):
        function = reached.function
        digest = hashlib.sha256(function_name(function).encode())
        _hash_code(digest, function.__code__, docstring=function.__doc__)
        _hash_value(digest, getattr(function, "__defaults__", None))
        _hash_value(digest, getattr(function, "__kwdefaults__", None))
        for value in reached.referenced:
            _hash_referenced(digest, value)
        parts.append(digest.hexdigest())
    return hashlib.sha256("\n".join(sorted(parts)).encode()).hexdigest()


def _hash_code(digest: Any, code: types.CodeType, docstring: str | None = None) -> None:
    """Feed ``digest`` what a code object does, leaving out its docstring and line numbers."""
    consts = list(code.co_consts)
    if docstring is not None and consts and consts[0] is docstring:
        consts[0] = None
    digest.update(code.co_code)
    numbers = (code.co_argcount, code.co_posonlyargcount, code.co_kwonlyargcount, code.co_flags)
    digest.update(repr(numbers).encode())
    for names in (code.co_names, code.co_varnames, code.co_freevars, code.co_cellvars):
        digest.update(repr(names).encode())
    for constant in consts:
        if isinstance(constant, types.CodeType):
            _hash_code(digest, constant)
        else:
            digest.update(f"{type(constant).__qualname__}:{constant!r};".encode())


def _hash_value(digest: Any, value: Any) -> None:
    try:
        digest.update(_joblib().hash(value, hash_name="sha1").encode())
    except Exception:  # a value joblib cannot hash counts by its type only
        digest.update(type(value).__qualname__.encode())


def _hash_referenced(digest: Any, value: Any) -> None:
    """A value the code names: constants by value, the user's classes by their methods'
    code; functions are walked themselves, and modules and other objects count by name."""
    if isinstance(value, _PLAIN) or (
        isinstance(value, (tuple, frozenset)) and all(isinstance(v, _PLAIN) for v in value)
    ):
        digest.update(f"{type(value).__qualname__}:{value!r};".encode())
    elif isinstance(value, type) and is_own(value):
        digest.update(value.__qualname__.encode())
        for name, member in sorted(vars(value).items()):
            member = getattr(member, "__func__", member)  # staticmethod, classmethod
            if isinstance(member, types.FunctionType):
                digest.update(name.encode())
                _hash_code(digest, member.__code__, docstring=member.__doc__)


def arguments_digest(func: Callable[..., Any], args: tuple, kwargs: dict[str, Any]) -> str | None:
    """The hash of a call's arguments bound to the signature; None when a call cannot be
    cached: an argument is a future (its value is not known yet), or cannot be hashed
    (joblib pickles it: a lock, a lambda, an open socket)."""
    values = [*args, *kwargs.values()]
    if any(isinstance(value, Future) for value in values):
        return None
    try:
        signature = inspect.signature(func)
        bound = signature.bind(*args, **kwargs)
        bound.apply_defaults()
        named = [
            # **kwargs sorted by name: the order they were written in does not count.
            (name, sorted(value.items()) if signature.parameters[name].kind is _KEYWORDS else value)
            for name, value in bound.arguments.items()
        ]
    except (TypeError, ValueError):  # no signature, or a call that will fail: hash as given
        named = [("*", args), ("**", sorted(kwargs.items()))]
    if inspect.ismethod(func):  # a bound method's instance is an argument too
        named.insert(0, ("__self__", func.__self__))
    try:
        return _joblib().hash(named, hash_name="sha1")
    except Exception:  # whatever pickling raises, the call just runs
        return None


def value_modules(values: Iterable[Any]) -> frozenset[str]:
    """The modules of the arguments' types (a numpy array: numpy), which the environment
    must provide."""
    found = set()
    for value in values:
        module = value.__name__ if isinstance(value, types.ModuleType) else None
        module = module or getattr(type(value), "__module__", None)
        if isinstance(module, str):
            found.add(module)
    return frozenset(found)


def environment_digest(
    func: Callable[..., Any],
    config: ClusterConfig,
    environment: Any,
    used: set[str],
    modules: frozenset[str],
) -> str:
    """The environment part of the key for calls whose arguments come from ``modules``;
    ``used`` is what ``modules_used_by(func)`` found. Raises ConfigError for an unreadable
    requirements file, as submitting would.

    Locally the call runs in this Python with the installed packages, whatever the
    ``environment`` argument says; on a cluster, in the environment the job would get.
    """
    local = config.cluster_type == "local"
    plan = plan_environment(
        func,
        "auto" if local else environment,
        python_executable=None if local else config.python_executable,
        conda_env_name=None if local else config.conda_env_name,
        payload_modules=modules,
        modules=used,
    )
    if plan.key:
        return plan.key
    return f"python:{plan.python}" if plan.python else f"conda:{plan.conda_env}"


def _joblib() -> Any:
    """joblib, imported when a key is made: ``import clustrix`` must not import it (the
    joblib backend registers itself when the user imports joblib; see _joblib_hook)."""
    import joblib

    return joblib
