#!/usr/bin/env bash
# Local test cluster for clustrix: real schedulers on 127.0.0.1 of this machine.
#
#   scripts/testcluster.sh up [slurm|ssh|sge|pbs ...]   install what is missing, start (default: all)
#   scripts/testcluster.sh down                         stop what this script started
#   scripts/testcluster.sh status [COMPONENT...]        print up/down; non-zero if one is down
#   scripts/testcluster.sh env                          print the sourceable settings file
#
# Components:
#   slurm  munge + slurmctld + slurmd (one node) + slurmdbd/mariadb (sacct works)
#   ssh    OpenSSH server on 127.0.0.1:2222 (own config and host key), test user "clustrix"
#          logging in with a generated ed25519 key; it can submit to SLURM and SGE
#   sge    Sun Grid Engine qmaster + execd, queue all.q, parallel environment "smp"
#   pbs    Torque/PBS-style qsub/qstat/qdel (slurm-wlm-torque, unpacked, not installed)
#          on top of SLURM; called by full path ($CLUSTRIX_TEST_PBS_BIN/qsub)
#
# Everything lives in ${CLUSTRIX_TESTCLUSTER_DIR:-/var/tmp/clustrix-testcluster} (the "state
# folder"): configs, logs, pid files, keys, and "env" (source it to get the connection settings).
# Needs root and a Debian 12 machine (apt-get works); daemons are started by hand because
# these machines have no systemd and a policy-rc.d that forbids starting services.
set -euo pipefail

STATE=${CLUSTRIX_TESTCLUSTER_DIR:-/var/tmp/clustrix-testcluster}
SSH_PORT=${CLUSTRIX_TESTCLUSTER_SSH_PORT:-2222}
TEST_USER=clustrix
TEST_HOME=/home/$TEST_USER
SGE_ROOT_DIR=/var/lib/gridengine
SGE_CELL_NAME=default
ALL_COMPONENTS=(slurm ssh sge pbs)
HOST=$(hostname -s)

RUN=$STATE/run
LOG=$STATE/log
SLURM_DIR=$STATE/slurm
SLURM_CONF_FILE=$SLURM_DIR/slurm.conf
SSH_DIR=$STATE/ssh
SGE_DIR=$STATE/sge
PBS_DIR=$STATE/pbs
PBS_BIN=$PBS_DIR/usr/bin
ENV_FILE=$STATE/env

export SLURM_CONF=$SLURM_CONF_FILE
export SGE_ROOT=$SGE_ROOT_DIR SGE_CELL=$SGE_CELL_NAME

T0=$(date +%s%N)
say() { printf '[testcluster %5.1fs] %s\n' "$(( ($(date +%s%N) - T0) / 1000000 ))e-3" "$*"; }
warn() { printf '[testcluster] WARNING: %s\n' "$*" >&2; }

# fail MESSAGE [LOGFILE...]: print the message and the tails of the logs, then exit 1.
fail() {
  local msg=$1; shift
  printf '[testcluster] ERROR: %s\n' "$msg" >&2
  local f
  for f in "$@"; do
    if [[ -r $f ]]; then
      printf -- '----- last lines of %s -----\n' "$f" >&2
      tail -n 25 "$f" >&2 || true
    fi
  done
  exit 1
}

now_ms() { echo $(( $(date +%s%N) / 1000000 )); }

# wait_for SECONDS DESCRIPTION LOGS -- COMMAND...: poll COMMAND (quietly) until it succeeds.
# LOGS is a space-separated list of log files shown on timeout.
wait_for() {
  local secs=$1 desc=$2 logs=$3; shift 4
  local end=$(( $(now_ms) + secs * 1000 )) out
  while true; do
    if out=$("$@" 2>&1); then return 0; fi
    if (( $(now_ms) > end )); then
      printf '[testcluster] last output of `%s`:\n%s\n' "$*" "$out" >&2
      # shellcheck disable=SC2086
      fail "timed out after ${secs}s waiting for $desc" $logs
    fi
    sleep 0.2
  done
}

