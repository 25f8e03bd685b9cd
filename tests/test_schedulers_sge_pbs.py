"""The Grid Engine and PBS modules as pure functions: scripts, commands, parsed output.

Outputs marked "captured" were printed by Son of Grid Engine 8.1.9 and by SLURM 22.05's
PBS-style wrappers on the test cluster (qacct's padding of values with trailing spaces is
stripped here); those marked "from the manuals" stand for PBS Pro / Torque, not available here.
"""

from __future__ import annotations

import subprocess
import textwrap
from pathlib import Path

import pytest

from clustrix import ConfigError, Resources
from clustrix.errors import SchedulerUnavailableError
from clustrix.schedulers import SCHEDULERS, JobState, ScriptContext, scheduler_for
from clustrix.schedulers.base import ArraySpec
from clustrix.schedulers.pbs import PbsScheduler, attribute_status, parse_qstat_full
from clustrix.schedulers.sge import SgeScheduler, accounting_status, expand_tasks, queue_status


def context(**overrides):
    values = dict(
        job_name="clustrix-f",
        job_dir="/home/u/clustrix/job-1",
        python_command="/env/bin/python",
        account="proj",
        qos="short",
        options={},
    )
    values.update(overrides)
    return ScriptContext(**values)


BODY = (
    "cd /home/u/clustrix/job-1\n"
    'exec >> "stdout-$task" 2>> "stderr-$task"\n'
    "set -e\n"
    'exec /env/bin/python /home/u/clustrix/job-1/runner.py /home/u/clustrix/job-1 "$task"\n'
)


def test_both_are_registered():
    assert SCHEDULERS["sge"] is SgeScheduler and SCHEDULERS["pbs"] is PbsScheduler
    assert isinstance(scheduler_for("sge"), SgeScheduler)
    assert isinstance(scheduler_for("pbs"), PbsScheduler)


# ---------------------------------------------------------------------- SGE: scripts


def test_sge_script_for_a_sample_request():
    resources = Resources.parse(cores=4, memory="3GB", time="1-02:00:00", gpus=1, queue="all.q")
    part = context(
        options={"project": "p1", "priority": -5, "notify": True, "rerun": False},
        array=ArraySpec(offset=10, count=50, max_parallel=8),
    )
    script = SgeScheduler().render_script(resources, part)
    assert script == (
        "#!/bin/bash\n"
        "#$ -S /bin/bash\n"
        "#$ -cwd\n"
        "#$ -j y\n"
        "#$ -o scheduler.log\n"
        "#$ -pe smp 4\n"
        "#$ -l h_vmem=768M,mem_free=768M\n"
        "#$ -l h_rt=26:00:00\n"
        "#$ -l gpu=1\n"
        "#$ -q all.q\n"
        "#$ -A proj\n"
        "#$ -t 1-50\n"
        "#$ -tc 8\n"
        "#$ -P p1\n"
        "#$ -p -5\n"
        "#$ -notify\n"
        "#$ -r n\n"
        "# sge job written by clustrix\n"
        "cd /home/u/clustrix/job-1\n"
        "task=$(( 10 + $SGE_TASK_ID - 1 ))\n" + BODY.split("\n", 1)[1]
    )


def test_sge_single_core_job_has_no_parallel_environment_and_no_array():
    script = SgeScheduler().render_script(Resources.parse(memory="1GB"), context())
    assert "-pe" not in script and "-t " not in script
    assert "#$ -l h_vmem=1024M,mem_free=1024M\n" in script
    assert "task=0\n" in script


def test_sge_memory_is_per_slot_rounded_up_and_names_are_configurable():
    part = context(options={"pe": "threads", "memory_resources": "m_mem_free"})
    script = SgeScheduler().render_script(Resources.parse(cores=3, memory="1000MB"), part)
    assert "#$ -pe threads 3\n" in script
    assert "#$ -l m_mem_free=334M\n" in script


def test_sge_no_throttle_when_every_task_may_run():
    part = context(array=ArraySpec(offset=0, count=5, max_parallel=5))
    script = SgeScheduler().render_script(Resources.parse(), part)
    assert "#$ -t 1-5\n" in script and "-tc" not in script


