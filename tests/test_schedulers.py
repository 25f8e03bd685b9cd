"""Scheduler modules as pure functions: rendered scripts and parsed status output."""

from __future__ import annotations

import pytest

from clustrix import ConfigError, Resources
from clustrix.schedulers import JobState, ScriptContext
from clustrix.schedulers.base import setup_lines
from clustrix.schedulers.slurm import SlurmScheduler, parse_state
from clustrix.schedulers.ssh import SshScheduler


def context(**overrides):
    values = dict(
        job_name="clustrix-f",
        job_dir="/home/u/clustrix/job-1",
        python_command="/env/bin/python",
        module_loads=("gcc/12",),
        environment_variables={"OMP_NUM_THREADS": "4"},
        pre_execution_commands=("ulimit -c 0",),
        account="proj",
        qos="short",
        options={},
    )
    values.update(overrides)
    return ScriptContext(**values)


def test_slurm_script_for_a_sample_request():
    resources = Resources.parse(cores=8, memory="16GB", time="1-02:00:00", gpus=2, partition="gpu")
    script = SlurmScheduler().render_script(
        resources, context(options={"constraint": "a100", "exclusive": True})
    )
    assert script == (
        "#!/bin/bash\n"
        "#SBATCH --output=scheduler.log\n"
        "#SBATCH --open-mode=append\n"
        "#SBATCH --cpus-per-task=8\n"
        "#SBATCH --mem=16384M\n"
        "#SBATCH --time=1-02:00:00\n"
        "#SBATCH --partition=gpu\n"
        "#SBATCH --gres=gpu:2\n"
        "#SBATCH --account=proj\n"
        "#SBATCH --qos=short\n"
        "#SBATCH --constraint=a100\n"
        "#SBATCH --exclusive\n"
        "# slurm job written by clustrix\n"
        "cd /home/u/clustrix/job-1\n"
        "task=0\n"
        'exec >> "stdout-$task" 2>> "stderr-$task"\n'
        "set -e\n"
        "module load gcc/12\n"
        "export OMP_NUM_THREADS=4\n"
        "ulimit -c 0\n"
        'exec /env/bin/python /home/u/clustrix/job-1/runner.py /home/u/clustrix/job-1 "$task"\n'
    )


def test_slurm_array_script_numbers_tasks_from_the_offset():
    from clustrix.schedulers.base import ArraySpec

    part = context(array=ArraySpec(offset=1000, count=500, max_parallel=50))
    script = SlurmScheduler().render_script(Resources.parse(), part)
    assert "#SBATCH --array=0-499%50\n" in script
    assert "task=$(( 1000 + $SLURM_ARRAY_TASK_ID - 0 ))\n" in script
    assert SlurmScheduler().parse_max_array_size("MaxArraySize            = 1001\n") == 1001


def test_slurm_cancels_the_elements_of_one_array_in_one_request():
    command = SlurmScheduler().cancel_command(["12", "13_4", "13_5", "13_6", "13_9", "14_2"])
    assert command == "scancel 12 '13_[4-6,9]' 14_2"


def test_slurm_gpus_option_replaces_gres():
    resources = Resources.parse(gpus=2)
    script = SlurmScheduler().render_script(resources, context(options={"gpus": "a100:2"}))
    assert "--gpus=a100:2" in script and "--gres" not in script


def test_values_are_quoted_in_setup_lines():
    lines = setup_lines(["my module; rm -rf /"], {"X": "a'b $(c)\nd"}, [])
    assert lines == ["module load 'my module; rm -rf /'", "export X='a'\"'\"'b $(c)\nd'"]


def test_job_name_is_quoted_on_the_command_line():
    command = SlurmScheduler().submit_command("job.sh", context(job_name="a'b;$(x)"))
    assert command == "sbatch --parsable --job-name='a'\"'\"'b;$(x)' job.sh"


def test_unknown_and_multiline_options_are_rejected():
    scheduler = SlurmScheduler()
    with pytest.raises(
        ConfigError, match="unknown slurm option 'constrain'; did you mean 'constraint'"
    ):
        scheduler.check_options({"constrain": "x"})
    with pytest.raises(ConfigError, match="contains a line break"):
        scheduler.check_options({"comment": "a\n#SBATCH --mem=1T"})


