"""Code blocks of the README and the getting-started docs, to run them as tests.

Conventions, for whoever writes these documents:

- Every ```python block is run, as a script of its own (``python snippet.py``), in an empty
  folder with an empty home folder. A block whose first line is ``# name.py`` is saved under
  that name, so later ``python name.py`` commands in the same document refer to a real file.
- A block that cannot run anywhere (a fragment, say) gets the line
  ``<!-- not-run: the reason -->`` right before its opening fence. Such blocks are counted
  and reported as skipped with their reason; keep them rare.
- A block that configures a cluster (a ``cluster_type`` other than ``local``, or a
  placeholder host such as ``login.example.edu``) runs against the local test cluster
  (``scripts/testcluster.sh up``), see ``to_test_cluster``.
"""

from __future__ import annotations

import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# The documents whose code blocks are checked, when they exist.
DOCUMENTS = ["README.md", "docs/getting-started.md", "docs/joblib.md"]

_FENCE = re.compile(r"^(`{3,})\s*([\w{}+-]*)[^`]*$")
_NOT_RUN = re.compile(r"^<!--\s*not-run:\s*(.*?)\s*-->\s*$")
_FILE_HEADER = re.compile(r"^#\s*([\w-]+\.py)\s*$")

PLACEHOLDER_HOSTS = re.compile(r"\b[\w.-]*example\.(?:edu|org|com|net)\b")
_CLUSTER_TYPE = re.compile(r"""cluster_type\s*=\s*["'](\w+)["']""")


@dataclass(frozen=True)
class Snippet:
    document: str  # path relative to the repository
    line: int  # line of the opening fence
    language: str
    code: str
    not_run: str | None  # the reason given in a not-run marker

    @property
    def id(self) -> str:
        return f"{self.document}:{self.line}"

    @property
    def file_name(self) -> str | None:
        """The file name the block declares on its first line (``# name.py``), if any."""
        first = self.code.splitlines()[0] if self.code.strip() else ""
        match = _FILE_HEADER.match(first.strip())
        return match.group(1) if match else None

    @property
    def cluster_type(self) -> str | None:
        """The backend a cluster block configures; None for blocks that run locally."""
        match = _CLUSTER_TYPE.search(self.code)
        if match and match.group(1) != "local":
            return match.group(1)
        if PLACEHOLDER_HOSTS.search(self.code):
            return "ssh"
        return None


def documents() -> list[str]:
    return [name for name in DOCUMENTS if (ROOT / name).is_file()]


def parse(text: str, document: str = "<text>") -> list[Snippet]:
    """Every fenced block of a markdown text, in order."""
    snippets = []
    lines = text.splitlines()
    index = 0
    while index < len(lines):
        opening = _FENCE.match(lines[index])
        if not opening:
            index += 1
            continue
        fence, language = opening.groups()
        previous = next((line for line in reversed(lines[:index]) if line.strip()), "")
        marker = _NOT_RUN.match(previous.strip())
        end = index + 1
        while end < len(lines) and not lines[end].startswith(fence):
            end += 1
        snippets.append(
            Snippet(
                document=document,
                line=index + 1,
                language=language.lower(),
                code="\n".join(lines[index + 1 : end]) + "\n",
                not_run=marker.group(1) if marker else None,
            )
        )
        index = end + 1
    return snippets


def snippets(language: str | None = None) -> list[Snippet]:
    found = []
    for document in documents():
        text = (ROOT / document).read_text(encoding="utf-8")
        found += [s for s in parse(text, document) if language is None or s.language == language]
    return found


def not_run_markers(text: str) -> list[int]:
    """Lines holding a not-run marker (to check that each one precedes a python block)."""
    return [i + 1 for i, line in enumerate(text.splitlines()) if _NOT_RUN.match(line.strip())]


# Keyword arguments whose values are placeholders for a real cluster, and the test cluster's
# value that replaces each. Settings a block does not name come from CLUSTRIX_* variables
# (port, known_hosts file, poll interval), so the block's text stays what readers see.
_CONNECTION_KEYWORDS = {
    "cluster_host": "host",
    "username": "user",
    "key_file": "key_file",
    "known_hosts_file": "known_hosts",
    "remote_work_dir": "work_dir",
}


def to_test_cluster(code: str, cluster: object, partition: str) -> str:
    """The block with its placeholder connection values replaced by the test cluster's.

    ``cluster_host="login.example.edu"`` becomes the test host (127.0.0.1), ``username``,
    ``key_file``, ``known_hosts_file`` and ``remote_work_dir`` the test cluster's,
    ``cluster_port=N`` its SSH port, and ``partition``/``default_partition`` its partition.
    """
    for keyword, attribute in _CONNECTION_KEYWORDS.items():
        value = str(getattr(cluster, attribute))
        code = re.sub(
            rf"""\b({keyword}\s*=\s*)(["'])[^"'\n]*\2""",
            lambda m, value=value: m.group(1) + repr(value),
            code,
        )
    code = re.sub(r"\b(cluster_port\s*=\s*)\d+", rf"\g<1>{cluster.port}", code)  # type: ignore[attr-defined]
    code = re.sub(
        r"""\b((?:default_)?partition\s*=\s*)(["'])[^"'\n]*\2""",
        lambda m: m.group(1) + repr(partition),
        code,
    )
    leftover = PLACEHOLDER_HOSTS.search(code)
    if leftover:
        raise AssertionError(
            f"placeholder {leftover.group(0)!r} has no test-cluster value: extend the mapping "
            "in tests/doc_snippets.py"
        )
    return code


def run_block(
    snippet: Snippet, folder: Path, code: str, env: dict[str, str], timeout: float
) -> subprocess.CompletedProcess[str]:
    """Run ``code`` (the block, perhaps adapted) as a script in ``folder``; fail with output."""
    script = folder / (snippet.file_name or "snippet.py")
    script.write_text(code, encoding="utf-8")
    result = subprocess.run(
        [sys.executable, script.name],
        cwd=folder,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert result.returncode == 0, (
        f"{snippet.id} failed (exit code {result.returncode})\n--- code\n{code}"
        f"--- stdout\n{result.stdout}--- stderr\n{result.stderr}"
    )
    return result
