"""Which Python environment a remote call needs, and how to build it there once.

``environment="auto"`` (the default) looks at what the call really uses: the modules its code
imports or refers to, and every module the pickled payload names (a numpy array argument names
numpy). Installed distributions among them are pinned to the client's versions; the user's own
local modules, which no package index has, travel inside the payload by value instead.

The environment is identified by a key, a hash of the Python version and the requirement set,
and built under ``remote_work_dir/envs/<key>`` by a script that takes a lock, so concurrent jobs
never build it twice and every later job reuses it.
"""

from __future__ import annotations

import dis
import functools
import hashlib
import importlib.metadata
import json
import pickletools
import shlex
import sys
import types
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cloudpickle

from .config import text_problem
from .errors import ConfigError
from .introspect import reachable

# Never installed from an index: the runner needs only cloudpickle, and clustrix objects are
# unwrapped before they travel.
_NEVER_INSTALL = {"__main__", "builtins", "clustrix", "cloudpickle", "_pytest", "pytest"}


@dataclass(frozen=True)
class EnvironmentPlan:
    """What the job script must do to get a Python that can run the call."""

    requirements: tuple[str, ...]  # pinned requirement strings, for a venv built remotely
    key: str | None  # None when an existing interpreter is used
    python: str | None = None  # an existing interpreter (python_executable)
    conda_env: str | None = None

    @property
    def builds_venv(self) -> bool:
        return self.key is not None


def python_version() -> str:
    return f"{sys.version_info.major}.{sys.version_info.minor}"


def environment_key(requirements: Iterable[str]) -> str:
    text = python_version() + "\n" + "\n".join(sorted(set(requirements)))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


# --------------------------------------------------------------------------- module discovery


def _top(name: str | None) -> str | None:
    return name.partition(".")[0] if name else None


def _module_of(value: Any) -> str | None:
    if isinstance(value, types.ModuleType):
        return value.__name__
    module = getattr(value, "__module__", None)
    if isinstance(module, str):
        return module
    return type(value).__module__


def modules_used_by(func: Callable[..., Any], limit: int = 500) -> set[str]:
    """Module names a function imports or refers to, following the functions it calls."""
    found: set[str] = set()
    for reached in reachable(func, limit):
        found.add(getattr(reached.function, "__module__", None) or "__main__")
        for code in reached.codes:
            found.update(i.argval for i in dis.get_instructions(code) if i.opname == "IMPORT_NAME")
        found.update(filter(None, map(_module_of, reached.referenced)))
    return {m for m in found if m}