@pytest.mark.parametrize(
    ("text", "state"),
    [
        ("PENDING", JobState.PENDING),
        ("RUNNING", JobState.RUNNING),
        ("COMPLETING", JobState.RUNNING),
        ("COMPLETED", JobState.COMPLETED),
        ("FAILED", JobState.FAILED),
        ("CANCELLED by 1000", JobState.CANCELLED),
        ("CANCELLED+", JobState.CANCELLED),
        ("TIMEOUT", JobState.TIMEOUT),
        ("OUT_OF_MEMORY", JobState.OUT_OF_MEMORY),
        ("NODE_FAIL", JobState.NODE_FAIL),
        ("PREEMPTED", JobState.PREEMPTED),
        ("REQUEUED", JobState.PREEMPTED),
        ("BOOT_FAIL", JobState.NODE_FAIL),
        ("SOMETHING_NEW", JobState.UNKNOWN),
    ],
)
def test_slurm_state_names(text, state):
    assert parse_state(text) is state


def test_slurm_status_prefers_squeue_state_and_sacct_exit_code():
    output = (
        "11|RUNNING|None\n12|COMPLETED|None\n"
        "--clustrix-section--\n"
        "12|COMPLETED|0:0\n13|OUT_OF_MEMORY|0:125\n14|FAILED|7:0\n"
    )
    statuses = SlurmScheduler().parse_status(output, ["11", "12", "13", "14", "15"])
    assert statuses["11"].state is JobState.RUNNING
    assert (statuses["12"].state, statuses["12"].exit_code) == (JobState.COMPLETED, 0)
    assert statuses["13"].state is JobState.OUT_OF_MEMORY
    assert (statuses["14"].state, statuses["14"].exit_code) == (JobState.FAILED, 7)
    assert statuses["15"].state is JobState.UNKNOWN


def test_slurm_status_asks_sacct_only_for_a_detailed_look():
    scheduler = SlurmScheduler()
    assert "sacct" not in scheduler.status_command({"1": "/a", "2": "/b"})
    detailed = scheduler.status_command({"1": "/a", "2": "/b"}, detailed=True)
    assert "--jobs=1,2" in detailed and "sacct" in detailed


def test_direct_script_enforces_the_time_limit():
    script = SshScheduler().render_script(Resources.parse(time="00:00:05"), context(options={}))
    assert "#SBATCH" not in script
    assert script.endswith(
        "exec timeout --kill-after=10 5 /env/bin/python /home/u/clustrix/job-1/runner.py "
        '/home/u/clustrix/job-1 "$task"\n'
    )


def test_direct_status_parsing():
    output = "100 RUNNING\n101 DONE 0\n102 DONE 124\n103 DONE 143\n104 DONE 1\n105 LOST\n"
    statuses = SshScheduler().parse_status(
        output, ["100", "101", "102", "103", "104", "105", "106"]
    )
    assert statuses["100"].state is JobState.RUNNING
    assert statuses["101"].state is JobState.COMPLETED
    assert statuses["102"].state is JobState.TIMEOUT
    assert statuses["103"].state is JobState.CANCELLED
    assert (statuses["104"].state, statuses["104"].exit_code) == (JobState.FAILED, 1)
    assert statuses["105"].state is JobState.FAILED
    assert statuses["106"].state is JobState.UNKNOWN


def test_an_unreachable_controller_is_not_mistaken_for_vanished_jobs():
    from clustrix.errors import SchedulerUnavailableError

    forgotten = "slurm_load_jobs error: Invalid job id specified\n--clustrix-section--\n"
    assert SlurmScheduler().parse_status(forgotten, ["9"])["9"].state is JobState.UNKNOWN
    down = "slurm_load_jobs error: Unable to contact slurm controller (connect failure)\n"
    with pytest.raises(SchedulerUnavailableError, match="Unable to contact"):
        SlurmScheduler().parse_status(down + "--clustrix-section--\n", ["9"])


def test_slurm_array_elements_keep_their_own_status():
    output = "50_0|COMPLETED|None\n50_1|RUNNING|None\n50_2|PENDING|JobArrayTaskLimit\n--clustrix-section--\n"
    statuses = SlurmScheduler().parse_status(output, ["50", "51"])
    assert statuses["50_1"].state is JobState.RUNNING
    assert statuses["50_2"].state is JobState.PENDING
    assert statuses["51"].state is JobState.UNKNOWN


def test_options_set_to_none_or_false_are_left_out():
    options = {"constraint": None, "exclusive": False, "nodelist": "n1"}
    script = SlurmScheduler().render_script(Resources.parse(), context(options=options))
    assert "--nodelist=n1" in script
    assert "constraint" not in script and "exclusive" not in script


# ---------------------------------------------------------------------- values on directive lines


