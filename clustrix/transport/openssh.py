"""The OpenSSH transport: the system ``ssh``, one master connection shared by every command.

Everything the user's own ``ssh`` does works here, because it is that ssh: ProxyCommand and
ProxyJump, Match blocks, Include, certificates, hardware keys, Kerberos, and logins that ask
for a second factor. The master (``ControlMaster``, kept by ``ControlPersist``) logs in once,
prompting on the terminal or through SSH_ASKPASS if the server asks; every command then runs
as a new session of that connection through its control socket, without logging in again.
When the master has ended, the next command opens a new one (asking again where needed).

Host keys are checked by ssh itself: ``StrictHostKeyChecking`` follows ``host_key_policy``
and ``UserKnownHostsFile`` is the configured file followed by the user's own.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator

from ..errors import AuthenticationError, BackendUnavailableError, ConnectionFailedError
from .base import CommandResult, OutputFrame
from .local import PipeStream
from .sshargs import (
    CONNECT_TIMEOUT,
    SSHOptions,
    command_argv,
    control_argv,
    control_folder,
    control_path,
    known_hosts_files,
    login_error,
    master_argv,
    parse_resolved,
    resolve_argv,
    said,
    user_ssh_config,
)

logger = logging.getLogger("clustrix.ssh")

#: Seconds a master may take to log in, prompts included: a person may be typing a code.
LOGIN_TIMEOUT = 300.0
#: Seconds for what ssh does locally (``-G``, ``-O check``, ``-O exit``).
LOCAL_TIMEOUT = 30.0
#: ssh's exit code when ssh itself failed (the remote command's own codes pass through).
SSH_FAILED = 255


class OpenSSHTransport:
    """Commands through one OpenSSH master connection, opened on first use and reopened
    when it has ended. Build it with ``openssh_transport`` (or ``shared_openssh_transport``).
    """

    def __init__(
        self, options: SSHOptions, *, program: str, socket: str, where: str, host: str, port: int
    ) -> None:
        self.options = options
        self.program = program
        self.socket = socket
        self.where = where
        self._host, self._port = host, port
        self._lock = threading.RLock()
        self._ready = False  # a master was opened (or found) since the last close()
        self._home: str | None = None

    def __repr__(self) -> str:
        return f"<OpenSSHTransport {self.where}>"

    # ------------------------------------------------------------------ the master

    def master_pid(self) -> int | None:
        """The process id of the running master, or None if there is none."""
        argv = control_argv(self.program, self.options, self.socket, "check")
        answer = _local(argv)
        found = re.search(r"pid=(\d+)", answer.stderr.decode(errors="replace"))
        return int(found.group(1)) if answer.returncode == 0 and found else None

    def _ensure_master(self, *, verify: bool = False) -> None:
        """Open the master unless one was opened before (and, with ``verify``, still runs)."""
        with self._lock:
            if self._ready and (not verify or self.master_pid() is not None):
                return
            with _socket_lock(self.socket):
                # Another process may share this socket (same settings): reuse its master.
                if self.master_pid() is None:
                    self._open_master()
            self._ready = True

    def _open_master(self) -> None:
        """Log in: ssh prompts on the terminal (or through SSH_ASKPASS) if the server asks.

        Raises ``HostKeyError``, ``AuthenticationError`` or ``ConnectionFailedError`` with
        ssh's own words.
        """
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.socket)  # a dead master's socket: ssh would not replace it
        argv = master_argv(self.program, self.options, self.socket)
        # stderr goes to a file, not a pipe: the master keeps running in the background, and
        # a pipe would only end when it does.
        with tempfile.TemporaryFile() as errors:
            try:
                code = subprocess.run(
                    argv,
                    stdin=_prompt_input(),
                    stdout=subprocess.DEVNULL,
                    stderr=errors,
                    timeout=LOGIN_TIMEOUT,
                    check=False,
                ).returncode
            except subprocess.TimeoutExpired:
                raise ConnectionFailedError(
                    f"cannot connect to {self.where}: no login within {LOGIN_TIMEOUT:g} s"
                ) from None
            errors.seek(0)
            stderr = errors.read().decode(errors="replace")
        if code != 0:
            raise login_error(
                stderr,
                where=self.where,
                host=self._host,
                port=self._port,
                known_hosts=self.options.known_hosts,
            )
        for line in stderr.splitlines():
            if "Permanently added" in line:  # accept-new recorded a host key
                logger.warning("%s: %s", self.where, line.strip())
        if self.master_pid() is None:
            raise ConnectionFailedError(
                f"ssh logged in to {self.where} but its control socket {self.socket} is "
                f"missing:\n{said(stderr)}"
            )
        logger.debug("connected to %s (master socket %s)", self.where, self.socket)

    def _reopen_if_ended(self, stderr: bytes) -> None:
        """After ssh failed before a command began: open a new master if the old one ended,
        else raise ``ConnectionFailedError`` with what ssh said."""
        with self._lock:
            if self.master_pid() is not None:
                raise ConnectionFailedError(f"cannot run commands on {self.where}: {said(stderr)}")
            logger.info("the connection to %s ended; reconnecting", self.where)
            self._ready = False
            self._ensure_master()

    def close(self) -> None:
        """End the master (``ssh -O exit``): its commands and streams end with it."""
        with self._lock:
            self._ready = False
            if os.path.exists(self.socket):
                _local(control_argv(self.program, self.options, self.socket, "exit"))

    # ------------------------------------------------------------------ operations

    def run(
        self,
        command: str,
        *,
        check: bool = True,
        timeout: float | None = None,
        stdin: bytes | None = None,
    ) -> CommandResult:
        """See ``Transport.run``. Raises ``TimeoutError`` after ``timeout`` seconds (the
        command is ended), ``ConnectionFailedError`` if the connection dropped meanwhile."""
        self._ensure_master()
        frame = OutputFrame()
        completed = self._execute(frame, command, stdin, timeout)
        if completed.returncode == SSH_FAILED and not frame.start(completed.stdout):
            # ssh failed before the command began, so it did not run: usually the master has
            # ended (idle for ControlPersist, the network dropped it). Retry once.
            self._reopen_if_ended(completed.stderr)
            completed = self._execute(frame, command, stdin, timeout)
            if completed.returncode == SSH_FAILED and not frame.start(completed.stdout):
                raise ConnectionFailedError(
                    f"cannot run commands on {self.where}: {said(completed.stderr)}"
                )
        elif completed.returncode == SSH_FAILED and self.master_pid() is None:
            raise self._dropped(command)
        result = CommandResult(
            command,
            completed.returncode,
            frame.strip(completed.stdout),
            frame.strip(completed.stderr).decode(errors="replace"),
        )
        return result.check(self.where) if check else result

    def _execute(
        self, frame: OutputFrame, command: str, stdin: bytes | None, timeout: float | None
    ) -> subprocess.CompletedProcess[bytes]:
        argv = command_argv(self.program, self.options, self.socket, frame.frame(command))
        try:
            # communicate() feeds stdin while it reads both outputs: no stall either way.
            return subprocess.run(
                argv,
                input=stdin if stdin else None,
                stdin=None if stdin else subprocess.DEVNULL,
                capture_output=True,
                timeout=timeout,
                check=False,
            )
        except subprocess.TimeoutExpired:
            # run() has killed our ssh; the master closes the session, ending the command.
            raise TimeoutError(f"the command did not finish within {timeout:g} s") from None

    def _dropped(self, command: str) -> ConnectionFailedError:
        shown = command.splitlines()[0][:120] if command.strip() else command
        return ConnectionFailedError(
            f"the connection to {self.where} dropped while running {shown!r}; it may or may "
            "not have run to the end (the next command reconnects)"
        )

    def open_stream(self, command: str) -> PipeStream:
        """``command`` as a session of the master, kept open (``Transport.open_stream``)."""
        self._ensure_master(verify=True)  # a stream lives long: start it on a live master
        frame = OutputFrame()
        framed = frame.frame(f"{{ {command}\n}} 2>/dev/null")
        argv = command_argv(self.program, self.options, self.socket, framed)
        return PipeStream(argv, frame, limit=CONNECT_TIMEOUT)

    def home(self) -> str:
        if self._home is None:
            self._home = self.run('printf %s "$HOME"').stdout.strip()
        return self._home


# --------------------------------------------------------------------------- building one


def openssh_transport(
    host: str,
    *,
    port: int | None = None,
    username: str | None = None,
    key_file: str | None = None,
    known_hosts_file: str | None = None,
    host_key_policy: str = "strict",
    config_file: str | None = None,
    program: str = "ssh",
) -> OpenSSHTransport:
    """An OpenSSH transport for ``host`` (a name or an alias of the ssh config).

    ``config_file`` is ssh's ``-F`` (default: ``user_ssh_config()``). Nothing connects yet:
    ssh only reads its configuration (``ssh -G``). Raises ``BackendUnavailableError`` without
    an ``ssh`` command (or on Windows, whose ssh has no control sockets),
    ``AuthenticationError`` for a missing key file, ``ConnectionFailedError`` if ssh cannot
    read its configuration, ``ConfigError`` for values ssh cannot be given.
    """
    found = shutil.which(program)
    if found is None or os.name == "nt":
        raise BackendUnavailableError(
            "ssh_client='openssh' needs OpenSSH's ssh command on PATH (on Linux or macOS); "
            "use ssh_client='paramiko' instead"
        )
    if key_file is not None:
        key_file = os.path.expanduser(key_file)
    options = SSHOptions(
        host,
        port,
        username,
        key_file,
        (),
        host_key_policy,
        user_ssh_config() if config_file is None else config_file,
    )
    resolved = _resolve(found, options)
    hostname, real_port = resolved.get("hostname", host), int(resolved.get("port", "22"))
    where = f"{resolved.get('user', username or '?')}@{hostname}:{real_port}"
    if key_file is not None and not os.path.isfile(key_file):
        raise AuthenticationError(f"key file {key_file} for {where} does not exist")
    known = known_hosts_files(known_hosts_file, resolved.get("userknownhostsfile", ""))
    options = SSHOptions(
        host, port, username, key_file, known, host_key_policy, options.config_file
    )
    socket = control_path(control_folder(), options)
    return OpenSSHTransport(
        options, program=found, socket=socket, where=where, host=hostname, port=real_port
    )


def _resolve(program: str, options: SSHOptions) -> dict[str, str]:
    answer = _local(resolve_argv(program, options))
    if answer.returncode != 0:
        raise ConnectionFailedError(
            f"ssh cannot read its configuration for {options.destination}: {said(answer.stderr)}"
        )
    return parse_resolved(answer.stdout.decode(errors="replace"))


def _prompt_input() -> int | None:
    """The master's stdin: the terminal where there is one (ssh asks a key's passphrase on
    it), else nothing, so that ssh never reads data meant for this process."""
    try:
        interactive = sys.stdin is not None and sys.stdin.isatty()
    except (ValueError, OSError):  # a closed or replaced stdin
        interactive = False
    return None if interactive else subprocess.DEVNULL


def _local(argv: list[str]) -> subprocess.CompletedProcess[bytes]:
    """Run an ssh that does not touch the network (``-G``, ``-O``)."""
    try:
        return subprocess.run(
            argv,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=LOCAL_TIMEOUT,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise ConnectionFailedError(f"ssh did not answer within {LOCAL_TIMEOUT:g} s") from None


@contextlib.contextmanager
def _socket_lock(socket: str) -> Iterator[None]:
    """Held while a master is checked and opened, so that two processes sharing the socket
    do not both open one (the second would remove the first one's socket)."""
    import fcntl  # Unix only, as control sockets are

    with open(f"{socket}.lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


_transports: dict[tuple[object, ...], OpenSSHTransport] = {}
_transports_lock = threading.Lock()


def shared_openssh_transport(
    host: str,
    *,
    port: int | None = None,
    username: str | None = None,
    key_file: str | None = None,
    known_hosts_file: str | None = None,
    host_key_policy: str = "strict",
) -> OpenSSHTransport:
    """The process-wide OpenSSH transport for these settings, created on first use."""
    config_file = user_ssh_config()
    key = (host, port, username, key_file, known_hosts_file, host_key_policy, config_file)
    with _transports_lock:
        transport = _transports.get(key)
        if transport is None:
            transport = openssh_transport(
                host,
                port=port,
                username=username,
                key_file=key_file,
                known_hosts_file=known_hosts_file,
                host_key_policy=host_key_policy,
                config_file=config_file,
            )
            _transports[key] = transport
        return transport


def close_all() -> None:
    """End the masters of every shared transport. They stay registered: one still in use
    (by a backend kept for later calls) opens a new master, which a later call ends."""
    with _transports_lock:
        transports = list(_transports.values())
    for transport in transports:
        transport.close()
