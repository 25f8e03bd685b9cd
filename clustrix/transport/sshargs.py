"""The command lines of the OpenSSH transport, built without running anything.

Every ``ssh`` the transport starts is described here: the master (the one network
connection, opened once and kept by ``ControlPersist``), the commands and streams that reuse
it through its control socket, and the control requests (``-O check``, ``-O exit``). Where
the socket lives and which ``~/.ssh/config`` ssh reads are decided here too, so that the
unit tests can check all of it without a server.
"""

from __future__ import annotations

import hashlib
import os
import re
import shlex
import stat
import tempfile
from dataclasses import dataclass
from pathlib import Path

from ..errors import AuthenticationError, ConfigError, ConnectionFailedError, HostKeyError

#: How ``host_key_policy`` is said to ssh (``StrictHostKeyChecking``). Both refuse a key that
#: differs from a recorded one; ``accept-new`` records a host seen for the first time.
STRICT_HOST_KEY_CHECKING = {"strict": "yes", "accept-new": "accept-new"}
#: Seconds ssh waits for the server to answer (``ConnectTimeout``), as the paramiko transport.
CONNECT_TIMEOUT = 20
#: How long an unused master stays up after the last command ended. Long enough that a
#: session with a few idle minutes between calls is not asked for a second factor again,
#: short enough that the master of a process that died does not linger for hours.
CONTROL_PERSIST = "30m"
#: The longest socket folder: unix socket paths hold at most 104 bytes on macOS (108 on
#: Linux), and ssh binds the master's socket under a temporary name 17 bytes longer than
#: the path it is then renamed to (a 16-letter name here).
MAX_FOLDER_LENGTH = 104 - 1 - 16 - 17 - 1


@dataclass(frozen=True)
class SSHOptions:
    """Where and how ssh connects: the settings, as plain values.

    ``destination`` is ``cluster_host`` as written (a name, an address or a Host alias of the
    ssh config); ``port``, ``username`` and ``key_file`` are given only when set, so the ssh
    config fills the rest. ``known_hosts`` are the files of ``UserKnownHostsFile``, the first
    being the one ``accept-new`` writes to. ``config_file`` is ssh's ``-F`` (None: ssh's own
    choice). Raises ``ConfigError`` for values ssh would read as something else.
    """

    destination: str
    port: int | None = None
    username: str | None = None
    key_file: str | None = None
    known_hosts: tuple[str, ...] = ()
    host_key_policy: str = "strict"
    config_file: str | None = None

    def __post_init__(self) -> None:
        # A leading "-" would make the name an option; ssh has no quoting for -l or the host.
        for name, value in (("cluster_host", self.destination), ("username", self.username)):
            if value is not None and (not value or value.startswith("-") or _blank(value)):
                raise ConfigError(
                    f"{name} {value!r} cannot be passed to ssh", field=name, value=value
                )
        if self.host_key_policy not in STRICT_HOST_KEY_CHECKING:
            raise ConfigError(
                f"host_key_policy {self.host_key_policy!r} is not one of "
                f"{', '.join(STRICT_HOST_KEY_CHECKING)}",
                field="host_key_policy",
                value=self.host_key_policy,
            )

    def identity(self) -> str:
        """What tells one master from another: every option that changes the connection."""
        parts = (
            self.config_file or "",
            self.destination,
            str(self.port or ""),
            self.username or "",
            self.key_file or "",
            *self.known_hosts,
            self.host_key_policy,
        )
        return "\0".join(parts)


def common_args(options: SSHOptions, control_path: str | None) -> list[str]:
    """The options of every ssh the transport runs (before the destination)."""
    args = []
    if options.config_file is not None:
        args += ["-F", options.config_file]
    if control_path is not None:
        args += ["-S", _tokens_escaped(control_path)]
    if options.port is not None:
        args += ["-p", str(options.port)]
    if options.username is not None:
        args += ["-l", options.username]
    if options.key_file is not None:
        # Only this key (and the agent's copy of it): a long list of agent keys could use up
        # the server's MaxAuthTries before this one is offered.
        # -o, not -i: ssh checks -i's file before expanding its % tokens, so "%%" would fail.
        key = _config_word(_tokens_escaped(options.key_file))
        args += ["-o", f"IdentityFile={key}", "-o", "IdentitiesOnly=yes"]
    if options.known_hosts:
        files = " ".join(_config_word(_tokens_escaped(path)) for path in options.known_hosts)
        args += ["-o", f"UserKnownHostsFile={files}"]
    policy = STRICT_HOST_KEY_CHECKING[options.host_key_policy]
    args += ["-o", f"StrictHostKeyChecking={policy}"]
    # A RemoteCommand of the user's config would clash with ours (or with -N).
    args += ["-o", "RemoteCommand=none", "-x"]
    return args


