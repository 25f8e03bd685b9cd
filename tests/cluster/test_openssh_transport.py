"""The OpenSSH transport (ssh_client="openssh") against the real sshd of the test cluster."""

from __future__ import annotations

import atexit
import os
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from testcluster_env import missing, read_env_file

import clustrix
from clustrix.errors import AuthenticationError, ConnectionFailedError, HostKeyError
from clustrix.transport import openssh
from clustrix.transport.openssh import OpenSSHTransport, openssh_transport
from clustrix.transport.sshargs import command_argv

from .test_ssh_transport import _CHATTY_BEGIN, _CHATTY_BLOCK, _CHATTY_END, host_key_lines


@pytest.fixture(autouse=True, scope="module")
def _masters_end_with_the_tests():
    # Masters outlive their process (ControlPersist). The shared ones (configure() calls
    # went through make_transport) end with these tests, and again when the process exits:
    # a backend kept for later calls may have reconnected meanwhile.
    atexit.register(openssh.close_all)
    yield
    openssh.close_all()


def transport_for(test_cluster, **kwargs) -> OpenSSHTransport:
    settings = {
        "port": test_cluster.port,
        "username": test_cluster.user,
        "key_file": test_cluster.key_file,
        "known_hosts_file": test_cluster.known_hosts,
        **kwargs,
    }
    return openssh_transport(test_cluster.host, **settings)


@pytest.fixture
def transport(test_cluster):
    transport = transport_for(test_cluster)
    yield transport
    transport.close()


