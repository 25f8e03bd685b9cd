"""Documentation generated from the code at build time, so that it cannot drift from it.

Directives:

``clustrix-settings``
    Every setting of ``FIELD_SPECS`` / ``ClusterConfig``: type, default, allowed values,
    ``CLUSTRIX_*`` variable and description, each a ``setting`` target (``{setting}`name```).
``clustrix-job-script TYPE``
    The job script and submit command a scheduler module renders for a sample request.
``clustrix-scheduler-options TYPE``
    The pass-through options a scheduler accepts as ``@cluster`` keywords.
``clustrix-exception-tree``
    The exception hierarchy of ``clustrix.errors``; each entry links to the section
    ``error-<Name>`` of the page, so a class without a section breaks the build.
"""

from __future__ import annotations

import inspect
import json
import math
import shlex
from collections.abc import Mapping
from typing import Any

from docutils import nodes
from docutils.parsers.rst import Parser, directives
from docutils.utils import new_document
from sphinx.application import Sphinx
from sphinx.util.docutils import SphinxDirective

import clustrix
from clustrix import errors, handle
from clustrix.config import FIELD_SPECS, ClusterConfig, FieldSpec
from clustrix.environment import environment_key, with_runner_requirement
from clustrix.executor import Executor
from clustrix.remote.staging import calls_per_task, resources_per_task, script_context
from clustrix.schedulers import SCHEDULERS
from clustrix.schedulers.base import ArraySpec

SAMPLE_HOME = "/home/me"
SAMPLE_JOB_ID = "20250314-093012-5f0c2a9e41d7"
SAMPLE_REQUIREMENTS = ("numpy==2.2.0",)

# --------------------------------------------------------------------------- helpers


class _GeneratedDirective(SphinxDirective):
    """A directive whose output is reStructuredText text made from the code."""

    def generate(self) -> list[str]:
        raise NotImplementedError

    def run(self) -> list[nodes.Node]:
        # Parsed as reStructuredText in a document of its own, whatever the page's own
        # markup (a Markdown page would otherwise read the text as Markdown).
        document = self.state.document
        generated = new_document(document["source"], document.settings)
        generated.reporter = document.reporter
        Parser().parse("\n".join(self.generate()), generated)
        for node in generated.children:
            if node["names"]:
                document.note_explicit_target(node, node)
        return list(generated.children)


def _literal(value: Any) -> str:
    """A value as it would be written in a YAML config file, in inline literal markup."""
    if isinstance(value, str):
        text = json.dumps(value)
    elif value is None:
        text = "null"
    elif isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, Mapping):
        text = json.dumps(dict(value)) if value else "{}"
    elif isinstance(value, (list, tuple)):
        text = json.dumps(list(value)) if value else "[]"
    elif isinstance(value, float):
        text = f"{value:g}"
    else:
        text = str(value)
    return f"``{text}``"


def _bounds(spec: FieldSpec) -> str:
    parts = []
    if spec.minimum is not None:
        parts.append(f">= {spec.minimum:g}")
    if spec.maximum is not None:
        parts.append(f"<= {spec.maximum:g}")
    return " and ".join(parts)


def describe_type(spec: FieldSpec) -> str:
    """The type and the allowed values of a setting, in words."""
    kind = spec.kind
    if kind == "choice":
        return "one of " + ", ".join(f"``{choice}``" for choice in spec.choices)
    if kind == "optional_str":
        return "string, or null"
    if kind == "str":
        return "non-empty string"
    if kind == "bool":
        return "boolean"
    if kind in ("int", "float"):
        text = "integer" if kind == "int" else "number"
        bounds = _bounds(spec)
        if bounds:
            text += f" {bounds}"
        if spec.nullable:
            text += ", or null"
        return text
    if kind == "memory":
        return "memory size (``512MB``, ``8GB``, ``8G``, ``1.5TB``, ``16GiB``, or an int of MB)"
    if kind == "time":
        return "duration (``HH:MM:SS``, ``D-HH:MM:SS``, ``MM:SS``, ``90m``, ``2h``, or int minutes)"
    if kind == "list":
        return "list of strings"
    if kind == "dict":
        return "mapping of variable names to string values"
    raise ValueError(f"undocumented kind of setting: {kind}")


def describe_environment_value(spec: FieldSpec) -> str:
    """How a setting is written as an environment variable's text."""
    kind = spec.kind
    if kind == "bool":
        return "``true``/``false``, ``yes``/``no``, ``on``/``off`` or ``1``/``0``"
    if kind == "list":
        return "``a,b`` or a JSON array"
    if kind == "dict":
        return "``A=1,B=2`` or a JSON object"
    if kind == "optional_str" or (kind == "int" and spec.nullable):
        return "the value; empty for null"
    return "the value"


# --------------------------------------------------------------------------- settings


