# shellcheck shell=bash
# Component "slurm": single-node SLURM 22.05 on 127.0.0.1 with accounting (sacct works):
# munge, mariadb, slurmdbd, slurmctld and slurmd (one node named after this host).
#
# Interface (see scripts/testcluster.sh): slurm_packages, slurm_up, slurm_down, slurm_running,
# slurm_env, slurm_login_env.
# For other components: SLURM_CONF_FILE (also exported as SLURM_CONF), slurm_running.
# Files: $STATE/slurm (slurm.conf, slurmdbd.conf, epilog.sh, state, spool), /etc/slurm/slurm.conf
# (a link to ours unless the machine has its own), pid files in $RUN, logs in $LOG.

component slurm 10 20   # listed first; started after ssh

SLURM_DIR=$STATE/slurm
SLURM_CONF_FILE=$SLURM_DIR/slurm.conf
export SLURM_CONF=$SLURM_CONF_FILE

slurm_packages() { echo munge slurmctld slurmd slurm-client slurmdbd mariadb-server; }

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
slurm_running() { munge_ok && slurm_daemons_alive; }

node_idle() { sinfo -h -n "$HOST" -o '%t' | grep -Eq '^(idle|mix|alloc)'; }

slurm_up() {
  local conf_changed=0
  write_slurm_conf && conf_changed=1
  if (( conf_changed )) && slurm_daemons_alive; then
    say "slurm configuration changed: restarting the slurm daemons"
    stop_slurm_daemons
  fi
  if slurm_running; then say "slurm: already up"; return 0; fi
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

slurm_down() {
  stop_slurm_daemons
  stop_pidfile mariadbd "$RUN/mariadb.pid"
  stop_pidfile munged "$RUN/munged.pid"
}

slurm_env() {
  echo "export CLUSTRIX_TEST_SLURM=1"
  echo "export SLURM_CONF=$SLURM_CONF_FILE"
}

slurm_login_env() { echo "SLURM_CONF=$SLURM_CONF_FILE"; }
