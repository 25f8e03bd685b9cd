"""The SSH transport: one verified, shared connection per (host, port, user).

Every submission, status poll and file transfer for a cluster goes through the same
connection, which is what makes a round trip cost milliseconds instead of a new handshake.
Host keys are checked against known_hosts (see ``hostkeys``); what a server asks beyond the
key at login (a one-time code) is answered as ``login`` explains.
"""

from __future__ import annotations

import contextlib
import getpass
import logging
import os
import select
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paramiko

from ..errors import AuthenticationError, ConnectionFailedError, HostKeyError
from .base import CommandResult, OutputFrame, skip_shell_output
from .hostkeys import (
    CONNECT_TIMEOUT,
    HostKeyCheck,
    append_known_host,
    default_known_hosts,
    fetch_host_key,
    fingerprint,
    known_hosts_name,
)
from .login import InteractiveLogin, LoginTransport, PromptHandler

# append_known_host, fetch_host_key, fingerprint and known_hosts_name are re-exported:
# ``clustrix trust-host`` imports them from here.
__all__ = [
    "SSHTarget",
    "SSHTransport",
    "append_known_host",
    "close_all",
    "fetch_host_key",
    "fingerprint",
    "known_hosts_name",
    "resolve_target",
    "shared_transport",
]

logger = logging.getLogger("clustrix.ssh")


@dataclass(frozen=True)
class SSHTarget:
    """Where to connect, after ``~/.ssh/config`` has been applied to the configured names."""

    alias: str
    hostname: str
    port: int
    username: str
    key_files: tuple[str, ...]
    proxy_jump: str | None

    @property
    def where(self) -> str:
        return f"{self.username}@{self.hostname}:{self.port}"


def resolve_target(
    host: str,
    port: int | None = None,
    username: str | None = None,
    key_file: str | None = None,
    ssh_config_path: Path | None = None,
) -> SSHTarget:
    """Apply ``~/.ssh/config`` (Host aliases, HostName, User, Port, IdentityFile, ProxyJump).

    Explicit settings win over the ssh config file, as they do for ``ssh -p`` and ``-l``.
    """
    path = ssh_config_path or Path(os.path.expanduser("~/.ssh/config"))
    entry: dict[str, Any] = {}
    if path.is_file():
        entry = paramiko.SSHConfig.from_path(str(path)).lookup(host)
    key_files = [key_file] if key_file else list(entry.get("identityfile", []))
    return SSHTarget(
        alias=host,
        hostname=entry.get("hostname", host),
        port=int(port if port is not None else entry.get("port", 22)),
        username=username or entry.get("user") or getpass.getuser(),
        key_files=tuple(os.path.expanduser(k) for k in key_files),
        proxy_jump=entry.get("proxyjump"),
    )


