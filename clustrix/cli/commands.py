"""The ``clustrix`` command: parsing arguments and printing; the logic lives in the library."""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import click
import yaml

from .. import __version__
from ..backend import backend_for
from ..config import (
    FIELD_NAMES,
    FIELD_SPECS,
    ClusterConfig,
    check_names,
    first_existing,
    parse_text_value,
    plain_value,
    read_config_file,
    resolve_config,
    user_config_candidates,
    user_config_dir,
)
from ..errors import ClustrixError
from .jobinfo import attempt_details, chain_details, settle_submission, waits_for


class _Group(click.Group):
    """Turns Clustrix errors into one line on stderr and exit code 1, never a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except ClustrixError as exc:
            raise click.ClickException(str(exc)) from None
        except BrokenPipeError:  # output piped into `head` and the like
            ctx.exit(0)
        except OSError as exc:
            where = f": {exc.filename}" if exc.filename else ""
            raise click.ClickException(f"{exc.strerror or exc}{where}") from None


@click.group(cls=_Group)
@click.version_option(__version__, "--version", "-V", prog_name="clustrix")
def main() -> None:
    """Run Python functions on local cores, HPC clusters or SSH hosts."""


# --------------------------------------------------------------------------- config


@main.group("config")
def config_group() -> None:
    """Show, create and change the configuration."""


def _display(name: str, value: Any) -> str:
    if FIELD_SPECS[name].secret and value:
        return "***"
    return value if isinstance(value, str) else json.dumps(plain_value(value))


@config_group.command("show")
@click.option("--profile", help="Show the settings with this profile applied.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def config_show(profile: str | None, as_json: bool) -> None:
    """Print the effective configuration and where each value comes from."""
    resolved = resolve_config(profile)
    data = resolved.config.to_dict()
    if as_json:
        payload = {
            name: {"value": data.get(name, "***"), "source": resolved.sources[name]}
            for name in FIELD_NAMES
        }
        click.echo(json.dumps(payload, indent=2))
        return
    rows = [
        (name, _display(name, getattr(resolved.config, name)), resolved.sources[name])
        for name in FIELD_NAMES
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(2)]
    click.echo(f"{'setting':<{widths[0]}}  {'value':<{widths[1]}}  source")
    for name, value, source in rows:
        click.echo(f"{name:<{widths[0]}}  {value:<{widths[1]}}  {source}")


def config_template() -> str:
    """A commented config file listing every setting with its default, made from the specs."""
    defaults = ClusterConfig().to_dict(include_secrets=True)
    lines = [
        "# Clustrix configuration. Uncomment and edit the settings you need.",
        "# Precedence, lowest first: this file < ./clustrix.yaml < a profile",
        "# < CLUSTRIX_<SETTING> environment variables < configure() < @cluster arguments.",
        "",
    ]
    for name in FIELD_NAMES:
        spec = FIELD_SPECS[name]
        lines.append(f"# {spec.help}")
        if spec.choices:
            lines.append(f"#   one of: {', '.join(spec.choices)}")
        value = yaml.safe_dump({name: defaults[name]}, default_flow_style=True, width=10**6)
        lines.append("# " + value.strip()[1:-1])
        lines.append("")
    lines += [
        "# Named sets of settings, selected with @cluster(profile='gpu') or CLUSTRIX_PROFILE=gpu:",
        "# profiles:",
        "#   gpu:",
        "#     default_partition: gpu",
        "#     default_cores: 8",
        "",
    ]
    return "\n".join(lines)


def _user_config_path() -> Path:
    return first_existing(user_config_candidates()) or user_config_dir() / "config.yaml"


@config_group.command("init")
@click.option("--force", is_flag=True, help="Overwrite an existing file.")
@click.option(
    "--path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Where to write (default: ~/.clustrix/config.yaml).",
)
def config_init(force: bool, path: Path | None) -> None:
    """Write a commented configuration template."""
    path = path or user_config_dir() / "config.yaml"
    if path.exists() and not force:
        raise click.ClickException(f"{path} already exists; use --force to overwrite it")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(config_template(), encoding="utf-8")
    click.echo(f"wrote {path}")


def set_yaml_setting(text: str, name: str, value: Any) -> str:
    """Set one top-level key in YAML text, keeping comments and other settings as they are."""
    rendered = f"{name}: " + yaml.safe_dump(value, default_flow_style=True, width=10**6).strip()
    rendered = rendered.removesuffix("\n...").removesuffix(" ...")
    lines = text.splitlines()
    active = re.compile(rf"^{re.escape(name)}\s*:")
    commented = re.compile(rf"^#\s*{re.escape(name)}\s*:")
    for pattern in (active, commented):
        for index, line in enumerate(lines):
            if pattern.match(line):
                end = index + 1
                if pattern is active:  # drop the old value's block continuation lines
                    while end < len(lines) and (
                        lines[end].startswith((" ", "-")) and lines[end].strip()
                    ):
                        end += 1
                lines[index:end] = [rendered]
                return "\n".join(lines) + "\n"
    return "\n".join([*lines, rendered]) + "\n"


@config_group.command("set", context_settings={"ignore_unknown_options": True})
@click.argument("key")
@click.argument("value")
def config_set(key: str, value: str) -> None:
    """Validate VALUE for setting KEY and save it in the user configuration file."""
    check_names({key: None}, "clustrix config set")
    typed = parse_text_value(key, value)
    if FIELD_SPECS[key].secret:
        raise click.ClickException(
            f"{key} is never saved to disk; set CLUSTRIX_{key.upper()} in the environment instead"
        )
    path = _user_config_path()
    if path.suffix == ".json":
        data = json.loads(path.read_text(encoding="utf-8") or "{}") if path.exists() else {}
        data[key] = plain_value(typed)
        new_text = json.dumps(data, indent=2) + "\n"
    else:
        old_text = path.read_text(encoding="utf-8") if path.exists() else ""
        new_text = set_yaml_setting(old_text, key, plain_value(typed))
    _write_validated(path, new_text)
    click.echo(f"{key} = {_display(key, typed)}  ({path})")


def _write_validated(path: Path, text: str) -> None:
    """Write a config file only if the result parses and validates."""
    path.parent.mkdir(parents=True, exist_ok=True)
    candidate = path.with_name(path.name + ".new" + path.suffix)
    candidate.write_text(text, encoding="utf-8")
    try:
        read_config_file(candidate)
    except ClustrixError:
        candidate.unlink()
        raise
    candidate.replace(path)


# --------------------------------------------------------------------------- load and status


@main.command("load")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
def load(file: Path) -> None:
    """Validate FILE and make it the user configuration (~/.clustrix/config.yaml)."""
    parsed = read_config_file(file)
    target = user_config_dir() / "config.yaml"
    target.parent.mkdir(parents=True, exist_ok=True)
    for existing in user_config_candidates():
        if existing.exists():
            backup = existing.with_name(existing.name + ".bak")
            shutil.copy2(existing, backup)
            click.echo(f"previous configuration kept as {backup}")
            if existing != target:
                existing.unlink()
    if file.suffix == ".json":
        data: dict[str, Any] = plain_value(parsed.settings)
        if parsed.profiles:
            data["profiles"] = plain_value(parsed.profiles)
        target.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    else:
        shutil.copyfile(file, target)
    count = len(parsed.settings)
    click.echo(f"loaded {count} setting(s) and {len(parsed.profiles)} profile(s) into {target}")


@main.command("status")
@click.option("--profile", help="Check the target of this profile.")
def status(profile: str | None) -> None:
    """Show where calls would run now, and check that the target is usable."""
    config = resolve_config(profile).config
    for label, value in backend_for(config).describe(config).items():
        click.echo(f"{label}: {value}")
    click.echo("status: ready")


@main.command("trust-host")
@click.argument("host")
@click.option(
    "--port",
    type=int,
    help="SSH port (default: the ssh config's Port, cluster_port for the configured host, 22).",
)
@click.option(
    "--known-hosts",
    type=click.Path(dir_okay=False, path_type=Path),
    help="known_hosts file to add to (default: known_hosts_file, else ~/.ssh/known_hosts).",
)
@click.option("--yes", is_flag=True, help="Add without asking.")
def trust_host(host: str, port: int | None, known_hosts: Path | None, yes: bool) -> None:
    """Show HOST's SSH key fingerprint and add the key to known_hosts once confirmed.

    HOST may be an alias from ~/.ssh/config: the key is fetched from, and recorded under,
    the HostName and Port it stands for, which is what connections look up.
    """
    from ..transport.ssh import (
        append_known_host,
        fetch_host_key,
        fingerprint,
        known_hosts_name,
        resolve_target,
    )

    config = resolve_config().config
    if port is None and host == config.cluster_host:
        port = config.cluster_port
    target = resolve_target(host, port)
    path = known_hosts or Path(os.path.expanduser(config.known_hosts_file or "~/.ssh/known_hosts"))
    key = fetch_host_key(target.hostname, target.port)
    name = known_hosts_name(target.hostname, target.port)
    click.echo(f"{name} presents a {key.get_name()} key with fingerprint {fingerprint(key)}")
    if not yes and not click.confirm(
        "Compare it with the one your administrators publish. Trust it?"
    ):
        raise click.ClickException("not trusted; nothing was written")
    append_known_host(path, name, key)
    click.echo(f"added {name} to {path}")


# --------------------------------------------------------------------------- jobs


_DURATION = re.compile(r"^(\d+(?:\.\d+)?)([smhdw])$")
_DURATION_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_age(text: str) -> float:
    """'7d', '12h', '30m' in seconds."""
    match = _DURATION.match(text.strip())
    if not match:
        raise click.BadParameter(f"{text!r}: expected a number and a unit, e.g. 7d, 12h, 30m")
    return float(match.group(1)) * _DURATION_SECONDS[match.group(2)]


def _when(timestamp: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(timestamp)) if timestamp else "-"


@main.command("jobs")
@click.option("--all", "show_all", is_flag=True, help="Include finished jobs.")
@click.option("--state", "states", multiple=True, help="Only jobs in this state (repeatable).")
@click.option("--limit", type=int, default=50, show_default=True)
def jobs_command(show_all: bool, states: tuple[str, ...], limit: int) -> None:
    """List recorded jobs, newest first (unfinished ones unless --all).

    States are as last recorded by a process following the job; `clustrix job ID` asks the
    scheduler and records what it finds (a pipeline's earlier stages, say, once the
    submitting process has exited).
    """
    from ..handle import jobs as list_jobs
    from ..store import ACTIVE_STATES

    wanted = [s.upper() for s in states] or (None if show_all else list(ACTIVE_STATES))
    found = list_jobs(states=wanted, limit=limit)
    if not found:
        click.echo(
            "no jobs" + ("" if show_all or states else " running (use --all for finished ones)")
        )
        return
    rows = [("JOB ID", "STATE", "CALLS", "FUNCTION", "HOST", "CREATED", "WAITS FOR")]
    for job in found:
        settle_submission(job)
        record = job.record
        calls = (
            f"{record.items - record.failed_items}/{record.items}"
            if record.failed_items
            else str(record.items)
        )
        rows.append(
            (
                record.job_id,
                record.state,
                calls,
                record.function,
                record.host,
                _when(record.created),
                waits_for(record),
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        click.echo(
            "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        )


@main.command("job")
@click.argument("job_id")
def job_command(job_id: str) -> None:
    """Show everything recorded about one job, and its state now."""
    from ..handle import get_job

    job = get_job(job_id)
    state = job.status()
    record = job.record
    details = [
        ("job id", record.job_id),
        ("function", record.function),
        ("state", state),
        ("calls", f"{record.items} in {len(record.task_sizes)} task(s)"),
        ("failed calls", str(record.failed_items)),
        ("backend", f"{record.cluster_type} via {record.host}"),
        ("scheduler ids", ", ".join(record.scheduler_ids) or "-"),
        ("remote folder", record.remote_folder),
        ("created", _when(record.created)),
        ("finished", _when(record.finished)),
    ]
    details += chain_details(job)
    details += attempt_details(job)
    if record.message:
        details.append(("note", record.message))
    for label, value in details:
        click.echo(f"{label + ':':<15} {value}")


@main.command("logs")
@click.argument("job_id")
@click.option("--task", type=int, default=0, show_default=True, help="Array task to show.")
@click.option("--stderr", "stream", flag_value="stderr", help="Show stderr instead of stdout.")
@click.option("--follow", "-f", is_flag=True, help="Keep printing new output until the job ends.")
def logs(job_id: str, task: int, stream: str | None, follow: bool) -> None:
    """Print a job task's stdout (or stderr)."""
    from ..handle import get_job
    from ..store import FINAL_STATES

    job = get_job(job_id)
    stream = stream or "stdout"
    shown = 0
    while True:
        text = job.stdout(task) if stream == "stdout" else job.stderr(task)
        click.echo(text[shown:], nl=False)
        shown = len(text)
        if not follow or job.status() in FINAL_STATES:
            if follow:
                text = job.stdout(task) if stream == "stdout" else job.stderr(task)
                click.echo(text[shown:], nl=False)
            return
        time.sleep(1)


