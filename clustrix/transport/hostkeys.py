"""Host keys: known_hosts files read as OpenSSH reads them, the check of a server's key
against them, fingerprints, and the helpers that trust a new host.

An unknown host is refused with its fingerprint and the command that trusts it, unless the
configuration explicitly accepts new hosts; a changed or revoked key is always refused,
naming the file and line of the key it contradicts.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import os
import re
import shlex
import socket
from dataclasses import dataclass
from pathlib import Path

import paramiko

from ..errors import ConnectionFailedError, HostKeyError

logger = logging.getLogger("clustrix.ssh")

HOST_KEY_POLICIES = ("strict", "accept-new")
#: Seconds to wait for a server to answer, in a handshake and in each step of connecting.
CONNECT_TIMEOUT = 20.0


def default_known_hosts() -> Path:
    return Path(os.path.expanduser("~/.ssh/known_hosts"))


def fingerprint(key: paramiko.PKey) -> str:
    """The SHA256 fingerprint as OpenSSH prints it."""
    digest = hashlib.sha256(key.asbytes()).digest()
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


def known_hosts_name(host: str, port: int) -> str:
    return host if port == 22 else f"[{host}]:{port}"


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


class HostKeyCheck(paramiko.MissingHostKeyPolicy):
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
        sock = socket.create_connection((hostname, port), timeout=CONNECT_TIMEOUT)
    except OSError as exc:
        raise ConnectionFailedError(f"cannot reach {hostname}:{port}: {exc}") from None
    transport = paramiko.Transport(sock)
    try:
        transport.start_client(timeout=CONNECT_TIMEOUT)
        return transport.get_remote_server_key()
    except paramiko.SSHException as exc:
        raise ConnectionFailedError(f"SSH handshake with {hostname}:{port} failed: {exc}") from None
    finally:
        transport.close()