class SSHTransport:
    """Commands over one paramiko connection, reconnecting if it drops."""

    def __init__(
        self,
        target: SSHTarget,
        *,
        password: str | None = None,
        host_key_policy: str = "strict",
        known_hosts: Path | None = None,
        jump: SSHTransport | None = None,
        prompt: PromptHandler | None = None,
    ) -> None:
        """``prompt`` answers the server's login questions (see ``login``) for this
        connection, before ``clustrix.set_login_prompt``'s handler and the terminal."""
        self.target = target
        self.where = target.where
        self._password = password
        self._policy = host_key_policy
        self._known_hosts = known_hosts or default_known_hosts()
        self._jump = jump
        self._prompt = prompt
        self._lock = threading.RLock()
        self._client: paramiko.SSHClient | None = None
        self._home: str | None = None

    def __repr__(self) -> str:
        return f"<SSHTransport {self.where}>"

    # ------------------------------------------------------------------ connection

    def _connected_client(self) -> paramiko.SSHClient:
        with self._lock:
            transport = self._client.get_transport() if self._client else None
            if transport is None or not transport.is_active():
                self._reset()
                self._client = self._connect()
            return self._client

    def _reset(self) -> None:
        if self._client is not None:
            self._client.close()
        self._client = None

    def _connect(self) -> paramiko.SSHClient:
        """A new, authenticated connection; ``HostKeyError``, ``AuthenticationError`` or
        ``ConnectionFailedError`` if there is none."""
        target = self.target
        client = paramiko.SSHClient()
        # No keys are loaded into paramiko: HostKeyCheck sees every server key, with the
        # file and line of the known key it is compared with.
        check = HostKeyCheck(self._policy, self._known_hosts, target.hostname, target.port)
        client.set_missing_host_key_policy(check)
        login = InteractiveLogin(self.where, self._prompt)

        def login_transport(sock: Any, **kwargs: Any) -> paramiko.Transport:
            transport = LoginTransport(sock, **kwargs)
            transport.login = login
            options = transport.get_security_options()
            options.key_types = check.preferred_key_types(list(options.key_types))
            return transport

        sock = self._jump_channel()
        missing = [k for k in target.key_files if not os.path.isfile(k)]
        if missing:
            raise AuthenticationError(f"key file {missing[0]} for {self.where} does not exist")
        try:
            client.connect(
                target.hostname,
                port=target.port,
                username=target.username,
                key_filename=list(target.key_files) or None,
                password=self._password,
                look_for_keys=not target.key_files,
                allow_agent=True,
                timeout=CONNECT_TIMEOUT,
                banner_timeout=CONNECT_TIMEOUT,
                auth_timeout=CONNECT_TIMEOUT,
                sock=sock,
                transport_factory=login_transport,
            )
        except (HostKeyError, AuthenticationError):
            client.close()
            raise
        except paramiko.AuthenticationException:
            client.close()
            return self._after_refusal(login)
        except (OSError, paramiko.SSHException) as exc:
            client.close()
            raise ConnectionFailedError(f"cannot connect to {self.where}: {exc}") from None
        transport = client.get_transport()
        assert transport is not None
        transport.set_keepalive(30)
        logger.debug("connected to %s", self.where)
        return client

    def _jump_channel(self) -> paramiko.Channel | None:
        """A channel to the target through the ProxyJump host, or None without one."""
        if self._jump is None:
            return None
        jump_transport = self._jump._connected_client().get_transport()
        assert jump_transport is not None
        target = self.target
        return jump_transport.open_channel(
            "direct-tcpip", (target.hostname, target.port), ("127.0.0.1", 0)
        )

    def _after_refusal(self, login: InteractiveLogin) -> paramiko.SSHClient:
        """Ask for a password and connect again, or raise ``AuthenticationError``."""
        if login.prompt_texts:
            asked = "; ".join(repr(text) for text in login.prompt_texts)
            raise AuthenticationError(
                f"{self.where} accepted the key but refused the answers to its login prompts "
                f"({asked}): a one-time code may be mistyped, expired or used already. The "
                "next connection asks again"
            ) from None
        if self._password is None and sys.stdin is not None and sys.stdin.isatty():
            self._password = getpass.getpass(f"Password for {self.where}: ")
            return self._connect()
        offered = ", ".join(self.target.key_files) or "the SSH agent and default keys"
        raise AuthenticationError(
            f"authentication failed for {self.where} (offered: {offered}"
            f"{', a password' if self._password else ''}); check username and key_file"
        ) from None

    def close(self) -> None:
        with self._lock:
            self._reset()

    # ------------------------------------------------------------------ operations

    def run(
        self,
        command: str,
        *,
        check: bool = True,
        timeout: float | None = None,
        stdin: bytes | None = None,
    ) -> CommandResult:
        client = self._connected_client()
        try:
            channel = _open_session(client)
        except (paramiko.SSHException, EOFError, OSError):
            # A connection that died since its last use: the command has not run, retry once.
            self._discard(client)
            try:
                channel = _open_session(self._connected_client())
            except (paramiko.SSHException, EOFError, OSError) as exc:
                raise ConnectionFailedError(f"cannot run commands on {self.where}: {exc}") from None
        try:
            exit_code, stdout, stderr = _execute(channel, command, stdin, timeout)
        except TimeoutError:
            raise
        except (paramiko.SSHException, EOFError, OSError) as exc:
            raise self._dropped(command) from exc
        if exit_code == -1 and not _is_active(channel):
            # A closed channel without an exit status: the output may be cut short.
            raise self._dropped(command)
        result = CommandResult(command, exit_code, stdout, stderr)
        return result.check(self.where) if check else result

    def _dropped(self, command: str) -> ConnectionFailedError:
        shown = command.splitlines()[0][:120] if command.strip() else command
        return ConnectionFailedError(
            f"the connection to {self.where} dropped while running {shown!r}; it may or may "
            "not have run to the end (the next command reconnects)"
        )

    def _discard(self, client: paramiko.SSHClient) -> None:
        """Drop a broken connection, unless another thread has already replaced it."""
        with self._lock:
            if self._client is client:
                self._reset()

    def open_stream(self, command: str) -> SSHStream:
        """``command`` on a channel of its own, kept open (see ``Transport.open_stream``)."""
        try:
            channel = _open_session(self._connected_client())
        except (paramiko.SSHException, EOFError, OSError) as exc:
            raise ConnectionFailedError(f"cannot run commands on {self.where}: {exc}") from None
        return SSHStream(channel, command)

    def home(self) -> str:
        if self._home is None:
            self._home = self.run('printf %s "$HOME"').stdout.strip()
        return self._home


