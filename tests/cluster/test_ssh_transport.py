"""The SSH transport against the real sshd of the test cluster."""

from __future__ import annotations

import hashlib
import shlex
import shutil
import subprocess
import threading
import time
import tracemalloc
from pathlib import Path

import paramiko
import pytest

import clustrix
from clustrix.errors import AuthenticationError, ConnectionFailedError, HostKeyError
from clustrix.transport.ssh import SSHTransport, resolve_target, shared_transport


def transport_for(test_cluster, known_hosts: Path, **kwargs) -> SSHTransport:
    target = resolve_target(
        test_cluster.host,
        test_cluster.port,
        test_cluster.user,
        kwargs.pop("key_file", test_cluster.key_file),
    )
    return SSHTransport(target, known_hosts=known_hosts, **kwargs)


def test_unknown_host_is_refused_with_fingerprint_and_advice(test_cluster, tmp_path):
    known_hosts = tmp_path / "known_hosts"
    with pytest.raises(HostKeyError) as info:
        transport_for(test_cluster, known_hosts).run("true")
    message = str(info.value)
    assert "SHA256:" in message and info.value.fingerprint in message
    assert f"clustrix trust-host {test_cluster.host} --port {test_cluster.port}" in message
    assert "accept-new" in message
    assert not known_hosts.exists(), "nothing is added silently"


def test_accept_new_records_the_key_then_strict_accepts_it(test_cluster, tmp_path):
    known_hosts = tmp_path / "known_hosts"
    transport = transport_for(test_cluster, known_hosts, host_key_policy="accept-new")
    assert transport.run("echo hi").stdout == "hi\n"
    assert known_hosts.read_text().startswith(f"[{test_cluster.host}]:{test_cluster.port} ssh-")
    assert transport_for(test_cluster, known_hosts).run("echo again").stdout == "again\n"


def test_changed_host_key_is_refused_even_with_accept_new(test_cluster, tmp_path):
    known_hosts = tmp_path / "known_hosts"
    other_key = tmp_path / "other"
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other_key)], check=True
    )
    kind, blob = other_key.with_suffix(".pub").read_text().split()[:2]
    known_hosts.write_text(f"[{test_cluster.host}]:{test_cluster.port} {kind} {blob}\n")
    with pytest.raises(HostKeyError, match="does NOT match"):
        transport_for(test_cluster, known_hosts, host_key_policy="accept-new").run("true")


def test_wrong_key_is_an_authentication_error(test_cluster, tmp_path):
    wrong = tmp_path / "wrong"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(wrong)], check=True)
    with pytest.raises(
        AuthenticationError, match=f"authentication failed for {test_cluster.user}@"
    ):
        transport_for(test_cluster, Path(test_cluster.known_hosts), key_file=str(wrong)).run("true")
    with pytest.raises(AuthenticationError, match="does not exist"):
        transport_for(
            test_cluster, Path(test_cluster.known_hosts), key_file=str(tmp_path / "nope")
        ).run("true")


def test_unreachable_host_is_a_connection_error(test_cluster):
    target = resolve_target(test_cluster.host, 1, test_cluster.user, test_cluster.key_file)
    with pytest.raises(ConnectionFailedError, match="cannot connect to"):
        SSHTransport(target, known_hosts=Path(test_cluster.known_hosts)).run("true")


def test_ssh_config_alias_is_honoured(test_cluster, isolated_config):
    ssh_dir = isolated_config / ".ssh"
    ssh_dir.mkdir()
    shutil.copy(test_cluster.known_hosts, ssh_dir / "known_hosts")
    (ssh_dir / "config").write_text(
        "Host testlogin\n"
        f"  HostName {test_cluster.host}\n  Port {test_cluster.port}\n"
        f"  User {test_cluster.user}\n  IdentityFile {test_cluster.key_file}\n"
    )
    target = resolve_target("testlogin")
    assert (target.hostname, target.port, target.username) == (
        test_cluster.host,
        test_cluster.port,
        test_cluster.user,
    )
    assert SSHTransport(target).run("whoami").stdout.strip() == test_cluster.user

    clustrix.configure(
        cluster_type="ssh", cluster_host="testlogin", remote_work_dir=test_cluster.work_dir
    )

    @clustrix.cluster
    def where():
        import getpass

        return getpass.getuser()

    assert where() == test_cluster.user