# proc_running PID: alive and not a zombie. PID 1 on these machines reaps orphans only every ~2 s,
# so `kill -0` alone reports a stopped daemon as alive for a while.
proc_running() {
  kill -0 "$1" 2>/dev/null || return 1
  local st
  st=$(sed -n 's/^State:[[:space:]]*\([A-Z]\).*/\1/p' "/proc/$1/status" 2>/dev/null) || true
  [[ $st != Z ]]
}
# pid_alive PIDFILE [NAME]: the process is running (and, given NAME, is that program: a stale
# pid file left by a restarted machine may name a pid now used by something else).
pid_alive() {
  [[ -s $1 ]] || return 1
  local pid
  pid=$(<"$1")
  [[ $pid =~ ^[0-9]+$ ]] && proc_running "$pid" || return 1
  [[ -z ${2:-} || $(cat "/proc/$pid/comm" 2>/dev/null) == "$2" ]]
}

# stop_pidfile NAME PIDFILE: TERM the process (if it is still program NAME), wait up to 15 s, then KILL; remove the pid file.
stop_pidfile() {
  local name=$1 f=$2 pid i
  if ! [[ -s $f ]]; then return 0; fi
  pid=$(<"$f")
  if pid_alive "$f" "$name"; then
    say "stopping $name (pid $pid)"
    kill "$pid" 2>/dev/null || true
    for ((i = 0; i < 150; i++)); do
      proc_running "$pid" || break
      sleep 0.1
    done
    if proc_running "$pid"; then
      warn "$name (pid $pid) ignored SIGTERM for 15 s; killing it"
      kill -9 "$pid" 2>/dev/null || true
    fi
  fi
  rm -f "$f"
}

need_root() { [[ $(id -u) -eq 0 ]] || fail "must run as root (it installs packages and starts daemons)"; }

# ---------------------------------------------------------------------------------------------
# Packages
# ---------------------------------------------------------------------------------------------
APT_UPDATED=0
apt_update_once() {
  if (( APT_UPDATED == 0 )); then
    say "apt-get update"
    apt-get update -qq || fail "apt-get update failed"
    APT_UPDATED=1
  fi
}

pkg_installed() { [[ $(dpkg-query -W -f='${Status}' "$1" 2>/dev/null) == "install ok installed" ]]; }

# ensure_packages PKG...: install those that are missing, in one apt-get call.
ensure_packages() {
  local missing=() p
  for p in "$@"; do pkg_installed "$p" || missing+=("$p"); done
  ((${#missing[@]})) || return 0
  say "installing: ${missing[*]}"
  local cmd=(env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends
             -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold "${missing[@]}")
  # Package lists may be missing or stale on a fresh machine: update once, only if needed.
  if ! "${cmd[@]}" >"$LOG/apt.log" 2>&1; then
    apt_update_once
    "${cmd[@]}" >"$LOG/apt.log" 2>&1 || fail "apt-get install failed" "$LOG/apt.log"
  fi
}

packages_for() {
  local c
  for c in "$@"; do
    case $c in
      slurm) echo munge slurmctld slurmd slurm-client slurmdbd mariadb-server ;;
      ssh) echo openssh-server openssh-client python3 python3-venv ;;
      sge) echo gridengine-master gridengine-exec gridengine-client ;;
      pbs) echo libslurm-perl libslurmdb-perl libswitch-perl ;;
    esac
  done
}

preseed_gridengine() {
  local p
  for p in gridengine-common gridengine-client gridengine-master gridengine-exec; do
    printf '%s shared/gridengineconfig boolean true\n' "$p"
    printf '%s shared/gridenginecell string %s\n' "$p" "$SGE_CELL_NAME"
    printf '%s shared/gridenginemaster string %s\n' "$p" "$HOST"
  done | debconf-set-selections
}

# Make sure the short host name resolves (SLURM and SGE need it).
ensure_hostname_resolves() {
  getent hosts "$HOST" >/dev/null 2>&1 || echo "127.0.0.1 $HOST" >>/etc/hosts
}