def masters_of(transport: OpenSSHTransport) -> list[int]:
    """The ssh processes serving as the master of ``transport``'s socket."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"-M" in argv and transport.socket.encode() in argv:
            found.append(int(entry.name))
    return found


def client_port(transport: OpenSSHTransport) -> str:
    """The local port of the connection a command arrived by (the master's)."""
    return transport.run('set -- $SSH_CLIENT; printf %s "$2"').stdout


# ---------------------------------------------------------------- commands


def test_output_exit_codes_and_stderr(test_cluster, transport):
    assert transport.run("echo hi").stdout == "hi\n"
    failed = transport.run("echo out; echo oops >&2; exit 3", check=False)
    assert (failed.exit_code, failed.stdout, failed.stderr) == (3, "out\n", "oops\n")
    assert transport.run("exit 255", check=False).exit_code == 255, "the command's own 255"
    with pytest.raises(clustrix.errors.CommandError, match="exit code 4"):
        transport.run("exit 4")
    assert transport.run("cat; echo done # a comment", timeout=30).stdout == "done\n"
    quoted = shlex.quote("it's  two  spaces; $HOME `x`")
    assert transport.run(f"printf %s {quoted}").stdout == "it's  two  spaces; $HOME `x`"
    assert transport.home().startswith("/") and transport.home().endswith(test_cluster.user)


def test_a_binary_round_trip_of_a_few_mib_is_exact(transport):
    data = os.urandom(3 * 2**20) + bytes(range(256)) * 4096 + b"\r\n\x00~.\n"
    result = transport.run("cat; head -c 100000 /dev/zero >&2", stdin=data, timeout=120)
    assert result.stdout_bytes == data
    assert len(result.stderr) == 100000


def test_a_command_past_its_timeout_raises(transport):
    started = time.monotonic()
    with pytest.raises(TimeoutError, match="within 1 s"):
        transport.run("sleep 30", timeout=1)
    assert time.monotonic() - started < 20
    assert transport.run("echo after").stdout == "after\n"


# ---------------------------------------------------------------- one master


def test_one_master_carries_every_command(transport):
    transport.run("true")
    pid = transport.master_pid()
    assert pid is not None and masters_of(transport) == [pid]
    ports: list[str] = []

    def work() -> None:
        for _ in range(5):
            ports.append(client_port(transport))

    threads = [threading.Thread(target=work) for _ in range(10)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(ports) == 50 and len(set(ports)) == 1, "every command came by one connection"
    assert transport.master_pid() == pid and masters_of(transport) == [pid]


def test_a_killed_master_is_replaced_by_a_new_one(transport):
    first_port = client_port(transport)
    pid = transport.master_pid()
    os.kill(pid, signal.SIGKILL)  # the master dies (or the network dropped it)
    assert transport.run("echo back").stdout == "back\n"
    assert transport.master_pid() not in (None, pid)
    assert client_port(transport) != first_port, "a new connection"


def test_a_master_dying_mid_command_raises_instead_of_returning_cut_output(transport):
    transport.run("true")
    outcome: list[object] = []

    def slow() -> None:
        try:
            outcome.append(transport.run("echo early; sleep 5; echo late", check=False))
        except BaseException as exc:
            outcome.append(exc)

    thread = threading.Thread(target=slow)
    thread.start()
    time.sleep(1.0)
    os.kill(transport.master_pid(), signal.SIGKILL)
    thread.join(timeout=30)
    (result,) = outcome
    assert isinstance(result, ConnectionFailedError), result
    assert "dropped while running 'echo early; sleep 5; echo late'" in str(result)
    assert transport.run("echo back").stdout == "back\n"


def test_close_ends_the_master(transport):
    transport.run("true")
    pid = transport.master_pid()
    transport.close()
    assert transport.master_pid() is None
    assert not Path(f"/proc/{pid}").exists() or pid not in masters_of(transport)
    assert transport.run("echo reopened").stdout == "reopened\n"


def test_a_stream_reuses_the_master(transport):
    transport.run("true")
    pid = transport.master_pid()
    stream = transport.open_stream("echo started; cat")
    try:
        assert stream.recv(100) == b"started\n"
        payload = bytes(range(256)) * 1024
        stream.send(payload)
        received = bytearray()
        while len(received) < len(payload):
            chunk = stream.recv(65536)
            assert chunk, "the stream ended early"
            received += chunk
        assert bytes(received) == payload
    finally:
        stream.close()
    assert transport.master_pid() == pid and masters_of(transport) == [pid]


# ---------------------------------------------------------------- refusals


def test_a_changed_host_key_is_refused_naming_the_file_and_line(test_cluster, tmp_path):
    name, _, wrong = host_key_lines(test_cluster, tmp_path)
    configured = tmp_path / "known_hosts"
    configured.write_text("# login nodes\n" + wrong)
    for policy in ("strict", "accept-new"):
        transport = transport_for(
            test_cluster, known_hosts_file=str(configured), host_key_policy=policy
        )
        with pytest.raises(HostKeyError, match="does NOT match") as info:
            transport.run("true")
        assert f"{configured}:2" in str(info.value) and name in str(info.value)
        assert info.value.fingerprint.startswith("SHA256:")
        assert transport.master_pid() is None
    assert configured.read_text() == "# login nodes\n" + wrong, "nothing was changed"


def test_an_unknown_host_is_refused_or_recorded_as_the_policy_says(test_cluster, tmp_path):
    configured = tmp_path / "known_hosts"
    strict = transport_for(test_cluster, known_hosts_file=str(configured))
    with pytest.raises(HostKeyError, match="is not in") as info:
        strict.run("true")
    assert f"--port {test_cluster.port} --known-hosts {configured}" in str(info.value)
    assert not configured.exists() or not configured.read_text().strip()
    accepting = transport_for(
        test_cluster, known_hosts_file=str(configured), host_key_policy="accept-new"
    )
    assert accepting.run("echo hi").stdout == "hi\n"
    accepting.close()
    assert "ssh-ed25519" in configured.read_text()
    strict = transport_for(test_cluster, known_hosts_file=str(configured))
    assert strict.run("echo known").stdout == "known\n"
    strict.close()


def test_authentication_and_connection_failures(test_cluster, tmp_path):
    wrong = tmp_path / "wrong"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(wrong)], check=True)
    with pytest.raises(AuthenticationError, match="Permission denied"):
        transport_for(test_cluster, key_file=str(wrong)).run("true")
    with pytest.raises(AuthenticationError, match="does not exist"):
        transport_for(test_cluster, key_file=str(tmp_path / "nope"))
    closed = _free_port()
    with pytest.raises(ConnectionFailedError, match="Connection refused"):
        transport_for(test_cluster, port=closed).run("true")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


# ---------------------------------------------------------------- the ssh config


def _write_ssh_config(test_cluster, home: Path, text: str) -> None:
    ssh_dir = home / ".ssh"
    ssh_dir.mkdir(exist_ok=True)
    (ssh_dir / "known_hosts").write_text(Path(test_cluster.known_hosts).read_text())
    (ssh_dir / "config").write_text(text)