def test_slurm_option_values_are_quoted_on_their_directive_line():
    # Quotes, backslash escapes and '#' comments as sbatch 22.05 reads #SBATCH lines
    # (verified there: tests/cluster/test_script_injection.py).
    scheduler = SlurmScheduler()
    options = {
        "comment": "two words",
        "mail_user": "me@example.org",
        "constraint": 'say "hi" # not a comment; k=v \\ it\'s $(x)',
        "begin": "now+1hour",
    }
    scheduler.check_options(options)
    script = scheduler.render_script(Resources.parse(), context(options=options))
    assert '#SBATCH --comment="two words"\n' in script
    assert "#SBATCH --mail-user=me@example.org\n" in script
    assert '#SBATCH --constraint="say \\"hi\\" # not a comment; k=v \\\\ it\'s $(x)"\n' in script
    assert "#SBATCH --begin=now+1hour\n" in script


@pytest.mark.parametrize(
    ("field", "changes"),
    [
        ("partition", {"resources": Resources(partition="gpu\ntouch /tmp/marker")}),
        ("account", {"account": "proj\ntouch /tmp/marker"}),
        ("qos", {"qos": "short\r\ntouch /tmp/marker"}),
        ("comment", {"options": {"comment": "x\x00y"}}),
    ],
)
def test_every_slurm_directive_is_checked_as_it_is_written(field, changes):
    # Whatever reaches a directive (here without the checks of configure() and
    # check_options), nothing can end its line and start one of its own.
    resources = changes.pop("resources", Resources.parse())
    with pytest.raises(ConfigError, match=r"cannot be written on a '#SBATCH' line") as info:
        SlurmScheduler().render_script(resources, context(**changes))
    assert info.value.field == field


def test_option_values_must_be_plain_values():
    from pathlib import PurePosixPath

    with pytest.raises(ConfigError, match="expected a string, a number, True or False"):
        SlurmScheduler().check_options({"comment": PurePosixPath("x\ntouch /tmp/marker")})
    with pytest.raises(ConfigError, match="control character"):
        SlurmScheduler().check_options({"comment": "a\x1b[2Kb"})


@pytest.mark.parametrize("name", ["A\nB", "X;touch /tmp/marker", "é", "", "1A"])
def test_setup_lines_refuse_variable_names_that_are_not_identifiers(name):
    with pytest.raises(ConfigError, match="expected a variable name") as info:
        setup_lines([], {name: "1"}, [])
    assert info.value.field == "environment_variables"
    with pytest.raises(ConfigError, match="line break"):
        setup_lines(["gcc\ntouch /tmp/marker"], {}, [])


def test_ssh_nice_must_be_an_integer():
    scheduler = SshScheduler()
    scheduler.check_options({"nice": 5})
    for value in ("5; touch /tmp/marker", 5.5, True, 40):
        with pytest.raises(ConfigError, match="expected an integer from -20 to 19"):
            scheduler.check_options({"nice": value})


def test_every_directive_is_checked_before_it_is_written():
    class Careless(SlurmScheduler):
        def directives(self, resources, context):
            return [*super().directives(resources, context), f"--comment={context.job_name}"]

    with pytest.raises(ConfigError, match="directive '--comment=a\\\\ntouch /tmp/marker'"):
        Careless().render_script(Resources.parse(), context(job_name="a\ntouch /tmp/marker"))


# ---------------------------------------------------------------------- pipelines


def test_slurm_waits_for_upstream_elements_and_leaves_the_queue_if_they_fail():
    script = SlurmScheduler().render_script(Resources(), context(after=("41_0", "42")))
    assert "#SBATCH --dependency=afterok:41_0:42\n" in script
    assert "#SBATCH --kill-on-invalid-dep=yes\n" in script


def test_slurm_waits_element_by_element_on_an_aligned_array():
    script = SlurmScheduler().render_script(Resources(), context(after_each="41"))
    assert "#SBATCH --dependency=aftercorr:41\n" in script


def test_no_dependency_directives_without_upstream_jobs():
    script = SlurmScheduler().render_script(Resources(), context())
    assert "dependency" not in script


def test_the_ssh_script_waits_for_its_upstream_sessions_to_end():
    waits = (("/w/job 1/exit_code-4242", "4242"), ("/w/job2/exit_code-4343", "4343"))
    script = SshScheduler().render_script(Resources(), context(wait_for=waits))
    assert "while [ ! -e '/w/job 1/exit_code-4242' ] && kill -0 4242 2>/dev/null" in script
    assert "while [ ! -e /w/job2/exit_code-4343 ] && kill -0 4343 2>/dev/null" in script
    assert script.index("kill -0 4343") < script.index("flock")
