# shellcheck shell=bash
# Component "sge": Sun Grid Engine 8.1.9, sge_qmaster + sge_execd on this host, queue all.q
# (16 slots, bash) and parallel environment "smp" (all slots of a job on one host); the
# scheduler runs every second.
#
# Interface (see scripts/testcluster.sh): sge_packages, sge_preinstall, sge_up, sge_down_begin,
# sge_down, sge_running, sge_env, sge_login_env.
# For other components: SGE_ROOT_DIR and SGE_CELL_NAME (also exported as SGE_ROOT, SGE_CELL).
# Files: $STATE/sge (the qconf inputs), $SGE_ROOT/default/common (host_aliases, act_qmaster),
# /var/spool/gridengine, logs in $LOG; $RUN/sge.started marks daemons this script started.

component sge 30 30

SGE_ROOT_DIR=/var/lib/gridengine
SGE_CELL_NAME=default
SGE_DIR=$STATE/sge
SGE_COMMON=$SGE_ROOT_DIR/$SGE_CELL_NAME/common
QMASTER_PID=/var/spool/gridengine/qmaster/qmaster.pid   # sge_qmaster ignores SGE_MASTER_PIDFILE
EXECD_PID=/run/gridengine/execd.pid
export SGE_ROOT=$SGE_ROOT_DIR SGE_CELL=$SGE_CELL_NAME

sge_packages() { echo gridengine-master gridengine-exec gridengine-client; }

preseed_gridengine() {
  local p
  for p in gridengine-common gridengine-client gridengine-master gridengine-exec; do
    printf '%s shared/gridengineconfig boolean true\n' "$p"
    printf '%s shared/gridenginecell string %s\n' "$p" "$SGE_CELL_NAME"
    printf '%s shared/gridenginemaster string %s\n' "$p" "$HOST"
  done | debconf-set-selections
}

# The packages read the cell and the master host from debconf when they are installed.
sge_preinstall() { pkg_installed gridengine-master || preseed_gridengine; }

sge_running() { pid_alive "$QMASTER_PID" sge_qmaster && pid_alive "$EXECD_PID" sge_execd; }
sge_answers() { qconf -sh >/dev/null 2>&1; }
sge_queue_ready() {
  # all.q@HOST is listed and its state column is empty (not unknown/alarm/disabled)
  qstat -f -q "all.q@$HOST" 2>/dev/null | awk -v q="all.q@$HOST" '$1 == q {found = 1; if (NF > 5) bad = 1} END {exit !(found && !bad)}'
}

# sge_apply KIND NAME FILE: add (-A) or modify (-M) a qconf object from a file.
sge_apply() {
  local kind=$1 name=$2 file=$3 show add mod
  case $kind in
    pe) show=-sp add=-Ap mod=-Mp ;;
    queue) show=-sq add=-Aq mod=-Mq ;;
    exechost) show=-se add=-Ae mod=-Me ;;
  esac
  if qconf "$show" "$name" >/dev/null 2>&1; then
    qconf "$mod" "$file" >>"$LOG/sge-config.log" 2>&1 || fail "qconf $mod $name failed" "$LOG/sge-config.log"
  else
    qconf "$add" "$file" >>"$LOG/sge-config.log" 2>&1 || fail "qconf $add $name failed" "$LOG/sge-config.log"
  fi
}