# ---------------------------------------------------------------------------------------------
# SLURM (munge, mariadb, slurmdbd, slurmctld, slurmd)
# ---------------------------------------------------------------------------------------------
munge_ok() { munge -n </dev/null 2>/dev/null | unmunge >/dev/null 2>&1; }

start_munge() {
  if munge_ok; then return 0; fi
  [[ -s /etc/munge/munge.key ]] || {
    say "creating munge key"
    if command -v mungekey >/dev/null; then mungekey --create --keyfile=/etc/munge/munge.key
    else dd if=/dev/urandom of=/etc/munge/munge.key bs=1 count=1024 status=none; fi
    chown munge:munge /etc/munge/munge.key; chmod 400 /etc/munge/munge.key
  }
  mkdir -p /run/munge /var/log/munge /var/lib/munge
  chown munge:munge /run/munge /var/log/munge /var/lib/munge
  chmod 755 /run/munge
  say "starting munged"
  rm -f /run/munge/munged.pid
  runuser -u munge -- /usr/sbin/munged --force </dev/null >>"$LOG/munged.start.log" 2>&1 ||
    fail "munged did not start" "$LOG/munged.start.log" /var/log/munge/munged.log
  wait_for 10 "munged" "/var/log/munge/munged.log" -- munge_ok
  cp /run/munge/munged.pid "$RUN/munged.pid"   # we started it: we stop it
}

MYSQL_SOCK=/run/mysqld/mysqld.sock
mariadb_ok() { mariadb-admin --socket="$MYSQL_SOCK" -uroot ping >/dev/null 2>&1; }

start_mariadb() {
  if pid_alive "$RUN/mariadb.pid" mariadbd || mariadb_ok; then return 0; fi
  mkdir -p /run/mysqld && chown mysql:mysql /run/mysqld
  if [[ ! -d /var/lib/mysql/mysql ]]; then
    say "initialising the mariadb data folder"
    mariadb-install-db --user=mysql --datadir=/var/lib/mysql --auth-root-authentication-method=socket \
      >"$LOG/mariadb-install.log" 2>&1 || fail "mariadb-install-db failed" "$LOG/mariadb-install.log"
  fi
  say "starting mariadb"
  setsid /usr/sbin/mariadbd --no-defaults --user=mysql --datadir=/var/lib/mysql \
    --socket="$MYSQL_SOCK" --pid-file=/run/mysqld/mysqld.pid --bind-address=127.0.0.1 --port=3306 \
    --log-error="$LOG/mariadb.err" --innodb-use-native-aio=0 --skip-name-resolve \
    </dev/null >>"$LOG/mariadb.log" 2>&1 &
  echo $! >"$RUN/mariadb.pid"
  touch "$LOG/mariadb.err"; chown mysql:mysql "$LOG/mariadb.err"
}

setup_slurm_db() {
  wait_for 30 "mariadb" "$LOG/mariadb.err $LOG/mariadb.log" -- mariadb_ok
  local pass
  pass=$(cat "$SLURM_DIR/dbpass")
  mariadb --socket="$MYSQL_SOCK" -uroot <<SQL || fail "could not create the slurm database" "$LOG/mariadb.err"
CREATE DATABASE IF NOT EXISTS slurm_acct_db;
CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY '$pass';
ALTER USER 'slurm'@'localhost' IDENTIFIED BY '$pass';
GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost';
SQL
}

# write_if_changed FILE MODE: content from stdin; returns 0 if the file changed.
write_if_changed() {
  local f=$1 mode=$2 tmp
  tmp=$(mktemp "$f.XXXXXX")
  cat >"$tmp"
  chmod "$mode" "$tmp"
  if [[ -f $f ]] && cmp -s "$tmp" "$f"; then rm -f "$tmp"; return 1; fi
  mv -f "$tmp" "$f"
  return 0
}

