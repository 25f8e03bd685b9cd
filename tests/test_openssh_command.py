"""The OpenSSH transport's command lines, socket folder, messages and the ``auto`` choice,
checked without a server (ssh itself only reads its options, with ``ssh -G``)."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

import clustrix
from clustrix.errors import AuthenticationError, ConfigError, ConnectionFailedError, HostKeyError
from clustrix.transport import choice, sshargs
from clustrix.transport.sshargs import (
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
    user_ssh_config,
)

OPTIONS = SSHOptions(
    "login.example.edu",
    port=2222,
    username="alice",
    key_file="/keys/id_ed25519",
    known_hosts=("/cfg/known_hosts", "/home/alice/.ssh/known_hosts"),
    host_key_policy="strict",
    config_file="/cfg/ssh_config",
)
COMMAND = "cd '/a b' && printf '%s\\n' \"$HOME\" | cat; echo 'x  y'"


def option(argv: list[str], name: str) -> str:
    """The value of ``-o name=value`` in ``argv``."""
    values = [a.split("=", 1)[1] for a in argv if a.lower().startswith(name.lower() + "=")]
    assert len(values) == 1, (name, argv)
    return values[0]


def test_a_command_is_one_last_argument_after_the_destination():
    argv = command_argv("ssh", OPTIONS, "/s/abc", COMMAND)
    assert argv[-3:] == ["--", "login.example.edu", COMMAND]
    assert argv[0] == "ssh"
    assert argv[argv.index("-S") + 1] == "/s/abc"
    assert argv[argv.index("-F") + 1] == "/cfg/ssh_config"
    assert (argv[argv.index("-p") + 1], argv[argv.index("-l") + 1]) == ("2222", "alice")
    assert option(argv, "IdentityFile") == "/keys/id_ed25519"
    assert option(argv, "IdentitiesOnly") == "yes"


def test_a_command_never_connects_prompts_or_translates_by_itself():
    argv = command_argv("ssh", OPTIONS, "/s/abc", "true")
    assert option(argv, "ControlMaster") == "no"
    assert option(argv, "ProxyCommand") == "false"  # no master: fail, never a new connection
    assert option(argv, "BatchMode") == "yes"
    assert option(argv, "RemoteCommand") == "none"
    assert "-T" in argv and argv[argv.index("-e") + 1] == "none"
    assert "-M" not in argv and "-f" not in argv


def test_the_master_logs_in_once_then_persists_in_the_background():
    argv = master_argv("ssh", OPTIONS, "/s/abc")
    assert argv[-2:] == ["--", "login.example.edu"]
    assert {"-M", "-N", "-f", "-T"} <= set(argv)
    assert option(argv, "ControlPersist") == sshargs.CONTROL_PERSIST
    assert option(argv, "ConnectTimeout") == str(sshargs.CONNECT_TIMEOUT)
    assert option(argv, "ClearAllForwardings") == "yes"
    assert "BatchMode=yes" not in argv, "the master may prompt"


@pytest.mark.parametrize(("policy", "ssh_value"), [("strict", "yes"), ("accept-new", "accept-new")])
def test_host_key_policy_and_known_hosts_files(policy, ssh_value):
    options = SSHOptions("h", known_hosts=("/k/mine", "/home/u/my keys/kh"), host_key_policy=policy)
    for argv in (
        master_argv("ssh", options, "/s/x"),
        command_argv("ssh", options, "/s/x", "true"),
        control_argv("ssh", options, "/s/x", "check"),
    ):
        assert option(argv, "StrictHostKeyChecking") == ssh_value
        assert option(argv, "UserKnownHostsFile") == '/k/mine "/home/u/my keys/kh"'


def test_unknown_policies_and_names_ssh_would_misread_are_refused():
    with pytest.raises(ConfigError, match="host_key_policy"):
        SSHOptions("h", host_key_policy="ask-me")
    for host in ("-oProxyCommand=evil", "two words", ""):
        with pytest.raises(ConfigError, match="cluster_host"):
            SSHOptions(host)
    with pytest.raises(ConfigError, match="username"):
        SSHOptions("h", username="-l")
    with pytest.raises(ConfigError, match="cannot be given to ssh"):
        command_argv("ssh", SSHOptions("h", known_hosts=('/a"b',)), "/s/x", "true")


def test_percent_signs_in_paths_are_not_read_as_ssh_tokens():
    options = SSHOptions("h", key_file="/k/100%/id", known_hosts=("/k/%h",))
    argv = command_argv("ssh", options, "/s/%d", "true")
    assert argv[argv.index("-S") + 1] == "/s/%%d"
    assert option(argv, "IdentityFile") == "/k/100%%/id"
    assert option(argv, "UserKnownHostsFile") == "/k/%%h"


def test_unset_settings_are_left_to_the_ssh_config():
    argv = command_argv("ssh", SSHOptions("alias"), "/s/x", "true")
    for flag in ("-p", "-l", "-i", "-F"):
        assert flag not in argv
    for name in ("UserKnownHostsFile=", "IdentityFile=", "IdentitiesOnly="):
        assert not any(a.startswith(name) for a in argv)


def test_control_requests_and_the_resolving_of_the_configuration():
    assert control_argv("ssh", OPTIONS, "/s/x", "exit")[-4:] == [
        "-O",
        "exit",
        "--",
        "login.example.edu",
    ]
    resolve = resolve_argv("ssh", OPTIONS)
    assert resolve[-3:] == ["-G", "--", "login.example.edu"]
    assert "-S" not in resolve
    assert not any(a.startswith("UserKnownHostsFile=") for a in resolve), "shows the user's own"
    values = parse_resolved(
        "user alice\nhostname 10.0.0.1\nport 22\nidentityfile a\nidentityfile b\n"
    )
    assert values == {"user": "alice", "hostname": "10.0.0.1", "port": "22", "identityfile": "a"}


def test_known_hosts_files_are_the_configured_one_then_the_users_own(isolated_config):
    own = "/home/u/.ssh/known_hosts /home/u/.ssh/known_hosts2"
    assert known_hosts_files("~/kh", own) == (
        str(isolated_config / "kh"),
        "/home/u/.ssh/known_hosts",
        "/home/u/.ssh/known_hosts2",
    )
    default = str(isolated_config / ".ssh" / "known_hosts")
    assert known_hosts_files(None, f"{default} /x")[:2] == (default, "/x")


@pytest.mark.skipif(shutil.which("ssh") is None, reason="needs OpenSSH's ssh")
def test_ssh_itself_accepts_every_option(tmp_path):
    (tmp_path / "100% key").touch()
    options = SSHOptions(
        "login.example.edu",
        port=2222,
        username="alice",
        key_file=str(tmp_path / "100% key"),  # ssh -G shows it before expanding "%%"
        known_hosts=(str(tmp_path / "my known_hosts"),),
        host_key_policy="accept-new",
        config_file=os.devnull,
    )
    for argv in (
        master_argv("ssh", options, str(tmp_path / "s")),
        command_argv("ssh", options, str(tmp_path / "s"), "true")[:-1],
    ):
        at = argv.index("--")
        printed = subprocess.run(
            [*argv[:at], "-G", *argv[at:]], capture_output=True, text=True, check=True
        ).stdout
        values = parse_resolved(printed)
        assert (values["user"], values["port"], values["hostname"]) == (
            "alice",
            "2222",
            "login.example.edu",
        )
        assert values["stricthostkeychecking"] == "accept-new"
        assert values["userknownhostsfile"] == str(tmp_path / "my known_hosts")
        assert values["identityfile"] == str(tmp_path / "100%% key")
        assert values["controlpath"] == str(tmp_path / "s")


# --------------------------------------------------------------------------- places


@pytest.fixture
def short_tmp():
    """A folder with a short path (pytest's are too long for sockets)."""
    folder = Path(tempfile.mkdtemp(prefix="cx-"))
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def test_the_socket_folder_is_private_and_its_paths_short(short_tmp, monkeypatch):
    runtime = short_tmp / "run"
    runtime.mkdir()
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(runtime))
    folder = control_folder()
    assert folder == runtime / "clustrix-ssh"
    assert folder.stat().st_mode & 0o777 == 0o700
    socket = control_path(folder, OPTIONS)
    assert len(socket) + 17 < 104, "ssh binds the master's socket 17 bytes longer first"
    assert socket != control_path(folder, SSHOptions("login.example.edu"))
    assert socket == control_path(folder, OPTIONS)


