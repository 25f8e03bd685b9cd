"""The transport for this machine: commands' output is theirs alone, stdin is passed whole."""

from __future__ import annotations

from clustrix.transport.local import LocalTransport


def test_output_is_exact_when_the_shell_prints_first(tmp_path, monkeypatch):
    # A non-interactive bash runs $BASH_ENV first (sites set it to load modules, say).
    chatty = tmp_path / "bash_env"
    chatty.write_text("echo 'Please report errors to the help desk.'\necho notice >&2\n")
    monkeypatch.setenv("BASH_ENV", str(chatty))
    transport = LocalTransport()
    assert transport.run("printf x").stdout == "x"
    failed = transport.run("echo oops >&2; exit 7", check=False)
    assert (failed.exit_code, failed.stdout, failed.stderr) == (7, "", "oops\n")
    every_byte = bytes(range(256)) * 64
    assert transport.run("cat", stdin=every_byte).stdout_bytes == every_byte