write_slurm_conf() {
  local cpus mem changed=1
  cpus=$(nproc)
  mem=$(awk '/^MemTotal:/ {printf "%d", $2 / 1024 * 0.8}' /proc/meminfo)
  mkdir -p "$SLURM_DIR/state" "$SLURM_DIR/spool"
  chmod 700 "$SLURM_DIR/state"
  chmod 755 "$SLURM_DIR/spool"   # slurmstepd runs the job script from here as the user
  [[ -s $SLURM_DIR/dbpass ]] || { (umask 077; head -c 18 /dev/urandom | base64 | tr -d '/+=' >"$SLURM_DIR/dbpass"); }
  printf '#!/bin/sh\n# Having an Epilog makes slurmctld schedule at each job end (fast arrays).\nexit 0\n' |
    write_if_changed "$SLURM_DIR/epilog.sh" 755 || true
  write_if_changed "$SLURM_CONF_FILE" 644 <<EOF && changed=0
# Written by scripts/testcluster.sh: single-node SLURM on 127.0.0.1 for clustrix's tests.
ClusterName=clustrix
SlurmctldHost=$HOST(127.0.0.1)
SlurmctldPort=6817
SlurmdPort=6818
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=$SLURM_DIR/state
SlurmdSpoolDir=$SLURM_DIR/spool
SlurmctldPidFile=$RUN/slurmctld.pid
SlurmdPidFile=$RUN/slurmd.pid
SlurmctldLogFile=$LOG/slurmctld.log
SlurmdLogFile=$LOG/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
MpiDefault=none
SwitchType=switch/none
MailProg=/bin/true
ReturnToService=2
SchedulerType=sched/backfill
SchedulerParameters=batch_sched_delay=0
Epilog=$SLURM_DIR/epilog.sh
MinJobAge=600
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
AccountingStoragePort=6819
JobCompType=jobcomp/none
NodeName=$HOST NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=debug Nodes=$HOST Default=YES MaxTime=INFINITE State=UP OverSubscribe=FORCE:8
EOF
  write_if_changed "$SLURM_DIR/slurmdbd.conf" 600 <<EOF && changed=0
# Written by scripts/testcluster.sh
AuthType=auth/munge
DbdAddr=127.0.0.1
DbdHost=$HOST
DbdPort=6819
SlurmUser=root
LogFile=$LOG/slurmdbd.log
PidFile=$RUN/slurmdbd.pid
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=slurm
StoragePass=$(cat "$SLURM_DIR/dbpass")
StorageLoc=slurm_acct_db
EOF
  # Plain `sbatch` (no SLURM_CONF) should find it too, unless the machine has its own config.
  mkdir -p /etc/slurm
  if [[ ! -e /etc/slurm/slurm.conf || -L /etc/slurm/slurm.conf ]]; then
    ln -sfn "$SLURM_CONF_FILE" /etc/slurm/slurm.conf
  fi
  return $changed
}

slurm_daemons_alive() {
  pid_alive "$RUN/slurmdbd.pid" slurmdbd && pid_alive "$RUN/slurmctld.pid" slurmctld && pid_alive "$RUN/slurmd.pid" slurmd
}
slurm_up() { munge_ok && slurm_daemons_alive; }

node_idle() { sinfo -h -n "$HOST" -o '%t' | grep -Eq '^(idle|mix|alloc)'; }