class SSHStream:
    """A command kept running on an SSH channel; its stderr is dropped as it arrives."""

    def __init__(self, channel: paramiko.Channel, command: str) -> None:
        frame = OutputFrame()
        self.channel = channel
        self._lock = threading.Lock()
        channel.exec_command(frame.frame(f"{{ {command}\n}} 2>/dev/null"))
        self._pending = skip_shell_output(frame, channel.recv, limit=CONNECT_TIMEOUT)

    def send(self, data: bytes) -> None:
        with self._lock:
            view = memoryview(data).cast("B")
            offset = 0
            while offset < len(view):
                sent = self.channel.send(view[offset : offset + _SEND_CHUNK])
                if sent <= 0:
                    raise ConnectionError("the command closed its input")
                offset += sent

    def recv(self, size: int) -> bytes:
        if self._pending:
            data, self._pending = self._pending[:size], self._pending[size:]
            return data
        while self.channel.recv_stderr_ready():  # the shell's words, before the command's
            self.channel.recv_stderr(65536)
        return self.channel.recv(size)

    def close(self) -> None:
        with contextlib.suppress(OSError, EOFError, paramiko.SSHException):
            self.channel.shutdown_write()
        self.channel.close()


def _is_active(channel: paramiko.Channel) -> bool:
    return channel.get_transport().is_active()


def _execute(
    channel: paramiko.Channel, command: str, stdin: bytes | None, timeout: float | None
) -> tuple[int, bytes, str]:
    """Exit code, stdout and stderr of ``command`` on a fresh session channel.

    The login shell may print before it runs the command (``~/.bashrc``, a site notice):
    the command is framed, and only what follows its markers is returned.
    """
    frame = OutputFrame()
    with channel:
        if not stdin:
            # The remote shell, not an end-of-file from here, closes the command's input.
            # Paramiko sends a channel's EOF outside its lock, so an EOF sent while a quick
            # command ends can follow the channel's close, and OpenSSH answers that protocol
            # error by dropping the whole shared connection.
            channel.exec_command(frame.frame(f"{{ {command}\n}} </dev/null"))
            stdout, stderr = _drain(channel, timeout)
        else:
            channel.exec_command(frame.frame(command))
            # Feed stdin from another thread: a command that writes while it reads (tar, cat)
            # would otherwise stall once both directions' windows are full.
            feeder = threading.Thread(target=_feed, args=(channel, stdin), daemon=True)
            feeder.start()
            stdout, stderr = _drain(channel, timeout)
            feeder.join(timeout=5)
        exit_code = channel.recv_exit_status()
    return exit_code, frame.strip(stdout), frame.strip(stderr).decode(errors="replace")