configure_sge() {
  mkdir -p "$SGE_DIR"
  local f
  # Global configuration: let uid/gid < 1000 run jobs, fast accounting flush.
  mkdir -p "$SGE_DIR/conf"
  f=$SGE_DIR/conf/global
  qconf -sconf global >"$f.raw" 2>>"$LOG/sge-config.log" || fail "qconf -sconf failed" "$LOG/sge-config.log"
  # join the "\"-continued lines (reporting_params spans two) before editing
  sed -e ':a' -e '/\\$/N; s/\\\n[[:space:]]*/ /; ta' "$f.raw" >"$f"
  sed -i -E -e 's/^(min_uid|min_gid)( +).*/\1\20/' \
    -e 's/^reporting_params .*/reporting_params             accounting=true reporting=false flush_time=00:00:01 joblog=false sharelog=00:00:00/' \
    -e 's/^load_report_time .*/load_report_time             00:00:10/' "$f"
  qconf -Mconf "$f" >>"$LOG/sge-config.log" 2>&1 || fail "qconf -Mconf failed" "$LOG/sge-config.log"
  # Scheduler: run every second and right after submissions / job ends.
  f=$SGE_DIR/sched_conf
  qconf -ssconf >"$f" 2>>"$LOG/sge-config.log" || fail "qconf -ssconf failed" "$LOG/sge-config.log"
  sed -i -E -e 's/^schedule_interval .*/schedule_interval                 0:0:1/' \
    -e 's/^flush_submit_sec .*/flush_submit_sec                  1/' \
    -e 's/^flush_finish_sec .*/flush_finish_sec                  1/' \
    -e 's/^job_load_adjustments .*/job_load_adjustments              NONE/' \
    -e 's/^load_adjustment_decay_time .*/load_adjustment_decay_time        0:0:0/' "$f"
  qconf -Msconf "$f" >>"$LOG/sge-config.log" 2>&1 || fail "qconf -Msconf failed" "$LOG/sge-config.log"
  # This host: admin, submit and exec host.
  qconf -sh 2>/dev/null | grep -qx "$HOST" || qconf -ah "$HOST" >>"$LOG/sge-config.log" 2>&1 || true
  qconf -ss 2>/dev/null | grep -qx "$HOST" || qconf -as "$HOST" >>"$LOG/sge-config.log" 2>&1 ||
    fail "qconf -as $HOST failed" "$LOG/sge-config.log"
  f=$SGE_DIR/exechost
  cat >"$f" <<EOF
hostname              $HOST
load_scaling          NONE
complex_values        NONE
user_lists            NONE
xuser_lists           NONE
projects              NONE
xprojects             NONE
usage_scaling         NONE
report_variables      NONE
EOF
  qconf -se "$HOST" >/dev/null 2>&1 || sge_apply exechost "$HOST" "$f"
  # Parallel environment "smp": all slots of a job on one host.
  f=$SGE_DIR/pe_smp
  cat >"$f" <<'EOF'
pe_name            smp
slots              16
user_lists         NONE
xuser_lists        NONE
start_proc_args    NONE
stop_proc_args     NONE
allocation_rule    $pe_slots
control_slaves     FALSE
job_is_first_task  TRUE
urgency_slots      min
accounting_summary FALSE
qsort_args         NONE
EOF
  sge_apply pe smp "$f"
  # Queue all.q on this host.
  f=$SGE_DIR/queue_all.q
  cat >"$f" <<EOF
qname                 all.q
hostlist              $HOST
seq_no                0
load_thresholds       NONE
suspend_thresholds    NONE
nsuspend              1
suspend_interval      00:05:00
priority              0
min_cpu_interval      00:05:00
processors            UNDEFINED
qtype                 BATCH INTERACTIVE
ckpt_list             NONE
pe_list               smp
rerun                 FALSE
slots                 16
tmpdir                /tmp
shell                 /bin/bash
prolog                NONE
epilog                NONE
shell_start_mode      posix_compliant
starter_method        NONE
suspend_method        NONE
resume_method         NONE
terminate_method      NONE
notify                00:00:60
owner_list            NONE
user_lists            NONE
xuser_lists           NONE
subordinate_list      NONE
complex_values        NONE
projects              NONE
xprojects             NONE
calendar              NONE
initial_state         default
s_rt                  INFINITY
h_rt                  INFINITY
s_cpu                 INFINITY
h_cpu                 INFINITY
s_fsize               INFINITY
h_fsize               INFINITY
s_data                INFINITY
h_data                INFINITY
s_stack               INFINITY
h_stack               INFINITY
s_core                INFINITY
h_core                INFINITY
s_rss                 INFINITY
h_rss                 INFINITY
s_vmem                INFINITY
h_vmem                INFINITY
EOF
  sge_apply queue all.q "$f"
  echo "$HOST" >"$SGE_DIR/configured"
}