up_slurm() {
  local conf_changed=0
  write_slurm_conf && conf_changed=1
  if (( conf_changed )) && slurm_daemons_alive; then
    say "slurm configuration changed: restarting the slurm daemons"
    stop_slurm_daemons
  fi
  if slurm_up; then say "slurm: already up"; return 0; fi
  start_munge
  start_mariadb
  if ! pid_alive "$RUN/slurmdbd.pid" slurmdbd; then
    setup_slurm_db
    say "starting slurmdbd"
    /usr/sbin/slurmdbd </dev/null >>"$LOG/slurmdbd.start.log" 2>&1 ||
      fail "slurmdbd did not start" "$LOG/slurmdbd.start.log" "$LOG/slurmdbd.log"
    wait_for 20 "slurmdbd" "$LOG/slurmdbd.log" -- sacctmgr -n show cluster
  fi
  if ! sacctmgr -n -P show cluster format=cluster 2>/dev/null | grep -qx clustrix; then
    sacctmgr -i add cluster clustrix >>"$LOG/sacctmgr.log" 2>&1 ||
      fail "sacctmgr add cluster failed" "$LOG/sacctmgr.log" "$LOG/slurmdbd.log"
  fi
  if ! pid_alive "$RUN/slurmctld.pid" slurmctld; then
    say "starting slurmctld"
    /usr/sbin/slurmctld </dev/null >>"$LOG/slurmctld.start.log" 2>&1 ||
      fail "slurmctld did not start" "$LOG/slurmctld.start.log" "$LOG/slurmctld.log"
  fi
  if ! pid_alive "$RUN/slurmd.pid" slurmd; then
    say "starting slurmd"
    /usr/sbin/slurmd </dev/null >>"$LOG/slurmd.start.log" 2>&1 ||
      fail "slurmd did not start" "$LOG/slurmd.start.log" "$LOG/slurmd.log"
  fi
  wait_for 30 "slurmctld to answer" "$LOG/slurmctld.log" -- scontrol ping
  wait_for 30 "node $HOST to be idle" "$LOG/slurmctld.log $LOG/slurmd.log" -- node_idle
  say "slurm warm-up job"
  timeout 60 srun -Q true </dev/null || fail "warm-up srun failed" "$LOG/slurmctld.log" "$LOG/slurmd.log"
  say "slurm: up"
}

stop_slurm_daemons() {
  stop_pidfile slurmd "$RUN/slurmd.pid"
  stop_pidfile slurmctld "$RUN/slurmctld.pid"
  stop_pidfile slurmdbd "$RUN/slurmdbd.pid"
}

down_slurm() {
  stop_slurm_daemons
  stop_pidfile mariadbd "$RUN/mariadb.pid"
  stop_pidfile munged "$RUN/munged.pid"
}

# ---------------------------------------------------------------------------------------------
# SSH server and test user
# ---------------------------------------------------------------------------------------------
TEST_ENV_BEGIN='# >>> clustrix testcluster >>>'
TEST_ENV_END='# <<< clustrix testcluster <<<'

ensure_test_user() {
  if ! id "$TEST_USER" >/dev/null 2>&1; then
    say "creating user $TEST_USER"
    useradd -m -d "$TEST_HOME" -s /bin/bash "$TEST_USER"
  fi
  # useradd leaves the password locked ("!"), which sshd with UsePAM=no treats as "account
  # locked" even for key logins; "*" means: no password, but not locked.
  [[ $(getent shadow "$TEST_USER" | cut -d: -f2) == '*' ]] || usermod -p '*' "$TEST_USER"
  mkdir -p "$TEST_HOME/.ssh"
  install -m 600 -o "$TEST_USER" -g "$TEST_USER" "$SSH_DIR/id_ed25519.pub" "$TEST_HOME/.ssh/authorized_keys"
  chmod 700 "$TEST_HOME/.ssh"
  chown "$TEST_USER:$TEST_USER" "$TEST_HOME" "$TEST_HOME/.ssh"
  # The scheduler settings, at the top of .bashrc (before Debian's "not interactive: return").
  # sshd's SetEnv also passes them; this covers `su - clustrix` and interactive logins.
  local rc=$TEST_HOME/.bashrc block tmp
  [[ -f $rc ]] || cp /etc/skel/.bashrc "$rc" 2>/dev/null || touch "$rc"
  block="$TEST_ENV_BEGIN
export SLURM_CONF=$SLURM_CONF_FILE
export SGE_ROOT=$SGE_ROOT_DIR
export SGE_CELL=$SGE_CELL_NAME
$TEST_ENV_END"
  if ! grep -qF "$block" "$rc"; then
    tmp=$(mktemp)
    { printf '%s\n' "$block"; sed "/^$TEST_ENV_BEGIN\$/,/^$TEST_ENV_END\$/d" "$rc"; } >"$tmp"
    install -m 644 -o "$TEST_USER" -g "$TEST_USER" "$tmp" "$rc"
    rm -f "$tmp"
  fi
}