def test_sge_job_names_are_sanitised_and_quoted():
    command = SgeScheduler().submit_command("job-0.sh", context(job_name="1 it's/a:b@c*d?e\\f\tg"))
    assert command == "qsub -terse -N j1_it_s_a_b_c_d_e_f_g job-0.sh"
    assert SgeScheduler().submit_command("job 0.sh", context()).endswith(" 'job 0.sh'")


def test_sge_terse_ids_of_jobs_and_arrays():
    assert SgeScheduler().parse_job_id("42\n") == "42"
    assert SgeScheduler().parse_job_id("43.1-6:1\n") == "43"  # captured


def test_sge_options_are_checked():
    scheduler = SgeScheduler()
    with pytest.raises(ConfigError, match="unknown sge option 'prority'; did you mean 'priority'"):
        scheduler.check_options({"prority": 1})
    with pytest.raises(ConfigError, match="without whitespace"):
        scheduler.check_options({"l": "gpu=1 -q other.q"})
    with pytest.raises(ConfigError, match="line break"):
        scheduler.check_options({"project": "a\n#$ -q x"})
    scheduler.check_options({"pe": "mpi", "hold_jid": "12,13", "binding": "linear:2"})


# ---------------------------------------------------------------------- SGE: status

# captured: qstat -u clustrix with a running job, a running array with pending tasks, a job
# in error state, a held job; then qstat -j's error line for the Eqw job.
QSTAT = """\
job-ID  prior   name       user         state submit/start at     queue                          slots ja-task-ID
-----------------------------------------------------------------------------------------------------------------
     42 0.50000 run1       clustrix     r     11/28/2026 22:49:05 all.q@vm                           1
     43 0.50000 arr        clustrix     r     11/28/2026 22:49:05 all.q@vm                           1 1
     43 0.50000 arr        clustrix     r     11/28/2026 22:49:05 all.q@vm                           1 2
     44 0.50000 eqw        clustrix     Eqw   11/28/2026 22:49:05                                    1
     43 0.00000 arr        clustrix     qw    11/28/2026 22:49:05                                    1 3-6:1
     45 0.00000 held       clustrix     hqw   11/28/2026 22:49:06                                    1
     46 0.50000 run1       clustrix     dr    11/28/2026 22:49:10 all.q@vm                           1
"""
ERROR_REASON = (
    "error reason          1:      11/28/2026 22:49:06 [1001:16576]: error: can't chdir to "
    "/home/clustrix/sgeexp/gone: No such file or directory\n"
)

# captured: the whole qacct -j record of a job killed at h_rt=5 (qsub -l h_rt=00:00:05).
QACCT_H_RT = """\
==============================================================
qname        all.q
hostname     vm
group        clustrix
owner        clustrix
project      NONE
department   defaultdepartment
jobname      rt
jobnumber    29
taskid       undefined
account      sge
priority     0
qsub_time    Sat Nov 28 22:42:36 2026
start_time   Sat Nov 28 22:42:38 2026
end_time     Sat Nov 28 22:42:43 2026
granted_pe   NONE
slots        1
failed       37  : qmaster enforced h_rt, h_cpu, or h_vmem limit
exit_status  137                  (Killed)
ru_wallclock 5s
ru_utime     0.011s
ru_stime     0.007s
ru_maxrss    4.605KB
ru_ixrss     0.000B
ru_ismrss    0.000B
ru_idrss     0.000B
ru_isrss     0.000B
ru_minflt    612
ru_majflt    0
ru_nswap     0
ru_inblock   0
ru_oublock   8
ru_msgsnd    0
ru_msgrcv    0
ru_nsignals  0
ru_nvcsw     6
ru_nivcsw    5
cpu          0.018s
mem          0.000Bs
io           40.894KB
iow          0.000s
maxvmem      4.926MB
arid         undefined
ar_sub_time  undefined
category     -l h_rt=5
"""


def _record(number, failed, exit_status, task="undefined", **extra):
    """A qacct record with the captured values of the fields the parser reads."""
    lines = [
        "=" * 62,
        f"jobnumber    {number}",
        f"taskid       {task}",
        "slots        1",
        f"failed       {failed}",
        f"exit_status  {exit_status}",
    ]
    lines += [f"{key:<12} {value}" for key, value in extra.items()]
    return "\n".join(lines) + "\n"


def _detailed(queue: str, details: dict[str, str], qstat_exit: int = 0) -> str:
    text = queue + f"--clustrix-qstat-exit-- {qstat_exit}\n"
    for job, body in details.items():
        text += f"--clustrix-sge-job-- {job}\n{body}"
    return text


