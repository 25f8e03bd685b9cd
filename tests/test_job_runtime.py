"""The Clustrix code shipped with jobs whose payload refers to it."""

from __future__ import annotations

import io
import subprocess
import sys
import zipfile

import cloudpickle

from clustrix.environment import modules_named_in_pickle
from clustrix.job_runtime import payload_needs_runtime, runtime_archive, shipped_runtime
from clustrix.loops import parallelize


def loop(n):
    total = 0
    for i in range(n):
        total += i
    return total


def test_only_payloads_naming_clustrix_get_the_runtime():
    assert not payload_needs_runtime(modules_named_in_pickle(cloudpickle.dumps(loop)))
    parallel = parallelize(loop, workers=2)
    assert parallel is not loop
    assert payload_needs_runtime(modules_named_in_pickle(cloudpickle.dumps(parallel)))
    assert shipped_runtime(modules_named_in_pickle(cloudpickle.dumps(loop))) == {}


def test_runtime_imports_the_loop_runner_without_the_client_side(tmp_path):
    archive = tmp_path / "clustrix-runtime.zip"
    archive.write_bytes(runtime_archive())
    names = zipfile.ZipFile(io.BytesIO(archive.read_bytes())).namelist()
    assert "clustrix/loops/execute.py" in names
    # A fresh interpreter that can import only the zip: the shipped package must not pull in
    # the configuration or SSH modules (their dependencies are not in a job's environment).
    script = (
        "import sys; sys.path.insert(0, sys.argv[1]); import cloudpickle;"
        "f = cloudpickle.loads(sys.stdin.buffer.read()); print(f(10));"
        "print(sorted(m for m in sys.modules if m.startswith(('yaml', 'paramiko', 'click'))))"
    )

    def nested_loop(n):  # by value, like the user's code in a job
        total = 0
        for i in range(n):
            total += i
        return total

    payload = cloudpickle.dumps(parallelize(nested_loop, workers=2))
    result = subprocess.run(
        [sys.executable, "-S", "-c", script, str(archive)],
        input=payload,
        capture_output=True,
        check=False,
        env={"PYTHONPATH": cloudpickle.__path__[0].rsplit("/", 1)[0]},
    )
    assert result.returncode == 0, result.stderr.decode()
    assert result.stdout.decode().split("\n")[:2] == ["45", "[]"]