@main.command("cancel")
@click.argument("job_ids", nargs=-1, required=True)
def cancel(job_ids: tuple[str, ...]) -> None:
    """Cancel jobs (every unfinished task of each)."""
    from ..handle import get_job

    for job_id in job_ids:
        job = get_job(job_id)
        done = job.cancel()
        click.echo(
            f"{job.job_id}: {'cancelled' if done else 'already finished (' + job.state + ')'}"
        )


@main.command("result")
@click.argument("job_id")
@click.option(
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Save the result (pickled) to this file instead of printing it.",
)
@click.option("--timeout", type=float, help="Seconds to wait for an unfinished job.")
def result(job_id: str, output: Path | None, timeout: float | None) -> None:
    """Print a job's result (the list of results for a map), waiting for it if needed."""
    import cloudpickle

    from ..handle import get_job

    job = get_job(job_id)
    value = (
        job.result(timeout=timeout)
        if job.items == 1
        else job.results(return_exceptions=True, timeout=timeout)
    )
    if output is not None:
        output.write_bytes(cloudpickle.dumps(value))
        click.echo(f"saved the result of {job.job_id} to {output}")
    else:
        click.echo(repr(value))


@main.command("clean")
@click.option(
    "--older-than",
    "older_than",
    default="7d",
    show_default=True,
    help="Only jobs created longer ago than this (e.g. 7d, 12h, 0s).",
)
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
def clean(older_than: str, yes: bool) -> None:
    """Remove finished jobs' remote folders and their records."""
    from ..handle import jobs as list_jobs
    from ..store import FINAL_STATES

    age = parse_age(older_than)
    for job in list_jobs(states=["SUBMITTING"], older_than=age):
        settle_submission(job)  # one whose submitter died may turn out never accepted
    found = list_jobs(states=FINAL_STATES, older_than=age)
    if not found:
        click.echo(f"no finished jobs older than {older_than}")
        return
    for job in found:
        click.echo(f"{job.job_id}  {job.state:<9}  {job.function}  {job.remote_folder}")
    if not yes and not click.confirm(f"Remove these {len(found)} job(s) and their remote folders?"):
        raise click.ClickException("nothing was removed")
    for job in found:
        job.remove()
    click.echo(f"removed {len(found)} job(s)")


@main.command("explain")
@click.argument("target", metavar="MODULE:FUNCTION")
def explain_command(target: str) -> None:
    """Show how each loop of a function would be parallelised, and why (reads source only)."""
    import importlib

    from ..loops import explain

    module_name, _, attribute = target.partition(":")
    if not module_name or not attribute:
        raise click.BadParameter(f"{target!r}: expected MODULE:FUNCTION, e.g. sims.sweep")
    sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise click.ClickException(f"cannot import {module_name!r}: {exc}") from None
    func: Any = module
    for part in attribute.split("."):
        func = getattr(func, part, None)
        if func is None:
            raise click.ClickException(f"{module_name!r} has no {attribute!r}")
    click.echo(explain(getattr(func, "__wrapped__", func)))