def test_proxy_jump_through_the_same_host(test_cluster, isolated_config):
    ssh_dir = isolated_config / ".ssh"
    ssh_dir.mkdir()
    shutil.copy(test_cluster.known_hosts, ssh_dir / "known_hosts")
    (ssh_dir / "config").write_text(
        "Host jumphost\n"
        f"  HostName {test_cluster.host}\n  Port {test_cluster.port}\n"
        f"  User {test_cluster.user}\n  IdentityFile {test_cluster.key_file}\n"
        "Host behind\n"
        f"  HostName {test_cluster.host}\n  Port {test_cluster.port}\n"
        f"  User {test_cluster.user}\n  IdentityFile {test_cluster.key_file}\n"
        "  ProxyJump jumphost\n"
    )
    transport = shared_transport("behind")
    assert transport.target.proxy_jump == "jumphost"
    assert transport.run("echo through").stdout == "through\n"
    transport.close()


def test_one_connection_shared_by_threads_and_reconnected_after_a_drop(test_cluster):
    transport = transport_for(test_cluster, Path(test_cluster.known_hosts))
    transport.run("true")
    first_client = transport._client
    outputs: list[str] = []

    def work(i: int) -> None:
        # Many quick commands at once: each channel closes while others open and end.
        for _ in range(10):
            outputs.append(transport.run(f"echo {i}").stdout.strip())

    threads = [threading.Thread(target=work, args=(i,)) for i in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(outputs, key=int) == [str(i) for i in range(20) for _ in range(10)]
    assert transport._client is first_client, "the shared connection was dropped and replaced"

    first_client.get_transport().close()  # the network drops the connection
    assert transport.run("echo back").stdout == "back\n"
    assert transport._client is not first_client


def test_a_command_reading_its_input_sees_the_end_of_it(test_cluster):
    transport = transport_for(test_cluster, Path(test_cluster.known_hosts))
    assert transport.run("cat; echo done # a comment", timeout=30).stdout == "done\n"
    assert transport.run("cat; echo done", stdin=b"in\n").stdout == "in\ndone\n"
    assert transport.run("exit 3", check=False).exit_code == 3


def test_large_binary_output_and_stdin(test_cluster):
    transport = transport_for(test_cluster, Path(test_cluster.known_hosts))
    result = transport.run("cat; head -c 100000 /dev/zero >&2", stdin=b"\x00\x01" * 3_000_000)
    assert result.stdout_bytes == b"\x00\x01" * 3_000_000
    assert len(result.stderr) == 100000


def test_ssh_agent_provides_the_key(test_cluster, isolated_config, monkeypatch):
    agent = subprocess.run(["ssh-agent", "-s"], capture_output=True, text=True, check=True).stdout
    values = dict(part.split("=", 1) for part in agent.replace(";", "\n").split() if "=" in part)
    monkeypatch.setenv("SSH_AUTH_SOCK", values["SSH_AUTH_SOCK"])
    try:
        subprocess.run(["ssh-add", test_cluster.key_file], check=True, capture_output=True)
        target = resolve_target(test_cluster.host, test_cluster.port, test_cluster.user)
        assert target.key_files == ()  # no key file: only the agent can authenticate
        transport = SSHTransport(target, known_hosts=Path(test_cluster.known_hosts))
        assert transport.run("whoami").stdout.strip() == test_cluster.user
    finally:
        subprocess.run(["kill", values["SSH_AGENT_PID"]], check=False)


def test_a_connection_dropped_mid_command_raises_instead_of_returning_cut_output(test_cluster):
    transport = transport_for(test_cluster, Path(test_cluster.known_hosts))
    transport.run("true")
    outcome: list[BaseException | object] = []

    def slow() -> None:
        try:
            outcome.append(transport.run("echo early; sleep 5; echo late", check=False))
        except BaseException as exc:
            outcome.append(exc)

    thread = threading.Thread(target=slow)
    thread.start()
    time.sleep(1.0)
    transport._client.get_transport().close()  # the network drops the connection
    thread.join(timeout=30)
    (result,) = outcome
    assert isinstance(result, ConnectionFailedError), result
    assert "dropped while running 'echo early; sleep 5; echo late'" in str(result)
    assert transport.run("echo back").stdout == "back\n"


# ---------------------------------------------------------------- chatty login shells

_CHATTY_BEGIN = "# >>> clustrix chatty-shell test >>>"
_CHATTY_END = "# <<< clustrix chatty-shell test <<<"
# Prints only for connections whose client port has a file in ~/.clustrix-chatty-shell, so
# other connections of the same user (other tests running meanwhile) are left alone.
_CHATTY_BLOCK = f"""{_CHATTY_BEGIN}
_clustrix_port=${{SSH_CLIENT#* }}; _clustrix_port=${{_clustrix_port%% *}}
if [ -e "$HOME/.clustrix-chatty-shell/$_clustrix_port" ]; then
  echo "Please report errors to the help desk."
  echo "notice" >&2
  printf 'no newline after this'
fi
unset _clustrix_port
{_CHATTY_END}
"""


@pytest.fixture
def chatty_login(test_cluster):
    """A fresh connection whose login shell prints on stdout and stderr before each command."""
    admin = test_cluster.transport()
    transport = test_cluster.transport()
    transport.run("true")  # connected: its client port is known
    port = transport._client.get_transport().sock.getsockname()[1]
    marker = f"$HOME/.clustrix-chatty-shell/{port}"
    admin.run(
        f"grep -qxF {shlex.quote(_CHATTY_BEGIN)} ~/.bashrc || "
        f"{{ printf %s {shlex.quote(_CHATTY_BLOCK)}; cat ~/.bashrc; }} > ~/.bashrc.clustrix-new "
        "&& mv ~/.bashrc.clustrix-new ~/.bashrc"
    )
    admin.run(f'mkdir -p ~/.clustrix-chatty-shell && touch "{marker}"')
    try:
        # The shell really does print before a command (bash sources ~/.bashrc under sshd).
        channel = transport._client.get_transport().open_session()
        channel.exec_command("true")
        assert b"help desk" in channel.makefile("rb").read()
        assert b"notice" in channel.makefile_stderr("rb").read()
        channel.close()
        yield transport
    finally:
        admin.run(f'rm -f "{marker}"', check=False)
        transport.close()
        admin.run(
            "rmdir ~/.clustrix-chatty-shell 2>/dev/null && sed -i "
            f"{shlex.quote(f'/^{_CHATTY_BEGIN}$/,/^{_CHATTY_END}$/d')} ~/.bashrc",
            check=False,
        )
        admin.close()


def test_home_is_the_bare_path_under_a_chatty_login_shell(test_cluster, chatty_login):
    quiet = test_cluster.transport()
    assert chatty_login.home() == quiet.home()
    assert chatty_login.home().startswith("/") and "\n" not in chatty_login.home()
    quiet.close()


def test_command_output_is_exact_under_a_chatty_login_shell(chatty_login):
    assert chatty_login.run("printf x").stdout == "x"
    every_byte = bytes(range(256)) * 64
    assert chatty_login.run("cat", stdin=every_byte).stdout_bytes == every_byte
    failed = chatty_login.run("echo oops >&2; exit 7", check=False)
    assert (failed.exit_code, failed.stdout, failed.stderr) == (7, "", "oops\n")


# ---------------------------------------------------------------- large stdin


def run_traced(transport: SSHTransport, command: str, stdin: bytes):
    """The command's result, and the most memory allocated meanwhile beyond what it was given."""
    transport.run("true")  # connected before measuring
    tracemalloc.start()
    try:
        result = transport.run(command, stdin=stdin, timeout=600)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    return result, peak


def test_a_large_stdin_arrives_whole_without_copies(test_cluster):
    # Copying what is left to send after every packet made large uploads quadratic.
    data = b"x" * (40 * 2**20)
    transport = test_cluster.transport()
    result, peak = run_traced(transport, "wc -c", data)
    transport.close()
    size = len(data)
    assert result.stdout.strip() == str(size)
    assert peak < size // 4, f"{peak / 2**20:.0f} MiB allocated to send 40 MiB"


def test_every_byte_of_a_large_stdin_arrives_exactly_without_copies(test_cluster):
    data = bytes(range(256)) * (24 * 2**20 // 256)
    transport = test_cluster.transport()
    result, peak = run_traced(transport, "sha256sum", data)
    transport.close()
    size, digest = len(data), hashlib.sha256(data).hexdigest()
    assert result.stdout.split()[0] == digest
    assert peak < size // 4, f"{peak / 2**20:.0f} MiB allocated to send 24 MiB"


# ---------------------------------------------------------------- known-hosts files


def host_key_lines(test_cluster, tmp_path) -> tuple[str, str, str]:
    """The known-hosts name of the test sshd, a line with its key, and one with another key."""
    name = f"[{test_cluster.host}]:{test_cluster.port}"
    kind, blob = Path(test_cluster.known_hosts).read_text().split("\n")[0].split()[1:3]
    other = tmp_path / "other-host-key"
    subprocess.run(["ssh-keygen", "-q", "-t", kind, "-N", "", "-f", str(other)], check=True)
    other_blob = other.with_suffix(".pub").read_text().split()[1]
    return name, f"{name} {kind} {blob}\n", f"{name} {kind} {other_blob}\n"


@pytest.fixture
def no_global_known_hosts(tmp_path, monkeypatch):
    """The global known-hosts files, as a file of the test's own (empty at first)."""
    path = tmp_path / "ssh_known_hosts"
    monkeypatch.setattr("clustrix.transport.hostkeys.GLOBAL_KNOWN_HOSTS", (path,))
    return path


def test_a_configured_known_hosts_file_replaces_the_users_own(
    test_cluster, tmp_path, isolated_config, no_global_known_hosts
):
    _, right, wrong = host_key_lines(test_cluster, tmp_path)
    (isolated_config / ".ssh").mkdir()
    (isolated_config / ".ssh" / "known_hosts").write_text(wrong)
    configured = tmp_path / "configured_known_hosts"
    configured.write_text(right)
    assert transport_for(test_cluster, configured).run("echo ok").stdout == "ok\n"


def test_a_changed_key_is_reported_with_its_file_line_and_port(
    test_cluster, tmp_path, no_global_known_hosts
):
    name, _, wrong = host_key_lines(test_cluster, tmp_path)
    configured = tmp_path / "configured_known_hosts"
    configured.write_text(
        "# cluster login nodes\nlogin.example.org " + wrong.split(" ", 1)[1] + wrong
    )
    with pytest.raises(HostKeyError, match="does NOT match") as info:
        transport_for(test_cluster, configured).run("true")
    assert f"{configured}:3" in str(info.value)
    assert name in str(info.value)


def test_a_key_only_in_the_users_own_file_is_unknown_when_another_is_configured(
    test_cluster, tmp_path, isolated_config, no_global_known_hosts
):
    name, right, _ = host_key_lines(test_cluster, tmp_path)
    (isolated_config / ".ssh").mkdir()
    (isolated_config / ".ssh" / "known_hosts").write_text(right)
    configured = tmp_path / "configured_known_hosts"
    with pytest.raises(HostKeyError, match="is not in") as info:
        transport_for(test_cluster, configured).run("true")
    message = str(info.value)
    assert str(configured) in message and name in message
    assert f"--port {test_cluster.port} --known-hosts {configured}" in message
    assert not configured.exists(), "nothing is added silently"


def test_the_global_known_hosts_file_still_counts(test_cluster, tmp_path, no_global_known_hosts):
    _, right, wrong = host_key_lines(test_cluster, tmp_path)
    no_global_known_hosts.write_text(right)
    configured = tmp_path / "configured_known_hosts"
    assert transport_for(test_cluster, configured).run("echo ok").stdout == "ok\n"
    no_global_known_hosts.write_text(wrong)
    with pytest.raises(HostKeyError, match=f"{no_global_known_hosts}:1"):
        transport_for(test_cluster, configured).run("true")
    configured.write_text(right)  # a line that has the key wins, in either file
    assert transport_for(test_cluster, configured).run("echo ok").stdout == "ok\n"


def test_hashed_and_marked_known_hosts_lines(test_cluster, tmp_path, no_global_known_hosts):
    name, right, wrong = host_key_lines(test_cluster, tmp_path)
    configured = tmp_path / "configured_known_hosts"

    def hashed(line: str) -> str:
        return paramiko.HostKeys.hash_host(name) + " " + line.split(" ", 1)[1]

    kind_and_blob = right.split(" ", 1)[1]
    unusable = (
        f"@cert-authority *.example.org {kind_and_blob}"
        "garbage\n"
        f"{name} ssh-ed25519 not-base64!\n"
        f"{name} ssh-unknown-type AAAA\n"
    )
    configured.write_text(unusable + hashed(right))
    assert transport_for(test_cluster, configured).run("echo ok").stdout == "ok\n"
    configured.write_text(unusable + hashed(wrong))
    with pytest.raises(HostKeyError, match=f"{configured}:5"):
        transport_for(test_cluster, configured).run("true")
    configured.write_text(right + f"@revoked {right}")
    with pytest.raises(HostKeyError, match=f"revoked at {configured}:2"):
        transport_for(test_cluster, configured).run("true")


def _double(x):
    return 2 * x


def test_a_slurm_call_through_a_chatty_login_shell(on_slurm, chatty_login):
    # Every command of a whole call (home, environment, staging, submission, status checks,
    # results) goes through a shell that prints "errors" before each of them.
    from clustrix import Resources
    from clustrix.calls import CallSpec
    from clustrix.remote.backend import ClusterBackend
    from clustrix.schedulers import scheduler_for

    config = clustrix.get_config()
    backend = ClusterBackend(chatty_login, scheduler_for("slurm"), config)
    assert backend.work_dir.startswith("/") and "help desk" not in backend.work_dir
    job = backend.submit(
        _double,
        [((21,), {}), ((4,), {})],
        CallSpec(resources=Resources.parse(time="00:05:00")),
        config,
    )
    futures = job.futures
    assert [future.result(timeout=120) for future in futures] == [42, 8]