def test_a_host_alias_with_a_proxy_command_only_openssh_can_follow(test_cluster, isolated_config):
    # The proxy is ssh itself, through the same sshd: paramiko's transport has no ProxyCommand.
    proxy = (
        f"ssh -F /dev/null -i {test_cluster.key_file} -o IdentitiesOnly=yes "
        f"-o UserKnownHostsFile={test_cluster.known_hosts} -o StrictHostKeyChecking=yes "
        f"-p {test_cluster.port} -l {test_cluster.user} -W %h:%p {test_cluster.host}"
    )
    _write_ssh_config(
        test_cluster,
        isolated_config,
        "Host testlogin\n"
        f"  HostName {test_cluster.host}\n  Port {test_cluster.port}\n"
        f"  User {test_cluster.user}\n  IdentityFile {test_cluster.key_file}\n"
        f"  ProxyCommand {proxy}\n",
    )
    transport = openssh_transport("testlogin")
    try:
        assert transport.where == f"{test_cluster.user}@{test_cluster.host}:{test_cluster.port}"
        assert transport.run("whoami").stdout.strip() == test_cluster.user
    finally:
        transport.close()

    # ssh_client="auto" sees the ProxyCommand and takes the system ssh for it.
    clustrix.configure(
        cluster_type="ssh", cluster_host="testlogin", remote_work_dir=test_cluster.work_dir
    )
    from clustrix.remote.backend import make_transport

    assert isinstance(make_transport(clustrix.get_config()), OpenSSHTransport)

    @clustrix.cluster
    def where():
        import getpass

        return getpass.getuser()

    assert where() == test_cluster.user


# ---------------------------------------------------------------- whole calls


def _double(x):
    return 2 * x


def test_a_slurm_job_end_to_end(test_cluster, monkeypatch):
    if not test_cluster.slurm:
        missing("SLURM is not running on the test cluster")
    clustrix.configure(**test_cluster.settings("slurm", ssh_client="openssh"))
    commands: list[str] = []
    original = OpenSSHTransport.run

    def counting(self, command, **kwargs):
        commands.append(command)
        return original(self, command, **kwargs)

    monkeypatch.setattr(OpenSSHTransport, "run", counting)
    assert clustrix.cluster(_double)(21) == 42
    assert any("sbatch" in command for command in commands)


def test_a_worker_pool_through_the_master(test_cluster, monkeypatch):
    if not test_cluster.slurm:
        missing("SLURM is not running on the test cluster")
    clustrix.configure(**test_cluster.settings("slurm", ssh_client="openssh"))
    streams: list[str] = []
    original = OpenSSHTransport.open_stream

    def counting(self, command):
        streams.append(command)
        return original(self, command)

    monkeypatch.setattr(OpenSSHTransport, "open_stream", counting)
    f = clustrix.cluster(_double)
    with clustrix.pool(workers=1, memory="300MB", time="00:05:00"):
        assert f(1) == 2
        assert [f(x) for x in (2, 3)] == [4, 6]
    assert streams, "the pool's relay link went through the OpenSSH transport"


# ---------------------------------------------------------------- a chatty login shell


@pytest.fixture
def chatty_openssh(test_cluster):
    """An OpenSSH transport whose login shell prints on stdout and stderr before each command."""
    admin = test_cluster.transport()
    transport = transport_for(test_cluster)
    marker = f"$HOME/.clustrix-chatty-shell/{client_port(transport)}"
    admin.run(
        f"grep -qxF {shlex.quote(_CHATTY_BEGIN)} ~/.bashrc || "
        f"{{ printf %s {shlex.quote(_CHATTY_BLOCK)}; cat ~/.bashrc; }} > ~/.bashrc.clustrix-new "
        "&& mv ~/.bashrc.clustrix-new ~/.bashrc"
    )
    admin.run(f'mkdir -p ~/.clustrix-chatty-shell && touch "{marker}"')
    try:
        raw = subprocess.run(
            command_argv(transport.program, transport.options, transport.socket, "true"),
            capture_output=True,
            check=False,
        )
        assert b"help desk" in raw.stdout and b"notice" in raw.stderr, "the shell is chatty"
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


def test_output_is_exact_under_a_chatty_login_shell(chatty_openssh):
    assert chatty_openssh.run("printf x").stdout == "x"
    every_byte = bytes(range(256)) * 64
    assert chatty_openssh.run("cat", stdin=every_byte).stdout_bytes == every_byte
    failed = chatty_openssh.run("echo oops >&2; exit 7", check=False)
    assert (failed.exit_code, failed.stdout, failed.stderr) == (7, "", "oops\n")
    assert chatty_openssh.home().startswith("/") and "\n" not in chatty_openssh.home()
    stream = chatty_openssh.open_stream("echo ready")
    assert stream.recv(100) == b"ready\n"
    stream.close()


# ---------------------------------------------------------------- a second factor

