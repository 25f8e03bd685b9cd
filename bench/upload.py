"""Large uploads over the SSH login: a command's stdin and a job's arguments, against SFTP.

    bash scripts/testcluster.sh up
    python bench/upload.py [--sizes 24 96]

Everything goes over the same connection in the same run. For each size N (MiB):

  sftp write        N MiB through paramiko's pipelined SFTP: the baseline
  run stdin         transport.run("cat > file", stdin=N MiB), as a job's tar is uploaded
  call (submit)     f(b"x" * N MiB) on SLURM: time until the job is accepted, then the result
  map (submit)      f.map over 8 items adding up to N MiB: the same, as one job array

Prints MiB/s and each method's throughput as a ratio to SFTP's (target: >= 0.5 up to the
submission; the results also include scheduling, the job's start and its own work: compare
them with the printed time of a call with a tiny argument).
"""

from __future__ import annotations

import argparse
import shlex
import tempfile
import time

from testcluster import configure_slurm, remove_remote_folder

import clustrix
from clustrix.backend import backend_for

MIB = 2**20


def size_of(data: bytes) -> int:
    return len(data)


def rate(mib: float, seconds: float) -> float:
    return mib / seconds if seconds > 0 else float("inf")


def open_sftp(config: clustrix.ClusterConfig):
    """The baseline's channel: paramiko's SFTP over a connection of its own."""
    import paramiko

    client = paramiko.SSHClient()
    client.load_host_keys(config.known_hosts_file)
    client.connect(
        config.cluster_host,
        port=config.cluster_port,
        username=config.username,
        key_filename=config.key_file,
    )
    return client.open_sftp()


def sftp_write(sftp, path: str, data: bytes) -> None:
    """Pipelined SFTP write, as fast as paramiko writes a file."""
    with sftp.open(path, "wb") as handle:
        handle.set_pipelined(True)
        handle.write(data)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[24, 96], help="MiB")
    parser.add_argument("--items", type=int, default=8, help="items of the map")
    parser.add_argument(
        "--transport-only", action="store_true", help="skip the end-to-end SLURM calls"
    )
    args = parser.parse_args()
    configure_slurm(job_store=f"{tempfile.mkdtemp()}/jobs.db", progress="off")
    config = clustrix.get_config()
    transport = backend_for(config).transport
    remote = clustrix.cluster(size_of, time="00:10:00", memory="2GB")
    if not args.transport_only:
        started = time.perf_counter()
        assert remote(b"warm") == 4  # connection open, environment built
        print(f"first call (environment built): {time.perf_counter() - started:.1f} s")
        started = time.perf_counter()
        assert remote(b"tiny") == 4
        print(f"a call with a tiny argument: {time.perf_counter() - started:.2f} s\n")
    folder = config.remote_work_dir.replace("~", transport.home(), 1)
    transport.run(f"mkdir -p {shlex.quote(folder)}")
    target = shlex.quote(f"{folder}/upload.bin")
    sftp_channel = open_sftp(config)

    print(f"{'MiB':>5}  {'method':<16} {'seconds':>8} {'MiB/s':>8} {'vs sftp':>8}")
    for mib in args.sizes:
        data = b"x" * (mib * MIB)

        def show(name: str, seconds: float, baseline: float, mib: int = mib) -> None:
            ratio = rate(mib, seconds) / rate(mib, baseline)
            print(f"{mib:>5}  {name:<16} {seconds:8.2f} {rate(mib, seconds):8.1f} {ratio:8.2f}")

        started = time.perf_counter()
        sftp_write(sftp_channel, f"{folder}/upload.bin", data)
        sftp = time.perf_counter() - started
        show("sftp write", sftp, sftp)

        started = time.perf_counter()
        written = transport.run(f"cat > {target} && stat -c %s {target}", stdin=data).stdout
        show("run stdin", time.perf_counter() - started, sftp)
        assert int(written) == len(data), written

        if args.transport_only:
            continue
        started = time.perf_counter()
        future = remote.submit(data)
        show("call (submit)", time.perf_counter() - started, sftp)
        assert future.result() == len(data)
        show("call (result)", time.perf_counter() - started, sftp)

        items = [
            data[i * len(data) // args.items : (i + 1) * len(data) // args.items]
            for i in range(args.items)
        ]
        started = time.perf_counter()
        # What map() does, split so that the submission is timed on its own.
        futures = remote.submit_map(items)
        show(f"map x{args.items} (submit)", time.perf_counter() - started, sftp)
        results = [future.result() for future in futures]
        assert sum(results) == len(data)
        show(f"map x{args.items} (result)", time.perf_counter() - started, sftp)
    remove_remote_folder()


if __name__ == "__main__":
    main()