def master_argv(program: str, options: SSHOptions, control_path: str) -> list[str]:
    """Open the master: authenticate (prompting if the server asks), then go to the background.

    ``-f`` returns once the login succeeded, so the exit code says whether it did, and any
    prompt (a second factor) is answered before it, on the terminal or through SSH_ASKPASS.
    """
    return [
        program,
        *common_args(options, control_path),
        "-M",
        "-N",
        "-f",
        "-T",
        "-o",
        f"ControlPersist={CONTROL_PERSIST}",
        "-o",
        f"ConnectTimeout={CONNECT_TIMEOUT}",
        # Dropped connections are noticed (and the next command reconnects) within 90 s.
        "-o",
        "ServerAliveInterval=30",
        "-o",
        "ServerAliveCountMax=3",
        # Forwardings of the user's config are not needed and could fail on busy ports.
        "-o",
        "ClearAllForwardings=yes",
        "--",
        options.destination,
    ]


def command_argv(program: str, options: SSHOptions, control_path: str, command: str) -> list[str]:
    """Run ``command`` (one string, already quoted by the caller) through the master.

    Such an ssh never connects by itself: without a master, ssh would fall back to a
    connection of its own, so its ProxyCommand is ``false`` and it fails at once (exit 255)
    instead; BatchMode forbids prompts. No terminal and no escape character: the output stays
    binary-exact.
    """
    return [
        program,
        *common_args(options, control_path),
        "-o",
        "ControlMaster=no",
        "-o",
        "ProxyCommand=false",
        "-o",
        "BatchMode=yes",
        "-o",
        "PermitLocalCommand=no",
        "-o",
        "LogLevel=ERROR",
        "-T",
        "-e",
        "none",
        "--",
        options.destination,
        command,
    ]


def control_argv(program: str, options: SSHOptions, control_path: str, operation: str) -> list[str]:
    """Ask the master something: ``check`` (is it running) or ``exit`` (end it)."""
    return [
        program,
        *common_args(options, control_path),
        "-O",
        operation,
        "--",
        options.destination,
    ]


def resolve_argv(program: str, options: SSHOptions) -> list[str]:
    """Print the configuration ssh would use (``ssh -G``): host name, port, user, files.

    Without our ``UserKnownHostsFile``, so that it shows the user's own.
    """
    plain = SSHOptions(
        options.destination,
        options.port,
        options.username,
        options.key_file,
        (),
        options.host_key_policy,
        options.config_file,
    )
    return [program, *common_args(plain, None), "-G", "--", options.destination]


def parse_resolved(text: str) -> dict[str, str]:
    """``ssh -G``'s lines as a mapping (lowercase names; the first value of a repeated one)."""
    values: dict[str, str] = {}
    for line in text.splitlines():
        name, _, value = line.strip().partition(" ")
        if name:
            values.setdefault(name.lower(), value.strip())
    return values


def known_hosts_files(configured: str | None, users_own: str) -> tuple[str, ...]:
    """``UserKnownHostsFile``: the configured file (written to by accept-new), then the
    user's own ones as ssh would read them (``users_own``: ``ssh -G``'s value)."""
    default = os.path.expanduser("~/.ssh/known_hosts")
    first = os.path.expanduser(configured) if configured else default
    files = [first]
    for path in users_own.split():
        if path not in files:
            files.append(path)
    return tuple(files)


# --------------------------------------------------------------------------- places


def user_ssh_config() -> str | None:
    """The ``-F`` ssh gets, so that it reads the ``~/.ssh/config`` Clustrix reads.

    Clustrix's ``~`` is ``$HOME``; ssh's is the account's home from the password database.
    They are the same almost always, and ssh then reads its files as usual (None). When
    ``$HOME`` points elsewhere (a container, a test), ssh is given ``$HOME/.ssh/config``, or
    no file at all when there is none there (``-F`` also leaves out /etc/ssh/ssh_config).
    """
    import pwd  # Unix only, as ssh's control sockets are

    home = Path(os.path.expanduser("~"))
    try:
        account: Path | None = Path(pwd.getpwuid(os.getuid()).pw_dir)
    except KeyError:  # a uid without an account (containers): only $HOME is known
        account = None
    if account is not None and _same_place(home, account):
        return None
    config = home / ".ssh" / "config"
    return str(config) if config.is_file() else os.devnull


def control_folder() -> Path:
    """A private folder (0700) for control sockets, with a path short enough for them.

    In order: ``$XDG_RUNTIME_DIR/clustrix-ssh``, ``~/.clustrix/ssh``, then
    ``<tmp>/clustrix-ssh-<uid>`` when the others are missing or too long. Raises
    ``ConnectionFailedError`` if none is both short enough and owned by this user alone.
    """
    candidates = []
    if os.environ.get("XDG_RUNTIME_DIR"):
        candidates.append(Path(os.environ["XDG_RUNTIME_DIR"]) / "clustrix-ssh")
    candidates.append(Path(os.path.expanduser("~/.clustrix/ssh")))
    candidates.append(Path(tempfile.gettempdir()) / f"clustrix-ssh-{os.getuid()}")
    problems = []
    for folder in candidates:
        if len(str(folder)) > MAX_FOLDER_LENGTH:
            problems.append(f"{folder} is too long for a socket path")
            continue
        problem = _private_folder(folder)
        if problem is None:
            return folder
        problems.append(problem)
    raise ConnectionFailedError("no folder for ssh's control socket: " + "; ".join(problems))