ssh_login() {
  ssh -i "$SSH_DIR/id_ed25519" -p "$SSH_PORT" -o BatchMode=yes -o ConnectTimeout=3 \
    -o StrictHostKeyChecking=yes -o UserKnownHostsFile="$SSH_DIR/known_hosts" \
    "$TEST_USER@127.0.0.1" "$@" </dev/null
}

ssh_up() { pid_alive "$RUN/sshd.pid" sshd; }

up_ssh() {
  mkdir -p "$SSH_DIR"
  chmod 755 "$SSH_DIR"
  [[ -s $SSH_DIR/ssh_host_ed25519_key ]] ||
    ssh-keygen -q -t ed25519 -N '' -C "clustrix-testcluster-host" -f "$SSH_DIR/ssh_host_ed25519_key"
  [[ -s $SSH_DIR/id_ed25519 ]] ||
    ssh-keygen -q -t ed25519 -N '' -C "clustrix-testcluster" -f "$SSH_DIR/id_ed25519"
  chmod 600 "$SSH_DIR/ssh_host_ed25519_key" "$SSH_DIR/id_ed25519"
  chmod 644 "$SSH_DIR/id_ed25519.pub" "$SSH_DIR/ssh_host_ed25519_key.pub"
  local hostkey
  hostkey=$(cut -d' ' -f1,2 "$SSH_DIR/ssh_host_ed25519_key.pub")
  printf '[127.0.0.1]:%s %s\n[localhost]:%s %s\n' "$SSH_PORT" "$hostkey" "$SSH_PORT" "$hostkey" |
    write_if_changed "$SSH_DIR/known_hosts" 644 || true
  ensure_test_user
  local conf_changed=0
  write_if_changed "$SSH_DIR/sshd_config" 644 <<EOF && conf_changed=1
# Written by scripts/testcluster.sh: a private sshd for clustrix's tests (not the system one).
Port $SSH_PORT
ListenAddress 127.0.0.1
HostKey $SSH_DIR/ssh_host_ed25519_key
PidFile $RUN/sshd.pid
UsePAM no
PermitRootLogin no
AllowUsers $TEST_USER
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
AuthorizedKeysFile .ssh/authorized_keys
StrictModes yes
MaxStartups 100
MaxSessions 100
ClientAliveInterval 30
X11Forwarding no
PrintMotd no
Subsystem sftp internal-sftp
SetEnv SLURM_CONF=$SLURM_CONF_FILE SGE_ROOT=$SGE_ROOT_DIR SGE_CELL=$SGE_CELL_NAME
LogLevel INFO
EOF
  if (( conf_changed )) && ssh_up; then
    say "sshd configuration changed: restarting sshd"
    stop_pidfile sshd "$RUN/sshd.pid"
  fi
  if ! ssh_up; then
    mkdir -p /run/sshd && chmod 755 /run/sshd
    /usr/sbin/sshd -t -f "$SSH_DIR/sshd_config" >"$LOG/sshd.start.log" 2>&1 ||
      fail "sshd rejected its configuration" "$LOG/sshd.start.log"
    say "starting sshd on 127.0.0.1:$SSH_PORT"
    /usr/sbin/sshd -f "$SSH_DIR/sshd_config" -E "$LOG/sshd.log" </dev/null >>"$LOG/sshd.start.log" 2>&1 ||
      fail "sshd did not start" "$LOG/sshd.start.log" "$LOG/sshd.log"
    wait_for 15 "ssh login as $TEST_USER" "$LOG/sshd.log" -- ssh_login true
  else
    say "ssh: already up"
  fi
}

down_ssh() { stop_pidfile sshd "$RUN/sshd.pid"; }

