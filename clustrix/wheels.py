"""Wheels for a cluster without internet access (``package_source="client"``).

The client asks the cluster, in one round trip, what it runs on (machine, C library, Python),
downloads wheels of the requirements for exactly that platform with its own pip, and ships
them with the environment build, which then installs with ``--no-index``. Downloads are kept
under ``~/.clustrix/wheels/<platform>/``, which is also searched first: a wheel put there by
hand (built for the cluster's platform) is used like a downloaded one.
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from .environment import check_requirements, find_python_lines, python_version
from .errors import EnvironmentSetupError, tail_lines

#: Where downloaded wheels are kept, one folder per platform.
DEFAULT_CACHE = "~/.clustrix/wheels"

_PROBE_WORD = "PLATFORM"
# Printed by the cluster's Python: machine, C library and its version, implementation, X.Y.
_PROBE_CODE = (
    "import platform, sys; print("
    f"{_PROBE_WORD!r}, platform.machine(), *platform.libc_ver(), sys.implementation.name, "
    "'%d.%d' % sys.version_info[:2], sep='|')"
)
# The oldest glibc each architecture had manylinux wheels for, minus one (as PEP 600 and
# `packaging` count): manylinux1 is glibc 2.5 on x86; the others start at manylinux2014.
_OLDEST_GLIBC_MINOR = {"x86_64": 5, "i686": 5}
_LEGACY_MANYLINUX = {17: "manylinux2014", 12: "manylinux2010", 5: "manylinux1"}
_NO_DISTRIBUTION = re.compile(r"No matching distribution found for (.+?)\s*$", re.MULTILINE)


@dataclass(frozen=True)
class RemotePlatform:
    """What the cluster's Python runs on, as its probe reported it."""

    machine: str  # uname -m: x86_64, aarch64, ...
    libc: str  # "glibc", or "" when Python could not tell (musl, say)
    libc_version: str  # "2.36"
    implementation: str  # "cpython"
    python: str  # "3.11"

    @property
    def name(self) -> str:
        """A folder name for this platform's wheels: ``cp311-manylinux_2_36_x86_64``."""
        return (
            f"{_implementation_tag(self.implementation)}{self.python.replace('.', '')}-"
            + (self.platform_tags()[0])
        )

    def platform_tags(self) -> list[str]:
        """The manylinux tags this platform runs, newest first (PEP 600 and its aliases).

        Raises EnvironmentSetupError for a platform without manylinux wheels (no glibc).
        ``linux_<machine>`` is left out on purpose: such wheels were built for one machine.
        """
        if self.libc != "glibc" or not re.fullmatch(r"2\.\d+", self.libc_version):
            raise EnvironmentSetupError(
                f"package_source='client' needs a Linux cluster with glibc, to know which "
                f"wheels it runs; its Python reports machine {self.machine!r} and C library "
                f"{(self.libc + ' ' + self.libc_version).strip() or 'unknown'}: use "
                "package_source='index'",
                state="ENVIRONMENT",
            )
        newest = int(self.libc_version.split(".")[1])
        oldest = _OLDEST_GLIBC_MINOR.get(self.machine, 17)
        tags = []
        for minor in range(newest, oldest - 1, -1):
            tags.append(f"manylinux_2_{minor}_{self.machine}")
            if minor in _LEGACY_MANYLINUX and (minor == 17 or self.machine in ("x86_64", "i686")):
                tags.append(f"{_LEGACY_MANYLINUX[minor]}_{self.machine}")
        return tags


def _implementation_tag(name: str) -> str:
    return {"cpython": "cp", "pypy": "pp"}.get(name, name)


def probe_script(env_dir: str, setup_lines: list[str]) -> str:
    """Shell script printing ``READY`` if the environment exists, else the platform line
    ``PLATFORM|machine|libc|version|implementation|X.Y`` of the Python a build would use
    (found as the build finds it, after the same setup lines; exits 97 if there is none)."""
    return "\n".join(
        [
            "set -u",
            *setup_lines,
            f"env_dir={shlex.quote(env_dir)}",
            'if [ -e "$env_dir/.clustrix-ready" ]; then echo READY; exit 0; fi',
            *find_python_lines(),
            f'"$python" -c {shlex.quote(_PROBE_CODE)}',
        ]
    )


def parse_probe(output: str) -> RemotePlatform | None:
    """None when the environment is ready; else the platform. Lines the setup commands
    printed are skipped. Raises EnvironmentSetupError when the answer holds neither."""
    for line in reversed(output.strip().splitlines()):
        line = line.strip()
        if line == "READY":
            return None
        fields = line.split("|")
        if fields[0] == _PROBE_WORD and len(fields) == 6:
            return RemotePlatform(*fields[1:])
    raise EnvironmentSetupError(
        "could not tell the cluster's platform, to download wheels for it: its Python "
        f"printed {tail_lines(output, 3)!r}",
        state="ENVIRONMENT",
    )


