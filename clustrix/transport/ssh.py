"""The SSH transport: one verified, shared connection per (host, port, user).

Every submission, status poll and file transfer for a cluster goes through the same
connection, which is what makes a round trip cost milliseconds instead of a new handshake.
Host keys are checked against known_hosts; an unknown host is refused with its fingerprint
and the command that trusts it, unless the configuration explicitly accepts new hosts.
"""

from __future__ import annotations

import base64
import getpass
import hashlib
import hmac
import logging
import os
import re
import select
import shlex
import socket
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paramiko

from ..errors import AuthenticationError, ConnectionFailedError, HostKeyError
from .base import CommandResult, OutputFrame

logger = logging.getLogger("clustrix.ssh")

HOST_KEY_POLICIES = ("strict", "accept-new")
_CONNECT_TIMEOUT = 20.0


def default_known_hosts() -> Path:
    return Path(os.path.expanduser("~/.ssh/known_hosts"))


def fingerprint(key: paramiko.PKey) -> str:
    """The SHA256 fingerprint as OpenSSH prints it."""
    digest = hashlib.sha256(key.asbytes()).digest()
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


def known_hosts_name(host: str, port: int) -> str:
    return host if port == 22 else f"[{host}]:{port}"


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


#: Known-hosts files every user's connections also trust (OpenSSH's GlobalKnownHostsFile).
GLOBAL_KNOWN_HOSTS = (Path("/etc/ssh/ssh_known_hosts"), Path("/etc/ssh/ssh_known_hosts2"))


def host_label(host: str, port: int) -> str:
    """A host as messages name it, port included: ``[host]:port``, or ``host port 22``."""
    return f"{host} port {port}" if port == 22 else known_hosts_name(host, port)


@dataclass(frozen=True)
class KnownHostKey:
    """One line of a known-hosts file: which hosts it names, their key, and where it is."""

    path: Path
    line: int
    names: tuple[str, ...]
    key: paramiko.PKey
    revoked: bool = False

    @property
    def place(self) -> str:
        return f"{self.path}:{self.line}"

    def names_host(self, name: str) -> bool:
        """Whether the line is about ``name`` (``host`` or ``[host]:port``), as OpenSSH reads it.

        Names may be hashed (``|1|salt|hash``), patterns with ``*`` and ``?``, or negated
        patterns (``!pattern``), which exclude a host the other names would match.
        """
        matched = False
        for pattern in self.names:
            if pattern.startswith("|1|"):
                matched |= _hashed_name_is(pattern, name)
            elif pattern.startswith("!"):
                if _host_pattern(pattern[1:]).fullmatch(name):
                    return False
            elif _host_pattern(pattern).fullmatch(name):
                matched = True
        return matched


def _hashed_name_is(hashed: str, name: str) -> bool:
    try:
        return hmac.compare_digest(paramiko.HostKeys.hash_host(name, hashed), hashed)
    except Exception:  # a malformed salt: the line names no host
        return False