def test_a_long_home_falls_back_to_a_short_private_folder(tmp_path, monkeypatch):
    deep = tmp_path / ("x" * 80)
    monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
    monkeypatch.setenv("HOME", str(deep))
    folder = control_folder()
    assert len(str(folder)) <= sshargs.MAX_FOLDER_LENGTH
    assert folder.name == f"clustrix-ssh-{os.getuid()}"
    assert folder.stat().st_mode & 0o077 == 0


def test_a_folder_others_can_reach_is_made_private(short_tmp, monkeypatch):
    runtime = short_tmp / "run"
    (runtime / "clustrix-ssh").mkdir(parents=True)
    os.chmod(runtime / "clustrix-ssh", 0o777)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(runtime))
    assert control_folder().stat().st_mode & 0o777 == 0o700


def test_ssh_reads_the_ssh_config_clustrix_reads(isolated_config, monkeypatch):
    # The tests' HOME is not the account's home: ssh is told which file to read.
    assert user_ssh_config() == os.devnull
    (isolated_config / ".ssh").mkdir()
    (isolated_config / ".ssh" / "config").write_text("Host x\n")
    assert user_ssh_config() == str(isolated_config / ".ssh" / "config")
    import pwd

    monkeypatch.setenv("HOME", pwd.getpwuid(os.getuid()).pw_dir)
    assert user_ssh_config() is None, "ssh's own choice, /etc/ssh/ssh_config included"