class SettingsDirective(_GeneratedDirective):
    """Every setting, in the order of ``FIELD_SPECS``."""

    def generate(self) -> list[str]:
        return settings_lines()


def settings_lines() -> list[str]:
    """reStructuredText describing every setting, one ``setting`` entry each."""
    defaults = ClusterConfig().to_dict(include_secrets=True)
    lines: list[str] = []
    for name, spec in FIELD_SPECS.items():
        variable = f"CLUSTRIX_{name.upper()}"
        lines += [
            f".. setting:: {name}",
            "",
            f"   {spec.help}",
            "",
            f"   :Type: {describe_type(spec)}",
            f"   :Default: {_literal(defaults[name])}",
            f"   :Environment: ``{variable}`` ({describe_environment_value(spec)})",
        ]
        if spec.secret:
            lines.append(
                "   :Note: never written to a file by ``save_config`` or "
                "``clustrix config set``, never shown by ``clustrix config show``"
            )
        lines.append("")
    return lines


# --------------------------------------------------------------------------- job scripts


def _typed(text: str) -> Any:
    """``true``, ``false``, integers, else the text: values of sample scheduler options."""
    lowered = text.strip().lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    try:
        return int(text)
    except ValueError:
        return text.strip()


def _pairs(text: str | None) -> dict[str, str]:
    pairs = {}
    for item in filter(None, (part.strip() for part in (text or "").split(";"))):
        key, _, value = item.partition("=")
        pairs[key.strip()] = value.strip()
    return pairs


def render_sample(
    cluster_type: str,
    *,
    decorator: Mapping[str, Any],
    settings: Mapping[str, Any],
    calls: int = 1,
    chunksize: int | None = None,
) -> tuple[str, str]:
    """The first job script and submit command of ``calls`` calls of ``@cluster(**decorator)``.

    Everything is built the way a submission builds it: the configuration is validated, the
    decorator's resources are resolved against it, the scheduler checks the pass-through
    options, and many calls are grouped into array tasks (``chunksize`` calls each, or few
    enough tasks to fit ``max_parallel_jobs``) whose time limit covers the calls each runs
    one after the other.
    """
    options = dict(decorator)
    resource_arguments = {
        key: options.pop(key)
        for key in ("cores", "memory", "time", "partition", "queue", "gpus")
        if key in options
    }
    job_name = str(options.pop("job_name", "clustrix-simulate"))
    config = ClusterConfig(cluster_type=cluster_type, **settings)
    executor = Executor(**resource_arguments, **options)
    config = config.replace(**executor.overrides())
    resources = executor.resources(config)
    scheduler = SCHEDULERS[cluster_type]()
    scheduler.check_options(executor.scheduler_options)
    folder = f"{SAMPLE_HOME}/{config.remote_work_dir.removeprefix('~/')}/{SAMPLE_JOB_ID}"
    if config.python_executable:
        python = shlex.quote(config.python_executable)
    else:
        key = environment_key(with_runner_requirement(SAMPLE_REQUIREMENTS))
        work_dir = f"{SAMPLE_HOME}/{config.remote_work_dir.removeprefix('~/')}"
        python = shlex.quote(f"{work_dir}/envs/{key}/bin/python")
    per_task = calls_per_task(calls, chunksize, config)
    tasks = math.ceil(calls / per_task)
    resources = resources_per_task(resources, per_task)
    spec = None
    if tasks > 1 and scheduler.supports_arrays:
        count = min(tasks, config.max_array_size or tasks)
        spec = ArraySpec(0, count, min(config.max_parallel_jobs, count))
    context = script_context(
        config, job_name, folder, python, executor.scheduler_options, array=spec
    )
    return scheduler.render_script(resources, context), scheduler.submit_command(
        "job-0.sh", context
    )


class JobScriptDirective(SphinxDirective):
    """The script a scheduler module writes for a sample call.

    Options give the decorator's arguments (``cores``, ``memory``, ``time``, ``partition``,
    ``queue``, ``gpus``, and ``options``: pass-through options ``name=value; ...``), the
    settings (``settings``: ``name=value; ...``, values in JSON where not plain strings), and
    ``calls`` and ``chunksize``: the number of calls of a ``map`` and its ``chunksize``.
    """

    required_arguments = 1
    option_spec = {
        "cores": directives.positive_int,
        "memory": directives.unchanged,
        "time": directives.unchanged,
        "partition": directives.unchanged,
        "queue": directives.unchanged,
        "gpus": directives.nonnegative_int,
        "options": directives.unchanged,
        "settings": directives.unchanged,
        "calls": directives.positive_int,
        "chunksize": directives.positive_int,
    }

    def run(self) -> list[nodes.Node]:
        cluster_type = self.arguments[0]
        if cluster_type not in SCHEDULERS:
            raise self.error(f"unknown cluster type {cluster_type!r}")
        decorator: dict[str, Any] = {
            key: self.options[key]
            for key in ("cores", "memory", "time", "partition", "queue", "gpus")
            if key in self.options
        }
        decorator.update({k: _typed(v) for k, v in _pairs(self.options.get("options")).items()})
        settings = {}
        for key, text in _pairs(self.options.get("settings")).items():
            try:
                settings[key] = json.loads(text)
            except json.JSONDecodeError:
                settings[key] = text
        try:
            script, command = render_sample(
                cluster_type,
                decorator=decorator,
                settings=settings,
                calls=self.options.get("calls", 1),
                chunksize=self.options.get("chunksize"),
            )
        except Exception as exc:  # a sample the code refuses is a documentation error
            raise self.error(f"cannot render the sample job script: {exc}") from exc
        script_block = nodes.literal_block(script, script, language="bash")
        command_block = nodes.literal_block(command, command, language="bash")
        caption = nodes.paragraph(
            "", "", nodes.Text("Clustrix submits it from the job folder with:")
        )
        return [script_block, caption, command_block]