sge_up() {
  if sge_running && [[ $(cat "$SGE_DIR/configured" 2>/dev/null) == "$HOST" ]] && sge_queue_ready; then
    say "sge: already up"; return 0
  fi
  [[ -d $SGE_COMMON ]] || fail "$SGE_COMMON is missing: gridengine was installed without its debconf answers (dpkg-reconfigure gridengine-common? or purge and rerun)"
  # Clients reach qmaster from 127.0.0.1, which resolves to "localhost": alias it to this host.
  printf '%s localhost\n' "$HOST" | write_if_changed "$SGE_COMMON/host_aliases" 644 || true
  echo "$HOST" | write_if_changed "$SGE_COMMON/act_qmaster" 644 || true
  mkdir -p /run/gridengine && chown sgeadmin:sgeadmin /run/gridengine
  if ! pid_alive "$QMASTER_PID" sge_qmaster; then
    say "starting sge_qmaster"
    /usr/sbin/sge_qmaster </dev/null >>"$LOG/sge_qmaster.start.log" 2>&1 ||
      fail "sge_qmaster did not start" "$LOG/sge_qmaster.start.log" /var/spool/gridengine/qmaster/messages
    touch "$RUN/sge.started"
  fi
  wait_for 45 "sge_qmaster to answer qconf" "/var/spool/gridengine/qmaster/messages" -- sge_answers
  if [[ $(cat "$SGE_DIR/configured" 2>/dev/null) != "$HOST" ]] || ! qconf -sq all.q >/dev/null 2>&1 ||
     ! qconf -sp smp >/dev/null 2>&1; then
    say "configuring sge (scheduler, hosts, pe smp, queue all.q)"
    configure_sge
  fi
  if ! pid_alive "$EXECD_PID" sge_execd; then
    say "starting sge_execd"
    mkdir -p /var/spool/gridengine/execd && chown sgeadmin:sgeadmin /var/spool/gridengine/execd
    SGE_EXECD_PIDFILE=$EXECD_PID /usr/sbin/sge_execd </dev/null >>"$LOG/sge_execd.start.log" 2>&1 ||
      fail "sge_execd did not start" "$LOG/sge_execd.start.log" /var/spool/gridengine/execd/*/messages
    touch "$RUN/sge.started"
  fi
  wait_for 45 "queue all.q@$HOST to be ready" \
    "/var/spool/gridengine/qmaster/messages $(echo /var/spool/gridengine/execd/*/messages)" -- sge_queue_ready
  say "sge: up"
}

# SGE stops in two halves: qmaster needs ~8 s to shut down, so the rest is stopped meanwhile
# (`down` calls every NAME_down_begin first, then every NAME_down: the others stop meanwhile).
sge_down_begin() {
  [[ -e $RUN/sge.started ]] || return 0
  local i
  if pid_alive "$EXECD_PID" sge_execd; then
    say "stopping sge_execd"
    timeout 20 qconf -ke all >/dev/null 2>&1 || true
    for ((i = 0; i < 100; i++)); do pid_alive "$EXECD_PID" sge_execd || break; sleep 0.1; done
    if pid_alive "$EXECD_PID" sge_execd; then stop_pidfile sge_execd "$EXECD_PID"; fi
  fi
  if pid_alive "$QMASTER_PID" sge_qmaster; then
    say "stopping sge_qmaster"
    timeout 20 qconf -km >/dev/null 2>&1 || kill "$(<"$QMASTER_PID")" 2>/dev/null || true
  fi
}

sge_down() {
  [[ -e $RUN/sge.started ]] || return 0
  local i
  for ((i = 0; i < 200; i++)); do pid_alive "$QMASTER_PID" sge_qmaster || break; sleep 0.1; done
  if pid_alive "$QMASTER_PID" sge_qmaster; then stop_pidfile sge_qmaster "$QMASTER_PID"; fi
  rm -f "$EXECD_PID" "$QMASTER_PID" "$RUN/sge.started"
}

sge_env() {
  echo "export CLUSTRIX_TEST_SGE=1"
  echo "export SGE_ROOT=$SGE_ROOT_DIR"
  echo "export SGE_CELL=$SGE_CELL_NAME"
}

sge_login_env() {
  echo "SGE_ROOT=$SGE_ROOT_DIR"
  echo "SGE_CELL=$SGE_CELL_NAME"
}