# --------------------------------------------------------------------------- messages

CHANGED = """@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@
@    WARNING: REMOTE HOST IDENTIFICATION HAS CHANGED!     @
@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@
IT IS POSSIBLE THAT SOMEONE IS DOING SOMETHING NASTY!
The fingerprint for the ED25519 key sent by the remote host is
SHA256:kO2d34bmwveRrJCkmM4FBGmrR+azGLrdTjPut4qP2zU.
Please contact your system administrator.
Add correct host key in /k/known hosts to get rid of this message.
Offending ED25519 key in /k/known hosts:3
  remove with:
  ssh-keygen -f "/k/known hosts" -R "[127.0.0.1]:2222"
Host key for [127.0.0.1]:2222 has changed and you have requested strict checking.
Host key verification failed.
"""


def error_for(stderr: str) -> Exception:
    return login_error(
        stderr, where="u@127.0.0.1:2222", host="127.0.0.1", port=2222, known_hosts=("/k/kh",)
    )


def test_a_changed_host_key_names_the_file_and_line_to_fix():
    error = error_for(CHANGED)
    assert isinstance(error, HostKeyError)
    assert error.fingerprint == "SHA256:kO2d34bmwveRrJCkmM4FBGmrR+azGLrdTjPut4qP2zU"
    assert "does NOT match the one at /k/known hosts:3" in str(error)
    assert "ssh-keygen -R '[127.0.0.1]:2222'" in str(error)
    assert "@@@" not in str(error)


def test_ssh_failures_become_clustrix_errors_with_ssh_s_words():
    unknown = error_for(
        "No ED25519 host key is known for [127.0.0.1]:2222 and you have requested strict "
        "checking.\nHost key verification failed.\n"
    )
    assert isinstance(unknown, HostKeyError)
    assert "clustrix trust-host 127.0.0.1 --port 2222 --known-hosts /k/kh" in str(unknown)
    assert "accept-new" in str(unknown)
    denied = error_for("u@127.0.0.1: Permission denied (publickey,keyboard-interactive).\n")
    assert isinstance(denied, AuthenticationError)
    assert "Permission denied (publickey,keyboard-interactive)" in str(denied)
    refused = error_for("ssh: connect to host 127.0.0.1 port 2222: Connection refused\n")
    assert isinstance(refused, ConnectionFailedError)
    assert "cannot connect to u@127.0.0.1:2222" in str(refused)
    assert "Connection refused" in str(refused)


# --------------------------------------------------------------------------- the choice


