"""Which SSH client reaches a host when ``ssh_client`` is ``auto``.

Paramiko stays the default: it is built in, needs no ``ssh`` command, works on every system,
accepts a ``password`` setting, and is what Clustrix has always used. The system's OpenSSH is
chosen for a host whose ``~/.ssh/config`` entry uses what the paramiko transport cannot do,
because only ssh itself would then reach the host the way the user's own ``ssh`` does.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import paramiko

#: ssh config options (lowercase) only the system ssh honours, and what they are for.
OPENSSH_ONLY_OPTIONS = {
    "proxycommand": "a ProxyCommand",
    "certificatefile": "a certificate (CertificateFile)",
    "pkcs11provider": "a PKCS#11 token (PKCS11Provider)",
    "securitykeyprovider": "a hardware key (SecurityKeyProvider)",
    "gssapiauthentication": "Kerberos (GSSAPIAuthentication)",
    "include": "Include, which paramiko does not read",
    "identityagent": "an IdentityAgent socket",
}
#: ``Match`` conditions whose meaning depends on ssh itself.
_MATCH_EXEC = re.compile(r"^\s*match\s.*\b(exec|canonical|final|localnetwork)\b", re.I | re.M)


def choose_ssh_client(
    setting: str,
    host: str,
    *,
    password: bool,
    key_file: str | None = None,
    ssh_config: Path | None = None,
) -> tuple[str, str]:
    """``("paramiko" | "openssh", why)`` for ``ssh_client=setting`` and ``host``.

    ``password`` says whether the password setting is set (only paramiko can use it);
    ``key_file`` is the key_file setting; ``ssh_config`` is the file to read (default
    ``~/.ssh/config``).
    """
    if setting != "auto":
        return setting, f"ssh_client={setting!r}"
    if password:
        return "paramiko", "a password is set, which only paramiko can send"
    if os.name == "nt" or shutil.which("ssh") is None:
        return "paramiko", "there is no OpenSSH ssh with control sockets here"
    if key_file and _is_hardware_key(Path(os.path.expanduser(key_file))):
        return "openssh", f"key_file {key_file} is a hardware key"
    needs = openssh_only_reason(host, ssh_config)
    if needs:
        return "openssh", f"the ssh config of {host} uses {needs}"
    return "paramiko", "nothing in the ssh config needs the system ssh"


def openssh_only_reason(host: str, ssh_config: Path | None = None) -> str | None:
    """What in ``host``'s entry of the ssh config only OpenSSH can do, or None.

    Also keys only ssh can use: a hardware (``sk-``) key among the host's IdentityFiles.
    """
    path = ssh_config or Path(os.path.expanduser("~/.ssh/config"))
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    if _MATCH_EXEC.search(text):
        return "a Match block that only ssh evaluates"
    try:
        entry = paramiko.SSHConfig.from_text(text).lookup(host)
    except Exception:  # a file paramiko cannot read: ssh reads it its own way
        return "options paramiko cannot read"
    for option, what in OPENSSH_ONLY_OPTIONS.items():
        value = entry.get(option)
        if value and str(value).strip().lower() not in ("none", "no"):
            return what
    for key_file in entry.get("identityfile", []):
        if _is_hardware_key(Path(os.path.expanduser(key_file))):
            return f"a hardware key ({key_file})"
    return None


def _is_hardware_key(key_file: Path) -> bool:
    try:
        public = key_file.with_name(key_file.name + ".pub").read_text(errors="replace")
    except OSError:
        return False
    return public.startswith("sk-")