def _open_session(client: paramiko.SSHClient) -> paramiko.Channel:
    transport = client.get_transport()
    if transport is None:
        raise paramiko.SSHException("the connection is closed")
    return transport.open_session(timeout=CONNECT_TIMEOUT)


#: The most handed to the channel at once; it sends what its window allows, <= 32 KiB.
_SEND_CHUNK = 1 << 20


def _feed(channel: paramiko.Channel, data: bytes) -> None:
    # Not Channel.sendall: it slices the rest of its bytes after every packet, which copies
    # the remaining data each time (quadratic in the size). Slices of a memoryview are free.
    try:
        view = memoryview(data).cast("B")
        offset = 0
        while offset < len(view):
            sent = channel.send(view[offset : offset + _SEND_CHUNK])
            if sent <= 0:
                break  # the command closed its input
            offset += sent
        if not channel.exit_status_ready():  # narrows, cannot close, the race in _execute()
            channel.shutdown_write()
    except (OSError, EOFError, paramiko.SSHException):
        pass  # the command ended without reading everything; its exit code tells the story


def _drain(channel: paramiko.Channel, timeout: float | None) -> tuple[bytearray, bytearray]:
    """Read stdout and stderr together, so a chatty stderr cannot stall a large stdout."""
    deadline = None if timeout is None else time.monotonic() + timeout
    stdout, stderr = bytearray(), bytearray()
    while True:
        if channel.recv_ready():
            stdout += channel.recv(65536)
        elif channel.recv_stderr_ready():
            stderr += channel.recv_stderr(65536)
        elif channel.exit_status_ready() and (channel.eof_received or channel.closed):
            # EOF comes after the last byte of both streams, and nothing is left buffered.
            return stdout, stderr
        else:
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"the command did not finish within {timeout:g} s")
            select.select([channel], [], [], 0.5)


_connections: dict[tuple[str, int, str, str | None], SSHTransport] = {}
_connections_lock = threading.Lock()


def shared_transport(
    host: str,
    *,
    port: int | None = None,
    username: str | None = None,
    key_file: str | None = None,
    password: str | None = None,
    host_key_policy: str = "strict",
    known_hosts: Path | None = None,
) -> SSHTransport:
    """The process-wide connection for (host, port, user), created on first use."""
    target = resolve_target(host, port, username, key_file)
    key = (target.hostname, target.port, target.username, target.proxy_jump)
    with _connections_lock:
        transport = _connections.get(key)
        if transport is None:
            jump = None
            if target.proxy_jump and target.proxy_jump.lower() != "none":
                jump = _jump_transport(target.proxy_jump, host_key_policy, known_hosts)
            transport = SSHTransport(
                target,
                password=password,
                host_key_policy=host_key_policy,
                known_hosts=known_hosts,
                jump=jump,
            )
            _connections[key] = transport
        return transport


def _jump_transport(spec: str, policy: str, known_hosts: Path | None) -> SSHTransport:
    """Connection to the last hop of a ProxyJump chain (``[user@]host[:port][,...]``)."""
    jump: SSHTransport | None = None
    for hop in spec.split(","):
        user, _, rest = hop.strip().rpartition("@")
        host, _, port = rest.partition(":")
        target = resolve_target(host, int(port) if port else None, user or None)
        jump = SSHTransport(target, host_key_policy=policy, known_hosts=known_hosts, jump=jump)
    assert jump is not None
    return jump


def close_all() -> None:
    with _connections_lock:
        transports = list(_connections.values())
        _connections.clear()
    for transport in transports:
        transport.close()