def _host_pattern(pattern: str) -> re.Pattern[str]:
    """OpenSSH's host patterns: ``*`` and ``?`` are wildcards, nothing else is special."""
    parts = (".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    return re.compile("".join(parts), re.IGNORECASE)


def read_known_hosts(path: Path) -> list[KnownHostKey]:
    """The usable lines of a known-hosts file with their line numbers (none if it is missing).

    ``@revoked`` lines are kept as such; ``@cert-authority`` lines (host certificates, which
    are not used here) and lines that cannot be read are skipped.
    """
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return []
    keys = []
    for number, raw in enumerate(text.splitlines(), start=1):
        fields = raw.split()
        if not fields or fields[0].startswith("#"):
            continue
        revoked = False
        if fields[0].startswith("@"):
            if fields[0] != "@revoked":
                continue
            revoked, fields = True, fields[1:]
        try:
            entry = paramiko.hostkeys.HostKeyEntry.from_line(" ".join(fields), number)
        except Exception as exc:  # a damaged line does not stop the others from counting
            logger.debug("skipping line %d of %s: %s", number, path, exc)
            continue
        if entry is not None and entry.key is not None:
            keys.append(KnownHostKey(path, number, tuple(entry.hostnames), entry.key, revoked))
    return keys


class _HostKeyCheck(paramiko.MissingHostKeyPolicy):
    """Checks a server's key against known-hosts files as OpenSSH does, naming the line.

    The files are the user's (the configured one, which replaces ~/.ssh/known_hosts, as
    UserKnownHostsFile does) and the global ones. Paramiko is given no keys, so it hands
    every server key to ``missing_host_key``: accepted if a line for the host has it,
    refused if a line for the host has another key of its type (or has it as revoked).
    An unknown host is refused (strict) or recorded in the user's file (accept-new).
    """

    def __init__(self, policy: str, user_file: Path, host: str, port: int) -> None:
        self.policy = policy
        self.user_file = user_file
        self.host, self.port = host, port
        self.name = known_hosts_name(host, port)
        self.keys = [
            key
            for path in (user_file, *GLOBAL_KNOWN_HOSTS)
            for key in read_known_hosts(path)
            if key.names_host(self.name)
        ]

    def preferred_key_types(self, offered: list[str]) -> list[str]:
        """``offered`` with the types of this host's known keys first (as OpenSSH orders them)."""
        known: list[str] = []
        for entry in self.keys:
            kind = entry.key.get_name()
            names = ["rsa-sha2-512", "rsa-sha2-256", kind] if kind == "ssh-rsa" else [kind]
            known += [n for n in names if n in offered and n not in known and not entry.revoked]
        return known + [n for n in offered if n not in known]

    def missing_host_key(
        self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey
    ) -> None:
        label, blob, print_name = host_label(self.host, self.port), key.asbytes(), fingerprint(key)
        for entry in self.keys:
            if entry.revoked and entry.key.asbytes() == blob:
                raise HostKeyError(
                    f"the host key of {label} ({key.get_name()} {print_name}) is marked "
                    f"@revoked at {entry.place}; refusing to connect",
                    host=self.host,
                    fingerprint=print_name,
                )
        current = [entry for entry in self.keys if not entry.revoked]
        if any(entry.key.asbytes() == blob for entry in current):
            return
        for entry in current:
            if entry.key.get_name() == key.get_name():
                raise HostKeyError(
                    f"the host key of {label} does NOT match the one at {entry.place}: got "
                    f"{key.get_name()} {print_name}, expected {fingerprint(entry.key)}. This "
                    "may be a man-in-the-middle attack, or the host was reinstalled; check "
                    "with its administrators before removing the old entry (ssh-keygen -R "
                    f"'{self.name}' -f {entry.path})",
                    host=self.host,
                    fingerprint=print_name,
                )
        if self.policy != "accept-new":
            others = "".join(
                f"; {entry.place} has its {entry.key.get_name()} key" for entry in current
            )
            raise HostKeyError(
                f"the host key of {label} is not in {self.user_file} ({key.get_name()} "
                f"{print_name}{others}). If that fingerprint is right, trust it with "
                f"`clustrix trust-host {self._trust_arguments()}` or set "
                "host_key_policy='accept-new'",
                host=self.host,
                fingerprint=print_name,
            )
        append_known_host(self.user_file, self.name, key)
        logger.warning("added %s (%s %s) to %s", label, key.get_name(), print_name, self.user_file)

    def _trust_arguments(self) -> str:
        arguments = f"{shlex.quote(self.host)} --port {self.port}"
        if self.user_file != default_known_hosts():
            arguments += f" --known-hosts {shlex.quote(str(self.user_file))}"
        return arguments


def append_known_host(known_hosts: Path, hostname: str, key: paramiko.PKey) -> None:
    known_hosts.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    with known_hosts.open("a", encoding="utf-8") as handle:
        handle.write(f"{hostname} {key.get_name()} {key.get_base64()}\n")
    os.chmod(known_hosts, 0o600)


def fetch_host_key(hostname: str, port: int) -> paramiko.PKey:
    """The server's host key, read from an SSH handshake without authenticating."""
    try:
        sock = socket.create_connection((hostname, port), timeout=_CONNECT_TIMEOUT)
    except OSError as exc:
        raise ConnectionFailedError(f"cannot reach {hostname}:{port}: {exc}") from None
    transport = paramiko.Transport(sock)
    try:
        transport.start_client(timeout=_CONNECT_TIMEOUT)
        return transport.get_remote_server_key()
    except paramiko.SSHException as exc:
        raise ConnectionFailedError(f"SSH handshake with {hostname}:{port} failed: {exc}") from None
    finally:
        transport.close()


class SSHTransport:
    """Commands and files over one paramiko connection, reconnecting if it drops."""

    def __init__(
        self,
        target: SSHTarget,
        *,
        password: str | None = None,
        host_key_policy: str = "strict",
        known_hosts: Path | None = None,
        jump: SSHTransport | None = None,
    ) -> None:
        self.target = target
        self.where = target.where
        self._password = password
        self._policy = host_key_policy
        self._known_hosts = known_hosts or default_known_hosts()
        self._jump = jump
        self._lock = threading.RLock()
        self._client: paramiko.SSHClient | None = None
        self._sftp: paramiko.SFTPClient | None = None
        self._sftp_lock = threading.Lock()
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
        self._sftp = None

    def _connect(self) -> paramiko.SSHClient:
        target = self.target
        client = paramiko.SSHClient()
        # No keys are loaded into paramiko: _HostKeyCheck sees every server key, with the
        # file and line of the known key it is compared with.
        check = _HostKeyCheck(self._policy, self._known_hosts, target.hostname, target.port)
        client.set_missing_host_key_policy(check)

        def preferring_known_key_types(sock: Any, **kwargs: Any) -> paramiko.Transport:
            transport = paramiko.Transport(sock, **kwargs)
            options = transport.get_security_options()
            options.key_types = check.preferred_key_types(list(options.key_types))
            return transport

        sock = None
        if self._jump is not None:
            jump_transport = self._jump._connected_client().get_transport()
            assert jump_transport is not None
            sock = jump_transport.open_channel(
                "direct-tcpip", (target.hostname, target.port), ("127.0.0.1", 0)
            )
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
                timeout=_CONNECT_TIMEOUT,
                banner_timeout=_CONNECT_TIMEOUT,
                auth_timeout=_CONNECT_TIMEOUT,
                sock=sock,
                transport_factory=preferring_known_key_types,
            )
        except HostKeyError:
            client.close()
            raise
        except paramiko.AuthenticationException:
            client.close()
            if self._password is None and sys.stdin is not None and sys.stdin.isatty():
                self._password = getpass.getpass(f"Password for {self.where}: ")
                return self._connect()
            offered = ", ".join(target.key_files) or "the SSH agent and default keys"
            raise AuthenticationError(
                f"authentication failed for {self.where} (offered: {offered}"
                f"{', a password' if self._password else ''}); check username and key_file"
            ) from None
        except (OSError, paramiko.SSHException) as exc:
            client.close()
            raise ConnectionFailedError(f"cannot connect to {self.where}: {exc}") from None
        transport = client.get_transport()
        assert transport is not None
        transport.set_keepalive(30)
        logger.debug("connected to %s", self.where)
        return client

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

    def _sftp_client(self) -> paramiko.SFTPClient:
        with self._lock:
            if self._sftp is None:
                self._sftp = self._connected_client().open_sftp()
            return self._sftp

    def write_file(self, path: str, data: bytes, mode: int = 0o600) -> None:
        with self._sftp_lock:
            sftp = self._sftp_client()
            with sftp.open(path, "wb") as handle:
                handle.chmod(mode)
                handle.set_pipelined(True)
                handle.write(data)

    def read_file(self, path: str) -> bytes:
        with self._sftp_lock:
            sftp = self._sftp_client()
            try:
                with sftp.open(path, "rb") as handle:
                    handle.prefetch()
                    return handle.read()
            except OSError as exc:
                if getattr(exc, "errno", None) == 2:
                    raise FileNotFoundError(2, "No such file", f"{self.where}:{path}") from None
                raise

    def home(self) -> str:
        if self._home is None:
            self._home = self.run('printf %s "$HOME"').stdout.strip()
        return self._home


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
    return transport.open_session(timeout=_CONNECT_TIMEOUT)


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