def test_sge_queue_states_arrays_and_error_state_from_captured_qstat():
    output = _detailed(QSTAT, {"44": ERROR_REASON})
    statuses = SgeScheduler().parse_status(output, ["42", "43", "44", "45", "46", "99"])
    assert statuses["42"].state is JobState.RUNNING
    assert [statuses[f"43_{t}"].state for t in range(1, 7)] == [JobState.RUNNING] * 2 + [
        JobState.PENDING
    ] * 4
    assert statuses["44"].state is JobState.FAILED
    assert "can't chdir to /home/clustrix/sgeexp/gone" in statuses["44"].reason
    assert statuses["45"].state is JobState.PENDING
    assert statuses["46"].state is JobState.RUNNING  # dr: being deleted, not yet ended
    assert statuses["99"].state is JobState.UNKNOWN
    assert statuses["43"].state is JobState.UNKNOWN, "arrays are followed element by element"


def test_sge_error_state_without_the_detailed_look_is_still_a_failure():
    statuses = SgeScheduler().parse_status(_detailed(QSTAT, {}), ["44"])
    assert statuses["44"].state is JobState.FAILED
    assert "Eqw" in statuses["44"].reason


def test_sge_endings_from_captured_qacct_records():
    details = {
        "26": _record(26, "0", "0", ru_wallclock="0s", category="NONE"),
        "27": _record(27, "0", "3", ru_wallclock="0s", category="NONE"),
        "29": QACCT_H_RT,
        "30": _record(30, "100 : assumedly after job", "137 (Killed)", ru_wallclock="4s"),
        "32": "".join(_record(32, "0", "0", task=str(t)) for t in range(1, 5)),
        # captured from a clustrix job with time="00:00:05" (memory defaults to 4 GB).
        "69": _record(
            69,
            "37 : qmaster enforced h_rt, h_cpu, or h_vmem limit",
            "137 (Killed)",
            ru_wallclock="6s",
            maxvmem="30.184MB",
            category="-l h_rt=5,h_vmem=4096M,mem_free=4096M",
        ),
    }
    statuses = SgeScheduler().parse_status(_detailed("", details), list(details))
    assert (statuses["26"].state, statuses["26"].exit_code) == (JobState.COMPLETED, 0)
    assert (statuses["27"].state, statuses["27"].exit_code) == (JobState.FAILED, 3)
    assert statuses["29"].state is JobState.TIMEOUT
    assert "h_rt" in statuses["29"].reason
    assert (statuses["30"].state, statuses["30"].exit_code) == (JobState.CANCELLED, 137)
    assert [statuses[f"32_{t}"].state for t in range(1, 5)] == [JobState.COMPLETED] * 4
    assert statuses["69"].state is JobState.TIMEOUT


def test_sge_the_queue_wins_over_an_older_accounting_record():
    # A rerun job: accounting holds its first run, the queue shows it pending again.
    details = {"42": _record(42, "25 : rescheduling", "0")}
    statuses = SgeScheduler().parse_status(_detailed(QSTAT, details), ["42"])
    assert statuses["42"].state is JobState.RUNNING


@pytest.mark.parametrize(
    ("record", "state"),
    [
        # failed 37 is h_rt, h_cpu or h_vmem: memory only with a peak at the limit.
        (
            {"failed": "37 : x", "exit_status": "137", "ru_wallclock": "3s", "slots": "2"},
            JobState.TIMEOUT,
        ),
        (
            {
                "failed": "37 : qmaster enforced h_rt, h_cpu, or h_vmem limit",
                "exit_status": "137",
                "ru_wallclock": "3s",
                "slots": "2",
                "maxvmem": "1.990GB",
                "category": "-l h_rt=600,h_vmem=1024M -pe smp 2",
            },
            JobState.OUT_OF_MEMORY,
        ),
        # A SIGKILL at the time limit without the code still reads as a timeout.
        (
            {"failed": "0", "exit_status": "137", "ru_wallclock": "61s", "category": "-l h_rt=60"},
            JobState.TIMEOUT,
        ),
        ({"failed": "0", "exit_status": "137", "ru_wallclock": "1s"}, JobState.FAILED),
        ({"failed": "27 : searching requested shell", "exit_status": "0"}, JobState.FAILED),
    ],
)
def test_sge_accounting_mapping(record, state):
    assert accounting_status(record).state is state