def modules_named_in_pickle(data: bytes) -> set[str]:
    """Modules a pickle will import when loaded, read from its opcodes without loading it."""
    modules: set[str] = set()
    strings: list[str] = []
    memo: dict[int, Any] = {}
    for opcode, argument, _ in pickletools.genops(data):
        name = opcode.name
        if name in ("SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "UNICODE"):
            strings.append(argument)
        elif name == "MEMOIZE":
            memo[len(memo)] = strings[-1] if strings else None
        elif name in ("BINGET", "LONG_BINGET", "GET"):
            value = memo.get(int(argument))
            if isinstance(value, str):
                strings.append(value)
        elif name == "STACK_GLOBAL" and len(strings) >= 2:
            modules.add(strings[-2])
        elif name in ("GLOBAL", "INST") and isinstance(argument, str):
            modules.add(argument.split(" ")[0])
    return modules


# --------------------------------------------------------------------------- distributions


@functools.lru_cache(maxsize=1)
def _distributions_by_module() -> dict[str, list[str]]:
    return importlib.metadata.packages_distributions()


@functools.lru_cache(maxsize=256)
def _is_local_distribution(distribution: str) -> bool:
    """Installed from a folder (``pip install -e .``): no index has it, ship it by value."""
    try:
        text = importlib.metadata.distribution(distribution).read_text("direct_url.json")
    except importlib.metadata.PackageNotFoundError:
        return True
    if not text:
        return False
    return "dir_info" in json.loads(text)


def _is_stdlib(module: str) -> bool:
    return module in sys.stdlib_module_names or module in sys.builtin_module_names


def classify_modules(modules: Iterable[str]) -> tuple[dict[str, str], set[str]]:
    """Split top-level modules into ``{distribution: version}`` to install and local ones."""
    install: dict[str, str] = {}
    local: set[str] = set()
    for module in {_top(m) for m in modules}:
        if not module or module in _NEVER_INSTALL or _is_stdlib(module):
            continue
        distributions = _distributions_by_module().get(module, [])
        if not distributions:
            if module in sys.modules:
                local.add(module)
            continue
        for distribution in distributions:
            if _is_local_distribution(distribution):
                local.add(module)
            else:
                install[distribution] = importlib.metadata.version(distribution)
    return install, local


def ship_by_value(modules: Iterable[str]) -> None:
    """Make cloudpickle embed these (local, uninstallable) modules' code in payloads."""
    for name in modules:
        module = sys.modules.get(name)
        if module is not None and getattr(module, "__file__", None):
            cloudpickle.register_pickle_by_value(module)


def runner_requirement() -> str:
    return f"cloudpickle=={cloudpickle.__version__}"


def read_requirements_file(path: Path) -> list[str]:
    """Requirement lines of a requirements file; comments and blank lines dropped."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise ConfigError(
            f"environment={str(path)!r}: cannot read requirements file: {exc.strerror}",
            field="environment",
            value=str(path),
        ) from None
    return [
        line.split(" #")[0].strip()
        for line in lines
        if line.strip() and not line.lstrip().startswith("#")
    ]


def explicit_requirements(environment: str | list[str] | tuple[str, ...]) -> list[str]:
    """Requirements from a list, or from a requirements file named by a string."""
    if isinstance(environment, str):
        return read_requirements_file(Path(environment).expanduser())
    return list(environment)


def with_runner_requirement(requirements: Iterable[str]) -> tuple[str, ...]:
    requirements = list(requirements)
    if not any(r.replace(" ", "").lower().startswith("cloudpickle") for r in requirements):
        requirements.append(runner_requirement())
    return tuple(sorted(set(requirements)))


# --------------------------------------------------------------------------- the remote build


# Run by the new environment's Python with the client's cloudpickle version: the build
# counts only if jobs will be able to read their payloads, as the runner checks it.
_RUNNER_CHECK = """import sys
try:
    import cloudpickle
except ImportError:
    sys.exit("the environment has no cloudpickle, which jobs need to read their payloads")
wanted = sys.argv[1]
if cloudpickle.__version__.split(".")[:2] != wanted.split(".")[:2]:
    sys.exit(
        "the environment has cloudpickle %s but the client uses %s: jobs could not read "
        "their payloads; leave cloudpickle out of the requirements, or pin it to %s"
        % (cloudpickle.__version__, wanted, wanted)
    )"""


def check_requirements(requirements: Iterable[str]) -> None:
    """Refuse a requirement that is not one line of text, naming it, before anything runs.

    Requirements are written to a requirements file as data and read by pip or uv only; a
    line break would make one item several lines of that file.
    """
    for requirement in requirements:
        if not isinstance(requirement, str) or not requirement.strip():
            raise ConfigError(
                f"environment: requirement {requirement!r} is not valid: expected a non-empty "
                "string such as 'numpy==2.2.0'",
                field="environment",
                value=requirement,
            )
        problem = text_problem(requirement.replace("\t", " "))
        if problem:
            raise ConfigError(
                f"environment: requirement {requirement!r} is not valid: expected one line of "
                f"text without control characters (it contains {problem})",
                field="environment",
                value=requirement,
            )


def bootstrap_script(
    env_dir: str,
    requirements: tuple[str, ...],
    setup_lines: list[str],
    wheels: str | None = None,
) -> str:
    """Shell script that builds the venv at ``env_dir`` unless it is ready; prints BUILT/REUSED.

    It runs on the login node (which, unlike compute nodes, usually reaches a package index)
    or, with ``environment_build="job"``, as the body of a build job; either way under
    ``flock``, so that concurrent builds of one key wait for one build instead of racing. The
    requirements are quoted data for ``printf``, never shell code. With ``wheels`` (a folder
    of wheels shipped by the client) nothing is fetched from an index. The environment is
    marked ready only once every step succeeded and its Python imports the client's
    cloudpickle; a failed build is removed, so the next call builds it again.

    Exit codes: 0 (ready), 95 (could not mark it ready), 96 (the build failed; the end of its
    log on stderr), 97 (no Python of the client's version), 98 (timed out on the lock).
    """
    check_requirements(requirements)
    return "\n".join(
        [
            "set -u",
            *setup_lines,
            f"env_dir={shlex.quote(env_dir)}",
            *([f"wheels={shlex.quote(wheels)}"] if wheels else []),
            'log="$env_dir.log"',
            'mkdir -p -m 700 "$(dirname "$env_dir")"',
            'if [ -e "$env_dir/.clustrix-ready" ]; then echo REUSED; exit 0; fi',
            'exec 9>"$env_dir.lock"',
            "if ! flock -w 1800 9; then",
            '  echo "timed out waiting for $env_dir.lock" >&2; exit 98',
            "fi",
            'if [ -e "$env_dir/.clustrix-ready" ]; then echo REUSED; exit 0; fi',
            *find_python_lines(),
            'rm -rf "$env_dir"',
            *_build_lines(requirements, offline=wheels is not None),
            "status=$?",
            'if [ "$status" -ne 0 ]; then tail -n 40 "$log" >&2; rm -rf "$env_dir"; exit 96; fi',
            'if ! date -u +%FT%TZ > "$env_dir/.clustrix-ready"; then',
            '  echo "could not mark $env_dir ready" >&2; rm -rf "$env_dir"; exit 95',
            "fi",
            "echo BUILT",
        ]
    )


def find_python_lines() -> list[str]:
    """Shell lines setting ``$python`` to an interpreter of the client's minor version, or
    exiting with 97 and a message saying what to do."""
    wanted = shlex.quote(python_version())
    return [
        "python=",
        f"for candidate in python{python_version()} python3 python; do",
        '  if command -v "$candidate" >/dev/null 2>&1 && [ "$("$candidate" -c '
        '\'import sys; print("%d.%d" % sys.version_info[:2])\')" = ' + wanted + " ]; then",
        '    python=$(command -v "$candidate"); break',
        "  fi",
        "done",
        'if [ -z "$python" ]; then',
        f'  echo "no Python {python_version()} found on PATH (the client runs '
        f'{python_version()}); load one with module_loads or set python_executable" >&2',
        "  exit 97",
        "fi",
    ]


def _build_lines(requirements: tuple[str, ...], *, offline: bool) -> list[str]:
    """A subshell with ``set -e`` that builds the venv: the first step that fails ends it.

    ``offline``: install only from the shipped wheels in ``$wheels``, never from an index.
    """
    quoted_requirements = " ".join(shlex.quote(r) for r in requirements)
    source = ' --no-index --find-links "$wheels"' if offline else ""
    return [
        "(",
        "  set -e",
        # Where and how it was built, for whoever reads the log: a build job names itself.
        '  echo "building $env_dir with $python on $(hostname)'
        '${CLUSTRIX_BUILD_JOB:+ in job $CLUSTRIX_BUILD_JOB}"',
        f"  printf '%s\\n' {quoted_requirements} > \"$env_dir.requirements.txt\"",
        "  if command -v uv >/dev/null 2>&1; then",
        '    uv venv --python "$python" "$env_dir"',
        f'    uv pip install --python "$env_dir/bin/python"{source} -r "$env_dir.requirements.txt"',
        "  else",
        '    "$python" -m venv "$env_dir"',
        '    "$env_dir/bin/python" -m pip install --disable-pip-version-check -q'
        f'{source} -r "$env_dir.requirements.txt"',
        "  fi",
        f'  "$env_dir/bin/python" -c {shlex.quote(_RUNNER_CHECK)} '
        f"{shlex.quote(cloudpickle.__version__)}",
        ') > "$log" 2>&1',
    ]


def plan_environment(
    func: Callable[..., Any],
    environment: str | list[str] | tuple[str, ...] | None,
    *,
    python_executable: str | None,
    conda_env_name: str | None,
    payload_modules: Iterable[str],
    modules: set[str] | None = None,
) -> EnvironmentPlan:
    """Decide how the job gets its Python: an existing one, or a venv built from requirements.

    ``payload_modules`` are the modules the pickled payload names (``modules_named_in_pickle``);
    ``modules`` are those ``prepare_local_modules`` found, when it already ran.
    """
    if python_executable:
        return EnvironmentPlan((), None, python=python_executable)
    if conda_env_name:
        return EnvironmentPlan((), None, conda_env=conda_env_name)
    if environment in (None, "auto"):
        needed = set(modules) if modules is not None else modules_used_by(func)
        needed |= set(payload_modules)
        install, _ = classify_modules(needed)
        requirements: list[str] = [f"{name}=={version}" for name, version in install.items()]
    else:
        requirements = explicit_requirements(environment)
    check_requirements(requirements)
    pinned = with_runner_requirement(requirements)
    return EnvironmentPlan(pinned, environment_key(pinned))


def prepare_local_modules(func: Callable[..., Any], values: Iterable[Any]) -> set[str]:
    """Before pickling: make the user's own, uninstallable modules travel by value.

    Returns the modules the call uses, for ``plan_environment``.
    """
    modules = modules_used_by(func) | {m for m in map(_module_of, values) if m}
    _, local = classify_modules(modules)
    ship_by_value(local)
    return modules