def control_path(folder: Path, options: SSHOptions) -> str:
    """The master's socket: one per set of options, named by their hash (a short path)."""
    digest = hashlib.sha256(options.identity().encode()).hexdigest()[:16]
    return str(folder / digest)


def _private_folder(folder: Path) -> str | None:
    """Create ``folder`` (0700) if needed; why it cannot hold our sockets, or None."""
    try:
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        info = folder.lstat()
    except OSError as exc:
        return f"cannot create {folder}: {exc}"
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid():
        return f"{folder} is not a folder of this user"
    if stat.S_IMODE(info.st_mode) & 0o077:
        try:
            os.chmod(folder, 0o700)  # ours: others must not reach a master through it
        except OSError as exc:
            return f"cannot make {folder} private: {exc}"
    return None


def _same_place(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve()
    except OSError:
        return a == b


def _blank(value: str) -> bool:
    return any(c.isspace() or ord(c) < 32 for c in value)


def _tokens_escaped(path: str) -> str:
    """``path`` for options where ssh expands ``%`` tokens (-S, IdentityFile, known hosts)."""
    return path.replace("%", "%%")


def _config_word(word: str) -> str:
    """One word of a multi-word ssh option value (double quotes keep spaces in it)."""
    if '"' in word or any(ord(c) < 32 for c in word):
        raise ConfigError(f"the path {word!r} cannot be given to ssh", field=None, value=word)
    return f'"{word}"' if any(c.isspace() for c in word) else word


# --------------------------------------------------------------------------- ssh's messages


def said(stderr: bytes | str, lines: int = 12) -> str:
    """What ssh said, for a message: its last lines, without the banners' rows of ``@``."""
    text = stderr.decode(errors="replace") if isinstance(stderr, bytes) else stderr
    kept = [line.rstrip() for line in text.splitlines() if line.strip() and "@@@@" not in line]
    return "\n".join(kept[-lines:]) or "(no message)"


def login_error(
    stderr: str, *, where: str, host: str, port: int, known_hosts: tuple[str, ...]
) -> Exception:
    """The Clustrix exception for a master that could not log in, with ssh's own words.

    ``HostKeyError`` (a changed key names the file and line to fix, an unknown one the ways to
    trust it), ``AuthenticationError``, or ``ConnectionFailedError`` for everything else
    (refused, unresolvable, timed out, a broken ProxyCommand).
    """
    message = said(stderr)
    fingerprint = next(iter(re.findall(r"SHA256:[A-Za-z0-9+/=]+", stderr)), "")
    fingerprint = fingerprint.rstrip(".")
    offending = re.search(r"Offending (\S+) key in (.+):(\d+)", stderr)
    name = f"[{host}]:{port}" if port != 22 else host
    if "IDENTIFICATION HAS CHANGED" in stderr or "has changed and you have requested" in stderr:
        place = f" at {offending.group(2)}:{offending.group(3)}" if offending else ""
        remove = f" (ssh-keygen -R '{name}' -f {offending.group(2)})" if offending else ""
        return HostKeyError(
            f"the host key of {name} does NOT match the one{place}: got {fingerprint or 'another'}"
            ". This may be a man-in-the-middle attack, or the host was reinstalled; check with "
            f"its administrators before removing the old entry{remove}.\nssh said:\n{message}",
            host=host,
            fingerprint=fingerprint,
        )
    if "host key is known for" in stderr:
        return HostKeyError(
            f"the host key of {name} is not in {' or '.join(known_hosts)}. Check its "
            f"fingerprint, then trust it with `clustrix trust-host {shlex.quote(host)} --port "
            f"{port} --known-hosts {shlex.quote(known_hosts[0])}` (or by connecting once with "
            f"your own ssh), or set host_key_policy='accept-new'.\nssh said:\n{message}",
            host=host,
            fingerprint=fingerprint,
        )
    if "Host key verification failed" in stderr or "REVOKED HOST KEY" in stderr:
        return HostKeyError(
            f"the host key of {name} was refused.\nssh said:\n{message}",
            host=host,
            fingerprint=fingerprint,
        )
    if "Permission denied" in stderr or "Too many authentication failures" in stderr:
        return AuthenticationError(
            f"authentication failed for {where}; check username and key_file, your agent, or "
            f"answer the login prompts (a terminal or SSH_ASKPASS).\nssh said:\n{message}"
        )
    return ConnectionFailedError(f"cannot connect to {where}:\n{message}")