@pytest.mark.parametrize(
    ("code", "state"),
    [
        ("qw", JobState.PENDING),
        ("hqw", JobState.PENDING),
        ("hRwq", JobState.PENDING),
        ("Rq", JobState.PENDING),
        ("r", JobState.RUNNING),
        ("t", JobState.RUNNING),
        ("Rr", JobState.RUNNING),
        ("s", JobState.RUNNING),
        ("S", JobState.RUNNING),
        ("T", JobState.RUNNING),
        ("dr", JobState.RUNNING),
        ("Eqw", JobState.FAILED),
        ("z", JobState.UNKNOWN),
    ],
)
def test_sge_queue_state_codes(code, state):
    assert queue_status(code).state is state


def test_sge_task_ranges():
    assert list(expand_tasks("1-3:1,5,6,8-10:1")) == [1, 2, 3, 5, 6, 8, 9, 10]  # captured
    assert list(expand_tasks("1-10:2")) == [1, 3, 5, 7, 9]
    assert list(expand_tasks("7")) == [7]


def test_sge_unreachable_qmaster_is_not_mistaken_for_vanished_jobs():
    # captured: qstat with a wrong qmaster port exits 1 with these lines.
    down = (
        "error: commlib error: got select error (Connection refused)\n"
        'error: unable to send message to qmaster using port 1 on host "vm": got send error\n'
    )
    with pytest.raises(SchedulerUnavailableError, match="unable to send message to qmaster"):
        SgeScheduler().parse_status(_detailed(down, {}, qstat_exit=1), ["42"])
    assert SgeScheduler().parse_status(_detailed("", {}), ["42"])["42"].state is JobState.UNKNOWN


def test_sge_commands():
    scheduler = SgeScheduler()
    quick = scheduler.status_command({"12": "/a", "13": "/b"})
    assert "qstat -u" in quick and "qacct" not in quick
    detailed = scheduler.status_command({"12": "/a", "13": "/b"}, detailed=True)
    assert "for id in 12 13;" in detailed and 'qacct -j "$id"' in detailed
    assert scheduler.status_command({}) == "true"
    assert scheduler.cancel_command(["12", "13_4"]) == "qdel 12 13.4"
    assert scheduler.parse_max_array_size("max_aj_tasks                 75000\n") == 75000
    assert scheduler.parse_max_array_size("max_aj_tasks 0\n") is None