# ---------------------------------------------------------------------------------------------
# Sun Grid Engine
# ---------------------------------------------------------------------------------------------
SGE_COMMON=$SGE_ROOT_DIR/$SGE_CELL_NAME/common
QMASTER_PID=/var/spool/gridengine/qmaster/qmaster.pid   # sge_qmaster ignores SGE_MASTER_PIDFILE
EXECD_PID=/run/gridengine/execd.pid

sge_up() { pid_alive "$QMASTER_PID" sge_qmaster && pid_alive "$EXECD_PID" sge_execd; }
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

up_sge() {
  if sge_up && [[ $(cat "$SGE_DIR/configured" 2>/dev/null) == "$HOST" ]] && sge_queue_ready; then
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

# SGE stops in two halves: qmaster needs ~8 s to shut down, so the rest is stopped meanwhile.
down_sge_begin() {
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

down_sge_wait() {
  [[ -e $RUN/sge.started ]] || return 0
  local i
  for ((i = 0; i < 200; i++)); do pid_alive "$QMASTER_PID" sge_qmaster || break; sleep 0.1; done
  if pid_alive "$QMASTER_PID" sge_qmaster; then stop_pidfile sge_qmaster "$QMASTER_PID"; fi
  rm -f "$EXECD_PID" "$QMASTER_PID" "$RUN/sge.started"
}

# ---------------------------------------------------------------------------------------------
# PBS/Torque-style commands (slurm-wlm-torque, unpacked: it conflicts with gridengine-client)
# ---------------------------------------------------------------------------------------------
# Bare qstat exits 153 when SLURM holds no jobs at all; -Q (the queues) answers regardless.
pbs_up() { [[ -x $PBS_BIN/qsub ]] && slurm_up && "$PBS_BIN/qstat" -Q >/dev/null 2>&1; }

up_pbs() {
  if [[ ! -x $PBS_BIN/qsub ]]; then
    mkdir -p "$PBS_DIR"
    local deb
    deb=$(ls "$PBS_DIR"/slurm-wlm-torque_*.deb 2>/dev/null | head -n1 || true)
    if [[ -z $deb ]]; then
      say "downloading slurm-wlm-torque"
      # apt-get download runs as _apt: give it a folder it may write to.
      local tmp
      tmp=$(mktemp -d); chmod 777 "$tmp"
      if ! (cd "$tmp" && apt-get download -q slurm-wlm-torque >"$LOG/pbs-download.log" 2>&1); then
        apt_update_once
        (cd "$tmp" && apt-get download -q slurm-wlm-torque >"$LOG/pbs-download.log" 2>&1) ||
          fail "apt-get download slurm-wlm-torque failed" "$LOG/pbs-download.log"
      fi
      mv "$tmp"/slurm-wlm-torque_*.deb "$PBS_DIR/"
      rm -rf "$tmp"
      deb=$(ls "$PBS_DIR"/slurm-wlm-torque_*.deb | head -n1)
    fi
    dpkg-deb -x "$deb" "$PBS_DIR"
  fi
  # qsub runs "${FindBin::Bin}/sbatch" (and salloc, srun): put the SLURM commands beside it.
  local c
  for c in sbatch salloc srun; do ln -sfn "/usr/bin/$c" "$PBS_BIN/$c"; done
  chmod -R a+rX "$PBS_DIR"
  perl -e 'use Slurm; use Switch;' 2>"$LOG/pbs-perl.log" ||
    fail "the perl modules the PBS wrappers need do not load" "$LOG/pbs-perl.log"
  slurm_up || fail "pbs needs slurm, which is down"
  wait_for 10 "PBS qstat wrapper" "$LOG/slurmctld.log" -- "$PBS_BIN/qstat" -Q
  say "pbs: up ($PBS_BIN)"
}

# ---------------------------------------------------------------------------------------------
# env file, status
# ---------------------------------------------------------------------------------------------
write_env() {
  {
    echo "# Written by scripts/testcluster.sh: source it to reach the local test cluster."
    echo "export CLUSTRIX_TESTCLUSTER_DIR=$STATE"
    if ssh_up; then
      echo "export CLUSTRIX_TEST_SSH_HOST=127.0.0.1"
      echo "export CLUSTRIX_TEST_SSH_PORT=$SSH_PORT"
      echo "export CLUSTRIX_TEST_SSH_USER=$TEST_USER"
      echo "export CLUSTRIX_TEST_SSH_KEY=$SSH_DIR/id_ed25519"
      echo "export CLUSTRIX_TEST_KNOWN_HOSTS=$SSH_DIR/known_hosts"
    fi
    if slurm_up; then
      echo "export CLUSTRIX_TEST_SLURM=1"
      echo "export SLURM_CONF=$SLURM_CONF_FILE"
    fi
    if sge_up; then
      echo "export CLUSTRIX_TEST_SGE=1"
      echo "export SGE_ROOT=$SGE_ROOT_DIR"
      echo "export SGE_CELL=$SGE_CELL_NAME"
    fi
    if pbs_up; then
      echo "export CLUSTRIX_TEST_PBS_BIN=$PBS_BIN"
    fi
  } | write_if_changed "$ENV_FILE" 644 || true
}

component_up() {
  case $1 in
    slurm) slurm_up ;;
    ssh) ssh_up ;;
    sge) sge_up ;;
    pbs) pbs_up ;;
  esac
}

