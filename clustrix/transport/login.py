"""The questions a server asks during a login (keyboard-interactive): one-time codes, passwords.

Sites with multi-factor logins accept the key and then ask, through keyboard-interactive, for
a one-time code (or a password and a code). Those prompts are answered by, in this order:

- the ``prompt`` handler given to the transport, if any;
- the handler set with ``clustrix.set_login_prompt(handler)`` (scripts, tests, notebooks that
  prefer a widget of their own);
- the terminal, or a Jupyter notebook's input box (``getpass``: answers are never echoed),
  when there is one;

and otherwise the login fails with ``AuthenticationError`` saying how to supply an answer.
A handler is called as ``handler(title, instructions, prompts)`` where ``prompts`` is a list of
``(text, echo)`` pairs, and returns one answer (a string) per prompt. It runs in the thread that
needs the connection (the calling thread for a call, a poller's thread when a dropped
connection is made again), once per login: a new connection asks again.

Answers are handed to paramiko and dropped: never logged, never kept in an attribute.
"""

from __future__ import annotations

import getpass
import logging
import queue
import sys
import threading
from collections.abc import Callable, Sequence
from typing import Any

import paramiko

from ..errors import AuthenticationError

logger = logging.getLogger("clustrix.ssh")

#: ``handler(title, instructions, [(prompt text, echo), ...]) -> [answer, ...]``
PromptHandler = Callable[[str, str, list[tuple[str, bool]]], Sequence[str]]

#: Seconds a login may wait for answers: a person reads a code from a phone. The server's
#: own limit (OpenSSH's LoginGraceTime, 120 s by default) usually ends it first.
ANSWER_TIMEOUT = 600.0

_handler: PromptHandler | None = None


def set_login_prompt(handler: PromptHandler | None) -> None:
    """Answer the login prompts of SSH servers (one-time codes) with ``handler``; None: stop.

    ``handler(title, instructions, prompts)`` gets the server's title and instructions
    (often empty) and ``prompts``, a list of ``(text, echo)`` pairs (``echo`` False for
    secrets), and returns a list of answers, one string per prompt. It is called in the
    thread that connects, once per login. Raises ``TypeError`` if ``handler`` is neither
    callable nor None. Without a handler, prompts are asked in the terminal or notebook.
    """
    global _handler
    if handler is not None and not callable(handler):
        raise TypeError(f"the login prompt handler must be callable or None, not {handler!r}")
    _handler = handler


def login_prompt() -> PromptHandler | None:
    """The handler set with ``set_login_prompt``, or None."""
    return _handler


def _in_notebook() -> bool:
    # A Jupyter kernel forwards getpass and input to the notebook (an input box) while a cell
    # runs: ipykernel puts its own functions in their place then.
    return getattr(getpass.getpass, "__module__", "").startswith("ipykernel")


def _has_terminal() -> bool:
    return sys.stdin is not None and sys.stdin.isatty()


def interactive_prompt(where: str) -> PromptHandler | None:
    """Asking in the terminal or notebook, if there is one (else None).

    Secret prompts use ``getpass`` (nothing is echoed), others ``input``; the title and
    instructions are shown first, and each prompt names ``where`` (``user@host:port``).
    """
    if not (_has_terminal() or _in_notebook()):
        return None

    def ask(title: str, instructions: str, prompts: list[tuple[str, bool]]) -> list[str]:
        header = "".join(f"{text.strip()}\n" for text in (title, instructions) if text.strip())
        answers = []
        for number, (text, echo) in enumerate(prompts):
            shown = f"{header if number == 0 else ''}[{where}] {text.strip()} "
            try:
                # Looked up at each call: a notebook's kernel swaps in its own versions.
                answers.append(input(shown) if echo else getpass.getpass(shown))
            except Exception as exc:
                # End of input, or a notebook front end that takes no input
                # (IPython's StdinNotImplementedError): nobody can answer here.
                if isinstance(exc, EOFError) or type(exc).__name__ == "StdinNotImplementedError":
                    raise AuthenticationError(no_prompt_message(where)) from None
                raise
        return answers

    return ask


def no_prompt_message(where: str) -> str:
    return (
        f"{where} asks for more than the key at login (keyboard-interactive: a one-time code "
        "or a password), and there is no terminal to ask it in. Run from a terminal or a "
        "notebook to be asked, or answer in code with clustrix.set_login_prompt(handler), "
        "where handler(title, instructions, prompts) returns one answer per (text, echo) prompt"
    )