def test_sge_status_command_runs_in_a_shell(tmp_path: Path):
    """The command itself, with fake qstat/qacct: late accounting is asked for again."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "qstat").write_text(f'#!/bin/sh\n[ "$1" = -u ] && cat {tmp_path}/queue\nexit 0\n')
    # qacct knows job 7 only from its second call on (as after a flush), and never job 8.
    (bin_dir / "qacct").write_text(
        textwrap.dedent(f"""\
        #!/bin/sh
        [ "$2" = 8 ] && exit 1
        [ -e {tmp_path}/flushed ] || {{ touch {tmp_path}/flushed; exit 1; }}
        printf '%s\\n' '=====================' 'jobnumber 7' 'taskid undefined' \\
            'failed 37 : qmaster enforced h_rt, h_cpu, or h_vmem limit' 'exit_status 137'
        """)
    )
    for tool in bin_dir.iterdir():
        tool.chmod(0o755)
    (tmp_path / "queue").write_text(QSTAT)
    command = SgeScheduler().status_command({"7": "/a", "8": "/b", "42": "/c"}, detailed=True)
    output = subprocess.run(
        ["bash", "-c", command],
        capture_output=True,
        text=True,
        env={"PATH": f"{bin_dir}:/usr/bin:/bin"},
        check=True,
        timeout=30,
    ).stdout
    statuses = SgeScheduler().parse_status(output, ["7", "8", "42"])
    assert statuses["7"].state is JobState.TIMEOUT
    assert statuses["8"].state is JobState.UNKNOWN
    assert statuses["42"].state is JobState.RUNNING


# ---------------------------------------------------------------------- PBS: scripts


def test_pbs_pro_script_for_a_sample_request():
    resources = Resources.parse(cores=4, memory="3GB", time="02:00:00", gpus=1, queue="workq")
    part = context(
        options={"select": "model=a100", "depend": "afterok:12.srv", "rerunnable": True},
        array=ArraySpec(offset=10, count=50, max_parallel=8),
    )
    script = PbsScheduler().render_script(resources, part)
    assert script == (
        "#!/bin/bash\n"
        "#PBS -o scheduler.log\n"
        "#PBS -j oe\n"
        "#PBS -l select=1:ncpus=4:mem=3072mb:ngpus=1:model=a100\n"
        "#PBS -l walltime=02:00:00\n"
        "#PBS -q workq\n"
        "#PBS -A proj\n"
        "#PBS -J 0-49\n"
        "#PBS -W depend=afterok:12.srv\n"
        "#PBS -r y\n"
        "# pbs job written by clustrix\n"
        "cd /home/u/clustrix/job-1\n"
        "task=$(( 10 + ${PBS_ARRAY_INDEX:-${PBS_ARRAYID:-$SLURM_ARRAY_TASK_ID}} - 0 ))\n"
        + BODY.split("\n", 1)[1]
    )


def test_pbs_torque_flavor_script():
    resources = Resources.parse(cores=2, memory="1GB", time="00:10:00", gpus=1)
    part = context(options={"flavor": "torque"}, array=ArraySpec(0, 6, 2))
    lines = PbsScheduler().directives(resources, part)
    assert lines == [
        "-o scheduler.log",
        "-j oe",
        "-l nodes=1:ppn=2:gpus=1",
        "-l mem=1024mb",
        "-l walltime=00:10:00",
        "-A proj",
        "-t 0-5%2",
    ]


def test_pbs_submit_names_and_bin_dir():
    plain = PbsScheduler().submit_command("job-0.sh", context(job_name="9 lives; $(rm)"))
    assert plain == "qsub -N j9_lives____rm_ -o scheduler.log -j oe job-0.sh"
    torque = PbsScheduler("/opt/my pbs/bin").submit_command(
        "job-1.sh", context(job_name="clustrix-wait_and_return", options={"flavor": "torque"})
    )
    assert torque == "'/opt/my pbs/bin/qsub' -N clustrix-wait_a -o scheduler.log -j oe job-1.sh"
    assert PbsScheduler().bin_dir == "", "the argument sets one instance only"


def test_pbs_ids_are_kept_whole():
    assert PbsScheduler().parse_job_id("123.pbs01\n") == "123.pbs01"
    assert PbsScheduler().parse_job_id("123[].pbs01\n") == "123[].pbs01"
    assert PbsScheduler().parse_job_id("1128\n") == "1128"  # captured (wrapper)


def test_pbs_options_are_checked():
    scheduler = PbsScheduler()
    with pytest.raises(ConfigError, match="expected 'pro' or 'torque'"):
        scheduler.check_options({"flavor": "slurm"})
    with pytest.raises(ConfigError, match="unknown pbs option 'flavour'; did you mean 'flavor'"):
        scheduler.check_options({"flavour": "torque"})
    with pytest.raises(ConfigError, match="without whitespace"):
        scheduler.check_options({"l": "ngpus=1 -q x"})


# ---------------------------------------------------------------------- PBS: status

# captured: qstat -f 1146 1147 1148 1149 99999 from SLURM's wrapper (running, exited 3,
# array with one element running, held).
WRAPPER_QSTAT = (
    "Job Id:\t1146\n\tJob_Name = run\n\tJob_Owner = clustrix@localhost\n\tjob_state = R\n"
    "\tqueue = debug\n\tqtime = Sat Nov 28 22:49:19 2026\n\tmtime = Sat Nov 28 22:49:20 2026\n"
    "\tctime = Sun Nov 28 22:49:20 2027\n\texec_host = vm/1\n\tPriority = 4294901417\n"
    "\teuser = clustrix(1001)\n\tegroup = clustrix(1001)\n"
    "\tResource_List.walltime = 71582788:15:00\n\tResource_List.nodect = 1\n"
    "\tResource_List.ncpus = 1\n\n"
    "Job Id:\t1147\n\tJob_Name = failing\n\tJob_Owner = clustrix@localhost\n\tjob_state = C\n"
    "\tqueue = debug\n\tqtime = Sat Nov 28 22:49:19 2026\n\tmtime = Sat Nov 28 22:49:20 2026\n"
    "\tctime = Sat Nov 28 22:49:20 2026\n\texec_host = vm/1\n\tPriority = 4294901416\n"
    "\teuser = clustrix(1001)\n\tegroup = clustrix(1001)\n"
    "\tResource_List.walltime = 71582788:15:00\n\tResource_List.nodect = 1\n"
    "\tResource_List.ncpus = 1\n\n"
    "Job Id:\t1149\n\tJob_Name = held\n\tJob_Owner = clustrix@localhost\n\tjob_state = Q\n"
    "\tqueue = debug\n\tqtime = Sat Nov 28 22:49:19 2026\n\tPriority = 0\n"
    "\teuser = clustrix(1001)\n\tegroup = clustrix(1001)\n"
    "\tResource_List.walltime = 71582788:15:00\n\tResource_List.nodect = 1\n"
    "\tResource_List.ncpus = 1\n\n"
    "Job Id:\t1148\n\tJob_Name = arr\n\tJob_Owner = clustrix@localhost\n\tjob_state = Q\n"
    "\tqueue = debug\n\tqtime = Sat Nov 28 22:49:19 2026\n\tPriority = 4294901415\n"
    "\teuser = clustrix(1001)\n\tegroup = clustrix(1001)\n"
    "\tResource_List.walltime = 71582788:15:00\n\tResource_List.nodect = 1\n"
    "\tResource_List.ncpus = 1\n\n"
)

# from the manuals (PBS Pro qstat -f -x -t layout): an array with finished and running
# subjobs, and finished plain jobs; a long value wrapped (mid-word) onto a second line.
PRO_QSTAT = """\
Job Id: 200[].pbs01
    Job_Name = clustrix-f
    job_state = B
    array = True

