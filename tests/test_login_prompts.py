"""Who answers a server's login prompts, without a server (tests/cluster/test_site_logins.py
logs in for real)."""

from __future__ import annotations

import builtins
import getpass

import pytest

import clustrix
from clustrix.errors import AuthenticationError
from clustrix.transport import login

PROMPTS = [("Username: ", True), ("One-time password: ", False)]


def test_set_login_prompt_takes_a_callable_or_none():
    def handler(title, instructions, prompts):
        return ["x" for _ in prompts]

    clustrix.set_login_prompt(handler)
    assert login.login_prompt() is handler
    clustrix.set_login_prompt(None)
    assert login.login_prompt() is None
    with pytest.raises(TypeError, match="callable or None"):
        clustrix.set_login_prompt("123456")


def test_without_a_terminal_or_notebook_nothing_asks():
    assert login.interactive_prompt("u@h:22") is None  # pytest's stdin is not a terminal


def test_in_a_notebook_secrets_go_through_getpass_and_the_rest_through_input(monkeypatch):
    shown = []

    def fake_getpass(prompt):
        shown.append(("getpass", prompt))
        return "654321"

    fake_getpass.__module__ = "ipykernel.kernelbase"  # as a kernel's own getpass
    monkeypatch.setattr(getpass, "getpass", fake_getpass)
    monkeypatch.setattr(builtins, "input", lambda prompt: shown.append(("input", prompt)) or "me")
    ask = login.interactive_prompt("u@h:22")
    assert ask is not None
    assert ask("Site login", "", PROMPTS) == ["me", "654321"]
    assert shown == [
        ("input", "Site login\n[u@h:22] Username: "),
        ("getpass", "[u@h:22] One-time password: "),
    ]


def test_a_front_end_without_input_is_an_authentication_error(monkeypatch):
    class StdinNotImplementedError(Exception):
        pass

    def no_input(prompt):
        raise StdinNotImplementedError

    no_input.__module__ = "ipykernel.kernelbase"
    monkeypatch.setattr(getpass, "getpass", no_input)
    ask = login.interactive_prompt("u@h:22")
    with pytest.raises(AuthenticationError, match="set_login_prompt"):
        ask("", "", [("Code: ", False)])


@pytest.mark.parametrize(
    ("answers", "message"),
    [
        ("123456", "must return a list of strings"),
        (None, "must return a list of strings"),
        (["1"], r"must return 2 string\(s\)"),
        (["1", 2], r"must return 2 string\(s\)"),
    ],
)
def test_answers_of_the_wrong_shape_are_refused(answers, message):
    with pytest.raises(AuthenticationError, match=message):
        login._checked(answers, 2, "u@h:22")
    assert login._checked(("a", "b"), 2, "u@h:22") == ["a", "b"]
