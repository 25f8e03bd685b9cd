# shellcheck shell=bash
# Shared by scripts/testcluster.sh and its components (sourced first; not a component).
#
# Paths:    STATE (the state folder), RUN (pid files), LOG, ENV_FILE, HOST (short host name)
# Output:   say, warn, fail MESSAGE [LOGFILE...]
# Waiting:  wait_for SECONDS DESCRIPTION LOGS -- COMMAND...
# Daemons:  proc_running PID, pid_alive PIDFILE [NAME], stop_pidfile NAME PIDFILE
# Packages: apt_update_once, pkg_installed PKG, ensure_packages PKG...
# Files:    write_if_changed FILE MODE (content from stdin)
# Machine:  need_root, ensure_hostname_resolves

STATE=${CLUSTRIX_TESTCLUSTER_DIR:-/var/tmp/clustrix-testcluster}
HOST=$(hostname -s)
LOG=$STATE/log
# shellcheck disable=SC2034  # used by the front and the components
RUN=$STATE/run ENV_FILE=$STATE/env

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

# ---------------------------------------------------------------------------------------------
# Files and the machine
# ---------------------------------------------------------------------------------------------
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

# Make sure the short host name resolves (SLURM and SGE need it).
ensure_hostname_resolves() {
  getent hosts "$HOST" >/dev/null 2>&1 || echo "127.0.0.1 $HOST" >>/etc/hosts
}
