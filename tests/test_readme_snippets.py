"""The README's code blocks (and those of docs/getting-started.md) run, and are true.

Every ```python block that needs no cluster runs here as a script; cluster blocks run in
tests/cluster/test_readme_cluster_snippets.py against the test cluster. Shell and text blocks
are checked without running them: the files, ``clustrix`` subcommands and options, pip extras
and ``CLUSTRIX_*`` variables they name must exist. See tests/doc_snippets.py for the
conventions (``<!-- not-run: reason -->``, ``# name.py`` headers).
"""

from __future__ import annotations

import os
import re
import shlex
from pathlib import Path

import click
import doc_snippets as ds
import pytest

from clustrix.cli import main as cli
from clustrix.config import ENV_PREFIX, FIELD_SPECS, NON_FIELD_ENV, read_config_file

PYTHON_BLOCKS = ds.snippets("python")
LOCAL_BLOCKS = [s for s in PYTHON_BLOCKS if s.cluster_type is None or s.not_run]
COMMAND_BLOCKS = [
    s for s in ds.snippets() if s.language in ("bash", "sh", "shell", "console", "text")
]
YAML_BLOCKS = [s for s in ds.snippets() if s.language in ("yaml", "yml")]


# --------------------------------------------------------------------------- python blocks


def test_the_readme_has_python_blocks():
    assert any(s.document == "README.md" for s in PYTHON_BLOCKS)


@pytest.mark.parametrize("snippet", LOCAL_BLOCKS, ids=lambda s: s.id)
def test_python_block_runs(snippet: ds.Snippet, tmp_path: Path):
    if snippet.not_run:
        pytest.skip(f"marked not-run: {snippet.not_run}")
    env = {**os.environ, "MPLBACKEND": "Agg"}  # HOME is this test's own (tests/conftest.py)
    ds.run_block(snippet, tmp_path, snippet.code, env, timeout=300)


def test_not_run_markers_precede_python_blocks_and_give_a_reason():
    for document in ds.documents():
        text = (ds.ROOT / document).read_text(encoding="utf-8")
        marked = {s.line for s in ds.parse(text, document) if s.not_run is not None}
        python_marked = {
            s.line for s in ds.parse(text, document) if s.not_run and s.language == "python"
        }
        assert marked == python_marked, f"{document}: not-run markers before non-python blocks"
        assert len(ds.not_run_markers(text)) == len(marked), (
            f"{document}: a not-run marker that is not right before a code block"
        )


def test_the_block_parser():
    text = (
        "Intro\n\n```python\nprint(1)\n```\n\n<!-- not-run: a fragment -->\n"
        "```python\nx = ...\n```\n\n````text\n```\n````\n```bash\nls\n```\n"
    )
    blocks = ds.parse(text)
    assert [(b.language, b.line, b.not_run) for b in blocks] == [
        ("python", 3, None),
        ("python", 8, "a fragment"),
        ("text", 12, None),
        ("bash", 15, None),
    ]
    assert blocks[2].code == "```\n"
    assert ds.parse("```python\n# pi.py\nimport os\n```\n")[0].file_name == "pi.py"


def test_cluster_blocks_are_recognised():
    (local,) = ds.parse("```python\nclustrix.configure(default_cores=4)\n```\n")
    (slurm,) = ds.parse('```python\nconfigure(cluster_type="slurm")\n```\n')
    (host,) = ds.parse('```python\nconfigure(cluster_host="login.example.edu")\n```\n')
    assert (local.cluster_type, slurm.cluster_type, host.cluster_type) == (None, "slurm", "ssh")


# --------------------------------------------------------------------------- shell blocks


def _commands(code: str) -> list[list[str]]:
    """Simple commands of a shell (or text) block: words, split at && || ; and |."""
    commands = []
    for line in code.splitlines():
        try:
            words = shlex.split(line, comments=True)
        except ValueError:
            words = line.split()
        current: list[str] = []
        for word in words:
            if word in ("&&", "||", ";", "|"):
                commands.append(current)
                current = []
            else:
                current.append(word)
        commands.append(current)
    return [c for c in commands if c]


def _pyproject_extras() -> set[str]:
    text = (ds.ROOT / "pyproject.toml").read_text(encoding="utf-8")
    section = text.split("[project.optional-dependencies]", 1)[1].split("\n[", 1)[0]
    return set(re.findall(r"^([\w-]+)\s*=", section, flags=re.MULTILINE))