def pip_download_command(
    platform: RemotePlatform, requirements_file: Path, dest: Path, find_links: Path
) -> list[str]:
    """The client's ``pip download`` of wheels only, for ``platform``'s tags and Python.

    ``find_links`` (the cache) is searched besides the index, so cached wheels are reused.
    """
    command = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--disable-pip-version-check",
        "--only-binary=:all:",
        "--implementation",
        _implementation_tag(platform.implementation),
        "--python-version",
        platform.python,
    ]
    for tag in platform.platform_tags():
        command += ["--platform", tag]
    command += ["--find-links", str(find_links), "--dest", str(dest)]
    return [*command, "-r", str(requirements_file)]


def download_wheels(
    requirements: Iterable[str],
    platform: RemotePlatform,
    key: str,
    cache_root: str = DEFAULT_CACHE,
) -> dict[str, bytes]:
    """The wheels that install ``requirements`` on ``platform``: ``{file name: content}``.

    The set found for an environment ``key`` is remembered in the cache
    (``<platform>/sets/<key>``): a later build of it reads the files without running pip.
    Raises EnvironmentSetupError naming a requirement that has no wheel for the platform,
    or with pip's output when pip fails otherwise.
    """
    requirements = sorted(set(requirements))
    check_requirements(requirements)
    if platform.python != python_version():
        raise EnvironmentSetupError(
            f"the cluster's Python is {platform.python}, the client's {python_version()}",
            state="ENVIRONMENT",
        )
    cache = Path(cache_root).expanduser() / platform.name
    listed = cache / "sets" / key
    if listed.is_file():
        names = listed.read_text(encoding="utf-8").split()
        if names and all((cache / name).is_file() for name in names):
            return {name: (cache / name).read_bytes() for name in names}
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="clustrix-wheels-") as folder:
        dest = Path(folder) / "wheels"
        requirements_file = Path(folder) / "requirements.txt"
        requirements_file.write_text("\n".join(requirements) + "\n", encoding="utf-8")
        command = pip_download_command(platform, requirements_file, dest, cache)
        result = subprocess.run(command, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise download_error(result.stdout + result.stderr, result.returncode, platform, cache)
        wheels = {path.name: path.read_bytes() for path in sorted(dest.glob("*.whl"))}
        for path in dest.glob("*.whl"):
            if not (cache / path.name).exists():
                shutil.copyfile(path, cache / path.name)
    listed.parent.mkdir(exist_ok=True)
    listed.write_text("\n".join(wheels) + "\n", encoding="utf-8")
    return wheels


def download_error(
    output: str, exit_code: int, platform: RemotePlatform, cache: Path
) -> EnvironmentSetupError:
    """What a failed ``pip download`` means: which requirement has no wheel, and what to do."""
    missing = _NO_DISTRIBUTION.findall(output)
    where = f"{platform.platform_tags()[0]}, Python {platform.python}"
    if missing:
        message = (
            f"no wheel of {', '.join(missing)} for the cluster's platform ({where}) could be "
            "downloaded (package_source='client' ships wheels only, as nothing can be built "
            f"without an index): build a wheel of it for that platform and put it in {cache}, "
            "where the download looks first, or use package_source='index' if the cluster "
            "reaches a package index"
        )
    else:
        message = f"pip download of wheels for the cluster's platform ({where}) failed"
    return EnvironmentSetupError(
        message,
        state="ENVIRONMENT",
        exit_code=exit_code,
        stderr_tail=tail_lines(output, 20),
    )


def wheel_files(wheels: dict[str, bytes], folder: str) -> dict[str, tuple[bytes, int]]:
    """``wheels`` as files of a staged folder (``{path: (content, mode)}``) under ``folder``."""
    return {f"{folder}/{name}": (content, 0o600) for name, content in wheels.items()}


# What pip says when it cannot reach an index, or the index lacks a release.
_INDEX_TROUBLE = re.compile(
    r"No matching distribution found|NewConnectionError|Connection refused|"
    r"Network is unreachable|Temporary failure in name resolution|Failed to connect"
)


def index_hint(log: str, package_source: str) -> str:
    """A sentence for a failed build whose log shows pip missing an index ("" otherwise)."""
    if package_source != "index" or not _INDEX_TROUBLE.search(log):
        return ""
    return (
        "; pip could not get a requirement from a package index: if the cluster cannot "
        "reach one, package_source='client' downloads wheels here and ships them"
    )