ASKPASS = """\
import base64, hashlib, hmac, os, struct, sys, time
# SSH_ASKPASS for the one-time code of the test cluster's multi-factor sshd (RFC 6238, SHA-1,
# 6 digits). Each prompt is logged (never the code). The answer is the code of the current
# time step or, where the server's users file shows that a code of this step or a later one
# was used already (another login within the same 30 s), the code after that one: the server
# refuses a code older than the last one used, as a replay.
text = open(os.environ["CLUSTRIX_TEST_OATH_SECRET_FILE"]).read().strip()
try:
    secret = bytes.fromhex(text)
except ValueError:
    secret = base64.b32decode(text.upper() + "=" * (-len(text) % 8))


def code(step):
    digest = hmac.new(secret, struct.pack(">Q", step), hashlib.sha1).digest()
    offset = digest[-1] & 15
    return "%06d" % ((struct.unpack(">I", digest[offset:offset + 4])[0] & 0x7FFFFFFF) % 10**6)


log = os.environ["CLUSTRIX_TEST_ASKPASS_LOG"]
with open(log, "a") as handle:
    handle.write(" ".join(sys.argv[1:]).replace("\\n", " ") + "\\n")
with open(log) as handle:
    asked = sum(1 for _ in handle)
now = int(time.time()) // int(os.environ["CLUSTRIX_TEST_OATH_TOTP_STEP"])
step = now + asked - 1  # without a users file: one step further at each prompt
users = os.environ.get("CLUSTRIX_TEST_OATH_USERS_FILE")
if users and os.path.isfile(users):
    step = now
    for line in open(users):
        fields = line.split()
        if len(fields) > 5 and fields[1] == os.environ["CLUSTRIX_TEST_SSH_USER"]:
            used = [s for s in range(now - 200, now + 200) if code(s) == fields[5]]
            step = max([now] + [s + 1 for s in used])
print(code(step))
"""


@pytest.fixture
def mfa_login(test_cluster, tmp_path, monkeypatch):
    """(transport, prompts) for the multi-factor sshd, answering through SSH_ASKPASS."""
    values = read_env_file()
    port, secret = (
        values.get("CLUSTRIX_TEST_MFA_PORT"),
        values.get("CLUSTRIX_TEST_OATH_SECRET_FILE"),
    )
    if not port and not secret:
        pytest.skip("the test cluster has no multi-factor sshd (CLUSTRIX_TEST_MFA_PORT)")
    if not (port and secret and Path(secret).is_file()):
        missing(f"the multi-factor sshd is not fully configured: port {port}, secret {secret}")
    script, log = tmp_path / "askpass", tmp_path / "prompts"
    script.write_text(f"#!{sys.executable}\n{ASKPASS}")
    script.chmod(0o700)
    monkeypatch.setenv("CLUSTRIX_TEST_OATH_SECRET_FILE", secret)
    monkeypatch.setenv(
        "CLUSTRIX_TEST_OATH_TOTP_STEP", values.get("CLUSTRIX_TEST_OATH_TOTP_STEP", "30")
    )
    monkeypatch.setenv(
        "CLUSTRIX_TEST_OATH_USERS_FILE", values.get("CLUSTRIX_TEST_OATH_USERS_FILE", "")
    )
    monkeypatch.setenv("CLUSTRIX_TEST_SSH_USER", test_cluster.user)
    monkeypatch.setenv("CLUSTRIX_TEST_ASKPASS_LOG", str(log))
    monkeypatch.setenv("SSH_ASKPASS", str(script))
    monkeypatch.setenv("SSH_ASKPASS_REQUIRE", "force")  # even with a terminal attached
    known_hosts = tmp_path / "known_hosts"
    known_hosts.write_text(Path(test_cluster.known_hosts).read_text())
    transport = transport_for(
        test_cluster,
        port=int(port),
        known_hosts_file=str(known_hosts),
        host_key_policy="accept-new",  # its port may not be in the cluster's known_hosts yet
    )

    def prompts() -> int:
        return len(log.read_text().splitlines()) if log.exists() else 0

    yield transport, prompts
    transport.close()


def _logged_in(transport: OpenSSHTransport) -> str:
    # The code is per user: another test logging in at the same moment can use it up first;
    # a new master is then asked again (with the next code).
    for attempt in range(3):
        try:
            return transport.run("whoami").stdout.strip()
        except AuthenticationError:
            if attempt == 2:
                raise
    raise AssertionError("unreachable")


def test_a_second_factor_is_asked_once_for_the_master(test_cluster, mfa_login):
    transport, prompts = mfa_login
    assert _logged_in(transport) == test_cluster.user
    asked = prompts()
    assert asked >= 1, "the server asked for the one-time code"
    for _ in range(5):
        assert transport.run("echo again").stdout == "again\n"
    stream = transport.open_stream("echo streamed")
    assert stream.recv(100) == b"streamed\n"
    stream.close()
    assert prompts() == asked, "later commands reuse the master without asking"
    os.kill(transport.master_pid(), signal.SIGKILL)
    assert _logged_in(transport) == test_cluster.user
    assert prompts() > asked, "a new master asks again"