# --------------------------------------------------------------------------- scheduler options


class SchedulerOptionsDirective(_GeneratedDirective):
    """The ``@cluster`` keywords a scheduler passes on, with their meaning."""

    required_arguments = 1

    def generate(self) -> list[str]:
        cluster_type = self.arguments[0]
        if cluster_type not in SCHEDULERS:
            raise self.error(f"unknown cluster type {cluster_type!r}")
        help_texts = SCHEDULERS[cluster_type].option_help
        lines = [".. list-table::", "   :header-rows: 1", "", "   * - keyword", "     - meaning"]
        for name, meaning in help_texts.items():
            lines += [f"   * - ``{name}``", f"     - {meaning}"]
        return [*lines, ""]


# --------------------------------------------------------------------------- exceptions


def exception_classes() -> list[type[BaseException]]:
    """Every exception class Clustrix defines for users: ``clustrix.errors`` and the handles."""
    found = [
        value
        for value in vars(errors).values()
        if inspect.isclass(value)
        and issubclass(value, BaseException)
        and value.__module__ == errors.__name__
    ]
    return [*found, handle.JobNotFoundError]


class ExceptionTreeDirective(_GeneratedDirective):
    """The hierarchy as nested bullets, each linking to its section on this page."""

    def generate(self) -> list[str]:
        classes = exception_classes()
        lines: list[str] = []

        def add(cls: type[BaseException], depth: int) -> None:
            outside = [
                base.__name__
                for base in cls.__bases__
                if base not in classes and base not in (BaseException, Exception)
            ]
            name = cls.__name__
            path = f"clustrix.{name}" if name in clustrix.__all__ else f"{cls.__module__}.{name}"
            also = f"; also a ``{'``, ``'.join(outside)}``" if outside else ""
            indent = "  " * depth
            lines.append(f"{indent}- :ref:`{name} <error-{name}>` (``{path}``{also})")
            children = [c for c in classes if cls in c.__bases__]
            if children:
                lines.append("")
                for child in children:
                    add(child, depth + 1)
                lines.append("")

        roots = [c for c in classes if not any(base in classes for base in c.__bases__)]
        for root in roots:
            add(root, 0)
        return [*lines, ""]


# --------------------------------------------------------------------------- API


class ApiRestDirective(_GeneratedDirective):
    """Autodoc for every name of ``clustrix.__all__`` not documented earlier on the page.

    Names exported later than the page was written are documented all the same, under a
    heading of their own; with none left, nothing is written.
    """

    def generate(self) -> list[str]:
        documented = {
            name
            for name, entry in self.env.domains.python_domain.objects.items()
            if entry.docname == self.env.docname
        }
        rest = [name for name in clustrix.__all__ if f"clustrix.{name}" not in documented]
        if not rest:
            return []
        lines = [".. rubric:: Other names", ""]
        for name in rest:
            value = getattr(clustrix, name)
            if inspect.isclass(value) and issubclass(value, BaseException):
                kind = "autoexception"
            elif inspect.isclass(value):
                kind = "autoclass"
            elif callable(value):
                kind = "autofunction"
            else:
                kind = "autodata"
            lines += [
                f".. {kind}:: clustrix.{name}",
                "   :members:" if kind == "autoclass" else "",
                "",
            ]
        return lines


# --------------------------------------------------------------------------- setup


def setup(app: Sphinx) -> dict[str, Any]:
    app.add_object_type(
        "setting",
        "setting",
        indextemplate="pair: %s; setting",
        objname="configuration setting",
    )
    app.add_directive("clustrix-settings", SettingsDirective)
    app.add_directive("clustrix-job-script", JobScriptDirective)
    app.add_directive("clustrix-scheduler-options", SchedulerOptionsDirective)
    app.add_directive("clustrix-exception-tree", ExceptionTreeDirective)
    app.add_directive("clustrix-api-rest", ApiRestDirective)
    return {"version": "1", "parallel_read_safe": True, "parallel_write_safe": True}