check_components() {
  local c
  for c in "$@"; do
    case $c in slurm | ssh | sge | pbs) ;; *) fail "unknown component '$c' (use: ${ALL_COMPONENTS[*]})" ;; esac
  done
}

cmd_status() {
  local comps=("$@") c rc=0
  ((${#comps[@]})) || comps=("${ALL_COMPONENTS[@]}")
  check_components "${comps[@]}"
  for c in "${comps[@]}"; do
    if component_up "$c"; then printf '%-6s up\n' "$c"; else printf '%-6s down\n' "$c"; rc=1; fi
  done
  return $rc
}

cmd_up() {
  local comps=("$@") c
  ((${#comps[@]})) || comps=("${ALL_COMPONENTS[@]}")
  check_components "${comps[@]}"
  # pbs runs on slurm
  if [[ " ${comps[*]} " == *" pbs "* && " ${comps[*]} " != *" slurm "* ]]; then comps=(slurm "${comps[@]}"); fi
  has() { [[ " ${comps[*]} " == *" $1 "* ]]; }
  need_root
  mkdir -p "$STATE" "$RUN" "$LOG"
  chmod 755 "$STATE" "$LOG"
  chmod 755 "$RUN"
  ensure_hostname_resolves
  if has sge; then
    pkg_installed gridengine-master || preseed_gridengine
  fi
  # shellcheck disable=SC2046
  ensure_packages $(packages_for "${comps[@]}")
  # order: ssh first (cheap), then the schedulers
  has ssh && up_ssh
  has slurm && up_slurm
  has sge && up_sge
  has pbs && up_pbs
  write_env
  say "ready; settings (also in $ENV_FILE):"
  cat "$ENV_FILE"
  local rc=0
  for c in "${comps[@]}"; do component_up "$c" || { warn "$c is not up"; rc=1; }; done
  return $rc
}

cmd_down() {
  need_root
  [[ -d $STATE ]] || { say "nothing to stop ($STATE does not exist)"; return 0; }
  down_sge_begin
  down_ssh
  down_slurm
  down_sge_wait
  [[ -f $ENV_FILE ]] && write_env
  say "down"
}

cmd_env() {
  [[ -f $ENV_FILE ]] || fail "$ENV_FILE does not exist: run '$0 up' first"
  cat "$ENV_FILE"
}

usage() {
  sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//'
}

main() {
  local sub=${1:-}
  [[ $# -gt 0 ]] && shift
  case $sub in
    up) cmd_up "$@" ;;
    down) cmd_down ;;
    status) cmd_status "$@" ;;
    env) cmd_env ;;
    -h | --help | help) usage ;;
    *) usage >&2; exit 2 ;;
  esac
}

main "$@"