def test_auto_keeps_paramiko_unless_the_ssh_config_needs_openssh(isolated_config, monkeypatch):
    monkeypatch.setattr(choice.shutil, "which", lambda name: "/usr/bin/ssh")
    config = isolated_config / ".ssh" / "config"
    config.parent.mkdir()
    assert choice.choose_ssh_client("auto", "plain", password=False)[0] == "paramiko"
    config.write_text(
        "Host plain\n  HostName 10.0.0.1\n  ProxyJump gateway\n"
        "Host proxied\n  ProxyCommand ssh -W %h:%p gateway\n"
        "Host kerberos\n  GSSAPIAuthentication yes\n"
        "Host certified\n  CertificateFile ~/.ssh/id-cert.pub\n"
        "Host off\n  GSSAPIAuthentication no\n  ProxyCommand none\n"
    )
    assert choice.choose_ssh_client("auto", "plain", password=False)[0] == "paramiko"
    assert choice.choose_ssh_client("auto", "off", password=False)[0] == "paramiko"
    for host in ("proxied", "kerberos", "certified"):
        client, why = choice.choose_ssh_client("auto", host, password=False)
        assert client == "openssh", host
        assert host in why
    # Only paramiko can send a password setting; without ssh there is no choice either.
    assert choice.choose_ssh_client("auto", "proxied", password=True)[0] == "paramiko"
    monkeypatch.setattr(choice.shutil, "which", lambda name: None)
    assert choice.choose_ssh_client("auto", "proxied", password=False)[0] == "paramiko"
    assert choice.choose_ssh_client("openssh", "plain", password=False)[0] == "openssh"


def test_auto_uses_openssh_for_match_exec_include_and_hardware_keys(isolated_config, monkeypatch):
    monkeypatch.setattr(choice.shutil, "which", lambda name: "/usr/bin/ssh")
    ssh_dir = isolated_config / ".ssh"
    ssh_dir.mkdir()
    (ssh_dir / "config").write_text('Match host x exec "test -e /tmp/vpn"\n  User bob\n')
    assert choice.choose_ssh_client("auto", "y", password=False)[0] == "openssh"
    (ssh_dir / "config").write_text("Include ~/.ssh/config.d/*\n")
    assert choice.choose_ssh_client("auto", "y", password=False)[0] == "openssh"
    (ssh_dir / "config").write_text(f"Host y\n  IdentityFile {ssh_dir}/id_sk\n")
    (ssh_dir / "id_sk.pub").write_text("sk-ssh-ed25519@openssh.com AAAA me\n")
    assert choice.choose_ssh_client("auto", "y", password=False)[0] == "openssh"
    (ssh_dir / "config").unlink()
    assert choice.choose_ssh_client("auto", "y", password=False)[0] == "paramiko"
    client, _ = choice.choose_ssh_client("auto", "y", password=False, key_file=f"{ssh_dir}/id_sk")
    assert client == "openssh"


# --------------------------------------------------------------------------- the setting


def test_the_ssh_client_setting_is_checked_and_shared_connections_tell_it_apart():
    from clustrix.remote.backend import CONNECTION_SETTINGS

    assert clustrix.ClusterConfig().ssh_client == "auto"
    assert clustrix.ClusterConfig(ssh_client="openssh").ssh_client == "openssh"
    with pytest.raises(ConfigError, match="ssh_client"):
        clustrix.ClusterConfig(ssh_client="putty")
    assert "ssh_client" in CONNECTION_SETTINGS


def test_a_password_is_refused_with_openssh_without_showing_it():
    from clustrix.remote.backend import make_transport

    config = clustrix.ClusterConfig(
        cluster_type="ssh", cluster_host="h", ssh_client="openssh", password="s3cret-value"
    )
    with pytest.raises(ConfigError, match="ssh_client='paramiko'") as info:
        make_transport(config)
    assert "s3cret-value" not in str(info.value)


def test_openssh_without_an_ssh_command_says_what_to_do(monkeypatch):
    from clustrix.errors import BackendUnavailableError
    from clustrix.transport.openssh import openssh_transport

    monkeypatch.setenv("PATH", str(Path("/nonexistent")))
    with pytest.raises(BackendUnavailableError, match="ssh_client='paramiko'"):
        openssh_transport("h")