class InteractiveLogin:
    """The keyboard-interactive step of one login to ``where``.

    ``prompt_texts`` keeps the questions asked (never the answers), for error messages.
    """

    def __init__(self, where: str, handler: PromptHandler | None = None) -> None:
        self.where = where
        self._handler = handler
        self.prompt_texts: list[str] = []

    def authenticate(
        self, transport: paramiko.Transport, username: str, submethods: str = ""
    ) -> Any:
        """Run keyboard-interactive on ``transport``; what ``auth_interactive`` returns.

        The server's prompts are answered in this thread (so Ctrl-C and a notebook's input
        box work), while paramiko waits in a helper thread. Raises ``AuthenticationError`` if
        nothing can answer, whatever the handler raises (the login is then abandoned), and
        paramiko's ``AuthenticationException`` if the server refuses the answers.
        """
        handler = self._handler or login_prompt() or interactive_prompt(self.where)
        if handler is None:
            raise AuthenticationError(no_prompt_message(self.where))
        questions: queue.Queue[Any] = queue.Queue()
        replies: queue.Queue[list[str] | None] = queue.Queue()
        outcome: dict[str, Any] = {}
        done = object()

        def relay(title: str, instructions: str, prompts: list[tuple[str, bool]]) -> list[str]:
            # paramiko's own thread: hand the questions over, wait for the answers.
            if not prompts:
                return []  # OpenSSH's closing round, with nothing to ask
            questions.put((title, instructions, list(prompts)))
            return replies.get() or []

        def run() -> None:
            try:
                outcome["value"] = transport.auth_interactive(username, relay, submethods)
            except BaseException as exc:  # handed to the waiting thread below
                outcome["error"] = exc
            finally:
                questions.put(done)

        saved_timeout = transport.auth_timeout
        transport.auth_timeout = ANSWER_TIMEOUT
        waiter = threading.Thread(target=run, name=f"clustrix-login {self.where}", daemon=True)
        waiter.start()
        try:
            self._answer(handler, questions, replies, done)
        except BaseException:
            transport.close()  # nothing is sent: the login is abandoned
            replies.put(None)
            raise
        finally:
            waiter.join(timeout=5)
            transport.auth_timeout = saved_timeout
        if "error" in outcome:
            raise outcome["error"]
        return outcome.get("value")

    def _answer(
        self,
        handler: PromptHandler,
        questions: queue.Queue[Any],
        replies: queue.Queue[list[str] | None],
        done: object,
    ) -> None:
        while (item := questions.get()) is not done:
            title, instructions, prompts = item
            self.prompt_texts += [text.strip() for text, _ in prompts]
            logger.debug("%s asks %d login question(s)", self.where, len(prompts))
            replies.put(_checked(handler(title, instructions, prompts), len(prompts), self.where))


def _checked(answers: Any, expected: int, where: str) -> list[str]:
    """``answers`` as a list of ``expected`` strings; ``AuthenticationError`` otherwise."""
    if isinstance(answers, str) or not isinstance(answers, Sequence):
        raise AuthenticationError(
            f"the login prompt handler for {where} must return a list of strings, one per "
            f"prompt, not a {type(answers).__name__}"
        )
    if len(answers) != expected or not all(isinstance(a, str) for a in answers):
        raise AuthenticationError(
            f"the login prompt handler for {where} must return {expected} string(s), one per "
            f"prompt; it returned {len(answers)} value(s)"
        )
    return list(answers)


class LoginTransport(paramiko.Transport):
    """A paramiko ``Transport`` whose keyboard-interactive step asks through ``login``.

    After a key is accepted with "partial success", ``SSHClient.connect`` continues with
    ``auth_interactive_dumb``, which would print the prompts and read the answers with
    ``input()`` (echoed, and blocking where there is no terminal); here it goes through
    ``InteractiveLogin`` instead.
    """

    login: InteractiveLogin | None = None

    def auth_interactive_dumb(
        self, username: str, handler: Any = None, submethods: str = ""
    ) -> Any:
        if self.login is None:
            raise AuthenticationError("keyboard-interactive login without a prompt")
        return self.login.authenticate(self, username, submethods)