def _check_clustrix(words: list[str]) -> None:
    command: click.Command = cli
    rest = list(words)
    while isinstance(command, click.Group) and rest and rest[0] in command.commands:
        command = command.commands[rest.pop(0)]
    if isinstance(command, click.Group) and rest and not rest[0].startswith(("-", "[")):
        raise AssertionError(f"clustrix has no command {' '.join(words[: -len(rest) + 1])!r}")
    options = {"--help"} | {
        option
        for parameter in command.params
        for option in [*getattr(parameter, "opts", []), *getattr(parameter, "secondary_opts", [])]
    }
    for word in rest:
        word = word.strip("[]")
        if word.startswith("-"):
            name = word.split("=", 1)[0]
            assert name in options, f"'clustrix {' '.join(words)}': no option {name}"


def _check_variable(name: str) -> None:
    if name.startswith(ENV_PREFIX):
        setting = name[len(ENV_PREFIX) :].lower()
        assert setting in FIELD_SPECS or name in NON_FIELD_ENV, f"{name} is not a setting"


def _check_command(words: list[str], declared: set[str]) -> None:
    while words and "=" in words[0] and not words[0].startswith("-"):  # VAR=value prefix
        _check_variable(words.pop(0).split("=", 1)[0])
    if words and words[0] == "sudo":
        words = words[1:]
    if not words:
        return
    program, arguments = words[0], words[1:]
    for word in words:
        if re.match(r"^(examples|bench|scripts|tests|docs)/", word):
            assert (ds.ROOT / word).exists(), f"{word} does not exist"
    if program in ("python", "python3") and arguments and arguments[0].endswith(".py"):
        script = arguments[0]
        assert script in declared or (ds.ROOT / script).is_file(), f"{script} does not exist"
    elif program == "bash" and arguments and not arguments[0].startswith("-"):
        assert (ds.ROOT / arguments[0]).is_file(), f"{arguments[0]} does not exist"
    elif program == "export":
        for assignment in arguments:
            _check_variable(assignment.split("=", 1)[0])
    elif program == "pip" and "install" in arguments:
        extras = _pyproject_extras()
        for word in arguments:
            match = re.fullmatch(r"\.\[([\w,-]+)\]", word)
            if match:
                missing = set(match.group(1).split(",")) - extras
                assert not missing, f"pyproject.toml has no extra {sorted(missing)}"
    elif program == "clustrix":
        _check_clustrix(arguments)


@pytest.mark.parametrize("snippet", COMMAND_BLOCKS, ids=lambda s: s.id)
def test_commands_name_what_exists(snippet: ds.Snippet):
    declared = {s.file_name for s in PYTHON_BLOCKS if s.document == snippet.document}
    for words in _commands(snippet.code):
        _check_command(words, {name for name in declared if name})


def test_readme_inline_commands_and_paths_exist():
    text = (ds.ROOT / "README.md").read_text(encoding="utf-8")
    for span in re.findall(r"`([^`\n]+)`", text):
        words = span.split()
        if words and words[0] in ("clustrix", "python", "bash", "pip"):
            _check_command(words, set())
    for path in re.findall(r"\b(?:examples|bench|scripts|docs|tests)/[\w./-]*\w", text):
        assert (ds.ROOT / path).exists(), f"README mentions {path}, which does not exist"
    for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text):
        if "://" not in target:
            assert (ds.ROOT / target).exists(), f"README links to {target}, which does not exist"


def test_the_command_checks_catch_mistakes():
    with pytest.raises(AssertionError):
        _check_command(["python", "examples/missing.py"], set())
    with pytest.raises(AssertionError):
        _check_command(["clustrix", "config", "shwo"], set())
    with pytest.raises(AssertionError):
        _check_command(["clustrix", "logs", "ID", "--tail"], set())
    with pytest.raises(AssertionError):
        _check_command(["export", "CLUSTRIX_CLUSTER_HOTS=x"], set())
    with pytest.raises(AssertionError):
        _check_command(["pip", "install", "-e", ".[tests]"], set())
    _check_command(["clustrix", "logs", "ID", "--task", "3", "--follow"], set())


# --------------------------------------------------------------------------- yaml blocks


@pytest.mark.parametrize("snippet", YAML_BLOCKS, ids=lambda s: s.id)
def test_configuration_files_are_valid(snippet: ds.Snippet, tmp_path: Path):
    path = tmp_path / "clustrix.yaml"
    path.write_text(snippet.code, encoding="utf-8")
    read_config_file(path)  # raises ConfigError naming the line of a wrong setting