Job Id: 200[0].pbs01
    job_state = X
    Exit_status = 0

Job Id: 200[1].pbs01
    job_state = X
    Exit_status = -29
    comment = Job run at Sat Nov 28 at 10:00 on (node1:ncpus=1) and finished

Job Id: 200[2].pbs01
    job_state = R

Job Id: 201.pbs01
    job_state = F
    Exit_status = -27

Job Id: 202.pbs01
    job_state = F
    Exit_status = 271
    Resource_List.walltime = 00:10:00
    resources_used.walltime = 00:02:13

Job Id: 203.pbs01
    job_state = F
    Exit_status = 265
    Resource_List.walltime = 00:00:05
    resources_used.walltime = 00:00:06

Job Id: 204.pbs01
    job_state = F
    Exit_status = 2
    comment = Job run at Sat Nov 28 at 10:00 on (node1:ncpus=1) and failed because the scr
\tipt exited with a non-zero code

qstat: 205.pbs01 Job has finished, use -x or -H to obtain historical job information
"""


def test_pbs_captured_wrapper_output():
    ids = ["1146", "1147", "1148", "1149", "99999"]
    statuses = PbsScheduler().parse_status(WRAPPER_QSTAT, ids)
    assert statuses["1146"].state is JobState.RUNNING
    assert statuses["1147"].state is JobState.FAILED  # C without an exit status
    assert statuses["1147"].exit_code is None
    assert statuses["1148"].state is JobState.PENDING
    assert statuses["1149"].state is JobState.PENDING
    assert statuses["99999"].state is JobState.UNKNOWN


def test_pbs_pro_subjobs_and_exit_codes():
    ids = ["200[].pbs01", "201.pbs01", "202.pbs01", "203.pbs01", "204.pbs01", "205.pbs01"]
    statuses = PbsScheduler().parse_status(PRO_QSTAT, ids)
    assert statuses["200[].pbs01"].state is JobState.RUNNING  # B: the fallback of subjobs
    assert statuses["200[].pbs01_0"].state is JobState.COMPLETED
    assert statuses["200[].pbs01_1"].state is JobState.TIMEOUT
    assert statuses["200[].pbs01_2"].state is JobState.RUNNING
    assert statuses["201.pbs01"].state is JobState.OUT_OF_MEMORY
    assert (statuses["202.pbs01"].state, statuses["202.pbs01"].exit_code) == (
        JobState.CANCELLED,
        271,
    )
    assert statuses["203.pbs01"].state is JobState.TIMEOUT  # killed at its walltime
    assert (statuses["204.pbs01"].state, statuses["204.pbs01"].exit_code) == (JobState.FAILED, 2)
    assert statuses["204.pbs01"].reason.endswith(
        "failed because the script exited with a non-zero code"
    )
    assert statuses["205.pbs01"].state is JobState.UNKNOWN


def test_pbs_server_names_may_differ_between_qsub_and_qstat():
    output = "Job Id: 7.pbs01.example.org\n    job_state = R\n"
    assert PbsScheduler().parse_status(output, ["7.pbs01"])["7.pbs01"].state is JobState.RUNNING


@pytest.mark.parametrize(
    ("attributes", "state"),
    [
        ({"job_state": "Q"}, JobState.PENDING),
        ({"job_state": "H"}, JobState.PENDING),
        ({"job_state": "W"}, JobState.PENDING),
        ({"job_state": "T"}, JobState.PENDING),
        ({"job_state": "E"}, JobState.RUNNING),
        ({"job_state": "S"}, JobState.RUNNING),
        ({"job_state": "C", "exit_status": "0"}, JobState.COMPLETED),
        ({"job_state": "C", "exit_status": "-11"}, JobState.TIMEOUT),  # Torque walltime
        ({"job_state": "C", "exit_status": "-10"}, JobState.OUT_OF_MEMORY),  # Torque mem
        ({"job_state": "F", "exit_status": "-11"}, JobState.FAILED),  # PBS Pro: a rerun code
        ({"job_state": "F", "exit_status": "-28"}, JobState.TIMEOUT),  # PBS Pro cput
        ({"job_state": "F", "exit_status": "-26"}, JobState.OUT_OF_MEMORY),  # PBS Pro vmem
        ({"job_state": "C", "exit_status": "265"}, JobState.CANCELLED),
        ({"job_state": "?"}, JobState.UNKNOWN),
    ],
)
def test_pbs_state_and_exit_mapping(attributes, state):
    assert attribute_status(attributes).state is state


def test_pbs_unreachable_server_is_not_mistaken_for_vanished_jobs():
    with pytest.raises(SchedulerUnavailableError, match="Problem loading jobs"):
        PbsScheduler().parse_status("Problem loading jobs.\n", ["1"])
    with pytest.raises(SchedulerUnavailableError, match="cannot connect to server"):
        PbsScheduler().parse_status(
            "Connection refused\nqstat: cannot connect to server pbs01 (errno=111)\n", ["1"]
        )
    forgotten = "qstat: Unknown Job Id Error 7.pbs01\n"
    assert PbsScheduler().parse_status(forgotten, ["7.pbs01"])["7.pbs01"].state is JobState.UNKNOWN


def test_pbs_qstat_full_continuation_lines():
    blocks, stray = parse_qstat_full(PRO_QSTAT)
    assert blocks["204.pbs01"]["comment"].endswith("the script exited with a non-zero code")
    assert stray == [
        "qstat: 205.pbs01 Job has finished, use -x or -H to obtain historical job information"
    ]


def test_pbs_cancel_commands():
    scheduler = PbsScheduler()
    assert scheduler.cancel_command(["12.s", "13[].s_4"]) == "qdel 12.s '13[4].s'"
    # An element of a bracket-less array (the wrappers): qdel would take the whole array.
    assert scheduler.cancel_command(["77_3"]) == "true"
    assert scheduler.cancel_command(["77", "78.srv_x"]) == "qdel 77 78.srv_x"


def test_pbs_history_is_asked_for_in_the_detailed_look_only():
    scheduler = PbsScheduler()
    assert "-x" not in scheduler.status_command({"1.s": "/a"})
    assert "'-f -x -t'" in scheduler.status_command({"1.s": "/a"}, detailed=True)
    assert scheduler.status_command({}) == "true"
    assert scheduler.parse_max_array_size("    max_array_size = 10000\n") == 10000
    assert scheduler.parse_max_array_size("") is None


@pytest.mark.parametrize(
    ("refuses", "expected"),
    [
        ("x t", "-f 1.s"),  # SLURM's wrapper: "Unknown option: x", then "t"
        ("", "-f -x -t 1.s"),  # PBS Pro
        ("xml", "-f -t 1.s"),  # Torque: -x means XML
    ],
)
def test_pbs_qstat_options_fall_back(tmp_path: Path, refuses, expected):
    """The status command in a real shell, with a fake qstat that refuses some options."""
    fake = tmp_path / "qstat"
    fake.write_text(
        textwrap.dedent(f"""\
        #!/bin/bash
        for a in "$@"; do
          case "$a" in
            -x) [ "{refuses}" = xml ] && {{ echo '<Data><Job>'; exit 0; }}
                [[ " {refuses} " == *" x "* ]] && {{ echo 'Unknown option: x'; echo 'Usage:'; exit 2; }};;
            -t) [[ " {refuses} " == *" t "* ]] && {{ echo 'Unknown option: t'; echo 'Usage:'; exit 2; }};;
          esac
        done
        printf 'Job Id: 1.s\\n    job_state = R\\n    comment = %s\\n' "$*"
        """)
    )
    fake.chmod(0o755)
    scheduler = PbsScheduler(str(tmp_path))
    command = scheduler.status_command({"1.s": "/a"}, detailed=True)
    output = subprocess.run(
        ["bash", "-c", command], capture_output=True, text=True, check=True, timeout=30
    ).stdout
    status = scheduler.parse_status(output, ["1.s"])["1.s"]
    assert (status.state, status.reason) == (JobState.RUNNING, expected)


# ---------------------------------------------------------------------- values on directive lines


@pytest.mark.parametrize(
    ("scheduler", "changes", "field"),
    [
        (SgeScheduler(), {"account": "a\ntouch /tmp/marker"}, "account"),
        (SgeScheduler(), {"resources": Resources(queue="all.q\ntouch /tmp/marker")}, "queue"),
        (SgeScheduler(), {"options": {"pe": "smp\ntouch /tmp/marker"}}, "pe"),
        (SgeScheduler(), {"account": "two words"}, "account"),
        (SgeScheduler(), {"resources": Resources(queue="all.q -l h_rt=1")}, "queue"),
        (PbsScheduler(), {"account": "a\ntouch /tmp/marker"}, "account"),
        (PbsScheduler(), {"options": {"select": "model=a100 -q x"}}, "select"),
        (PbsScheduler(), {"resources": Resources(queue="batch\r\n#PBS -q x")}, "queue"),
    ],
)
def test_every_qsub_directive_value_is_checked_as_it_is_written(scheduler, changes, field):
    # Whatever reaches a directive (here without the checks of configure() and
    # check_options): no line break, and no whitespace, on which qsub splits these lines.
    resources = changes.pop("resources", Resources.parse(cores=2))
    with pytest.raises(ConfigError, match="cannot be written on a '#") as info:
        scheduler.render_script(resources, context(**changes))
    assert info.value.field == field


def test_sge_refuses_script_lines_that_start_like_a_directive():
    # qsub reads '#$' lines anywhere in the script (verified on the test cluster): a quoted
    # variable value spanning lines must not put one there.
    scheduler = SgeScheduler()
    with pytest.raises(ConfigError, match="would start with '#\\$'"):
        scheduler.render_script(
            Resources.parse(),
            context(environment_variables={"NOTE": "fine\n#$ -A someone-else"}),
        )
    with pytest.raises(ConfigError, match="would start with '#\\$'"):
        scheduler.render_script(
            Resources.parse(), context(pre_execution_commands=("true\n#$ -l h_rt=99:00:00",))
        )
    script = scheduler.render_script(
        Resources.parse(), context(environment_variables={"NOTE": "fine\n  #$ is text here"})
    )
    assert "export NOTE='fine\n  #$ is text here'" in script


# ---------------------------------------------------------------------- pipelines


def _pipeline_context(**values):
    return ScriptContext(job_name="f", job_dir="/w/j", python_command="python3", **values)


def test_sge_holds_for_upstream_jobs_and_array_to_array():
    sge = scheduler_for("sge")
    assert "#$ -hold_jid 41,42\n" in sge.render_script(
        Resources(), _pipeline_context(after=("41", "42"))
    )
    assert "#$ -hold_jid_ad 41\n" in sge.render_script(
        Resources(), _pipeline_context(after_each="41")
    )


def test_pbs_depends_afterok_even_element_wise():
    pbs = PbsScheduler()
    assert "#PBS -W depend=afterok:41.srv:42.srv\n" in pbs.render_script(
        Resources(), _pipeline_context(after=("41.srv", "42.srv"))
    )
    assert "#PBS -W depend=afterok:43[].srv\n" in pbs.render_script(
        Resources(), _pipeline_context(after_each="43[].srv")
    )
