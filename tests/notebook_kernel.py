"""Running notebooks the way Jupyter does: a real ipykernel, driven by nbclient.

The kernel is this very interpreter (so it imports the Clustrix under test), declared in a
kernel spec of its own under a temporary JUPYTER_PATH, so no installed spec is needed.
"""

from __future__ import annotations

import json
import queue
import sys
import time
from pathlib import Path
from typing import Any

import nbformat
from jupyter_client import KernelManager
from nbclient import NotebookClient

KERNEL_NAME = "clustrix-tests"
NOTEBOOKS = Path(__file__).resolve().parent.parent / "docs" / "notebooks"
WIDGET = "application/vnd.jupyter.widget-view+json"


def install_kernel(folder: Path) -> Path:
    """Write a kernel spec running this interpreter; put the returned folder on JUPYTER_PATH."""
    spec = folder / "kernels" / KERNEL_NAME
    spec.mkdir(parents=True, exist_ok=True)
    (spec / "kernel.json").write_text(
        json.dumps(
            {
                "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
                "display_name": "Python (Clustrix tests)",
                "language": "python",
                "metadata": {"debugger": False},
            }
        )
    )
    return folder


def notebook(*cells: str) -> nbformat.NotebookNode:
    """A notebook whose code cells are ``cells``."""
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(source) for source in cells]
    return nb


def execute(nb: nbformat.NotebookNode, cwd: Path, timeout: float = 120) -> nbformat.NotebookNode:
    """Run every cell in a fresh kernel; a cell that raises fails with its traceback."""
    client = NotebookClient(
        nb,
        timeout=timeout,
        kernel_name=KERNEL_NAME,
        resources={"metadata": {"path": str(cwd)}},
    )
    client.execute()
    return nb


def outputs(nb: nbformat.NotebookNode, index: int) -> list[dict[str, Any]]:
    return list(nb.cells[index].outputs)


def text_of(nb: nbformat.NotebookNode, index: int) -> str:
    """Everything a cell printed or displayed as text."""
    parts = []
    for output in nb.cells[index].outputs:
        if "text" in output:
            parts.append(output["text"])
        parts.append(output.get("data", {}).get("text/plain", ""))
    return "".join(parts)


def mime_types(nb: nbformat.NotebookNode, index: int) -> set[str]:
    return {kind for output in nb.cells[index].outputs for kind in output.get("data", {})}


class Kernel:
    """A kernel to run code in one cell at a time, and to interrupt, as a person would."""

    def __init__(self, cwd: Path) -> None:
        self.manager = KernelManager(kernel_name=KERNEL_NAME)
        self.manager.start_kernel(cwd=str(cwd))
        self.client = self.manager.client()
        self.client.start_channels()
        self.client.wait_for_ready(timeout=60)

    def start(self, code: str) -> str:
        """Send a cell for execution; its message id."""
        return self.client.execute(code)

    def reply(self, msg_id: str, timeout: float = 120) -> dict[str, Any]:
        """The execute reply of a cell: status ok, or error with ename and evalue."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no reply from the kernel within {timeout} s")
            message = self.client.get_shell_msg(timeout=left)
            if message["parent_header"].get("msg_id") == msg_id:
                return message["content"]

    def run(self, code: str, timeout: float = 120) -> str:
        """Run a cell that must succeed; what it printed."""
        msg_id = self.start(code)
        reply = self.reply(msg_id, timeout)
        printed = self.printed(msg_id)
        assert reply["status"] == "ok", f"{reply.get('ename')}: {reply.get('evalue')}\n{printed}"
        return printed

    def printed(self, msg_id: str) -> str:
        """Streams and errors the cell produced, once it is idle."""
        parts = []
        while True:
            try:
                message = self.client.get_iopub_msg(timeout=5)
            except queue.Empty:
                return "".join(parts)
            if message["parent_header"].get("msg_id") != msg_id:
                continue
            content = message["content"]
            if message["msg_type"] == "stream":
                parts.append(content["text"])
            elif message["msg_type"] == "error":
                parts.append("\n".join(content["traceback"]))
            elif message["msg_type"] == "execute_result":
                parts.append(content["data"].get("text/plain", ""))
            elif message["msg_type"] == "status" and content["execution_state"] == "idle":
                return "".join(parts)

    def interrupt(self) -> None:
        self.manager.interrupt_kernel()

    def close(self) -> None:
        self.client.stop_channels()
        self.manager.shutdown_kernel(now=True)
