#!/usr/bin/env bash
# Local test cluster for clustrix: real schedulers on 127.0.0.1 of this machine.
#
#   scripts/testcluster.sh up [slurm|ssh|sge|pbs ...]   install what is missing, start (default: all)
#   scripts/testcluster.sh down                         stop what this script started
#   scripts/testcluster.sh status [COMPONENT...]        print up/down; non-zero if one is down
#   scripts/testcluster.sh env                          print the sourceable settings file
#
# Components:
#   one file each, scripts/testcluster/NAME.sh, whose header says what it provides; this script
#   finds them there (`status` lists them), so adding a component is adding a file. The helpers
#   they share are in scripts/testcluster/common.sh.
#
# Everything lives in ${CLUSTRIX_TESTCLUSTER_DIR:-/var/tmp/clustrix-testcluster} (the "state
# folder"): configs, logs, pid files, keys, and "env" (source it to get the connection settings).
# Needs root and a Debian 12 machine (apt-get works); daemons are started by hand because
# these machines have no systemd and a policy-rc.d that forbids starting services.
#
# A component file calls `component NAME LIST_RANK START_RANK [NEEDED...]` and defines
#   NAME_packages    print the Debian packages it needs (one apt-get installs all components')
#   NAME_up          start it; idempotent: what runs stays up unless its configuration changed
#   NAME_down        stop what NAME_up started
#   NAME_running     succeed if it is up (`status`; whether its settings go into the env file)
#   NAME_env         print its `export VAR=value` lines for the env file
# and may define
#   NAME_preinstall  run before the packages are installed (debconf answers)
#   NAME_down_begin  begin a slow stop: `down` calls every NAME_down_begin, then every NAME_down
#   NAME_login_env   print VAR=value lines the test user's logins need (ssh passes them on)
#   NAME_ssh_ports   print the ports of its own sshds, which serve ssh's host key (ssh lists
#                    them in the known_hosts file it writes)
# LIST_RANK orders `status` and the default of `up`; START_RANK orders starting, stopping and
# the env file. `up NAME` also brings up the components NAME needs.
set -euo pipefail

PARTS=$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/testcluster
# shellcheck source-path=SCRIPTDIR source=testcluster/common.sh
source "$PARTS/common.sh"

RANKS=()           # "LIST_RANK START_RANK NAME", one per component
declare -A NEEDS=()
# component NAME LIST_RANK START_RANK [NEEDED...]: called by each component file.
component() {
  RANKS+=("$2 $3 $1")
  NEEDS[$1]="${*:4}"
}

for part in "$PARTS"/*.sh; do
  [[ $part == */common.sh ]] && continue
  # shellcheck source=/dev/null
  source "$part"
  name=$(basename "$part" .sh)
  [[ -n ${NEEDS[$name]+set} ]] || fail "$part does not call: component $name LIST_RANK START_RANK"
  for fn in packages up down running env; do
    declare -F "${name}_$fn" >/dev/null || fail "$part does not define ${name}_$fn"
  done
done
unset part name fn
mapfile -t ALL_COMPONENTS < <(printf '%s\n' "${RANKS[@]}" | sort -k1,1n -k3,3 | cut -d' ' -f3)
mapfile -t START_ORDER < <(printf '%s\n' "${RANKS[@]}" | sort -k2,2n -k3,3 | cut -d' ' -f3)

# in_list WORD LIST...
in_list() {
  local w=$1 x
  shift
  for x in "$@"; do [[ $x == "$w" ]] && return 0; done
  return 1
}

# optional FUNCTION ARGS...: call it if some component defines it.
optional() { if declare -F "$1" >/dev/null; then "$@"; fi; }

# with_needs COMPONENT...: print them, preceded by the components they need that are not listed.
with_needs() {
  local comps=("$@") c n needs changed=1
  while (( changed )); do
    changed=0
    for c in "${comps[@]}"; do
      read -ra needs <<<"${NEEDS[$c]}"
      for n in "${needs[@]}"; do
        in_list "$n" "${comps[@]}" || { comps=("$n" "${comps[@]}"); changed=1; }
      done
    done
  done
  printf '%s\n' "${comps[@]}"
}

packages_for() {
  local c
  for c in "$@"; do "${c}_packages"; done
}

# login_env: the VAR=value lines of every component's NAME_login_env (for the test user's logins).
login_env() {
  local c
  for c in "${ALL_COMPONENTS[@]}"; do optional "${c}_login_env"; done
}

# extra_ssh_ports: the ports of every component's NAME_ssh_ports (further sshds with ssh's host key).
extra_ssh_ports() {
  local c
  for c in "${ALL_COMPONENTS[@]}"; do optional "${c}_ssh_ports"; done
}

# ---------------------------------------------------------------------------------------------
# env file and commands
# ---------------------------------------------------------------------------------------------
write_env() {
  {
    echo "# Written by scripts/testcluster.sh: source it to reach the local test cluster."
    echo "export CLUSTRIX_TESTCLUSTER_DIR=$STATE"
    local c
    for c in "${START_ORDER[@]}"; do
      if "${c}_running"; then "${c}_env"; fi
    done
  } | write_if_changed "$ENV_FILE" 644 || true
}

check_components() {
  local c
  for c in "$@"; do
    in_list "$c" "${ALL_COMPONENTS[@]}" || fail "unknown component '$c' (use: ${ALL_COMPONENTS[*]})"
  done
}

cmd_status() {
  local comps=("$@") c rc=0
  ((${#comps[@]})) || comps=("${ALL_COMPONENTS[@]}")
  check_components "${comps[@]}"
  for c in "${comps[@]}"; do
    if "${c}_running"; then printf '%-6s up\n' "$c"; else printf '%-6s down\n' "$c"; rc=1; fi
  done
  return $rc
}

cmd_up() {
  local comps=("$@") c
  ((${#comps[@]})) || comps=("${ALL_COMPONENTS[@]}")
  check_components "${comps[@]}"
  mapfile -t comps < <(with_needs "${comps[@]}")   # e.g. pbs runs on slurm
  need_root
  mkdir -p "$STATE" "$RUN" "$LOG"
  chmod 755 "$STATE" "$LOG"
  chmod 755 "$RUN"
  ensure_hostname_resolves
  for c in "${comps[@]}"; do optional "${c}_preinstall"; done
  # shellcheck disable=SC2046
  ensure_packages $(packages_for "${comps[@]}")
  # in START_RANK order: ssh first (cheap), then the schedulers
  for c in "${START_ORDER[@]}"; do
    if in_list "$c" "${comps[@]}"; then "${c}_up"; fi
  done
  write_env
  say "ready; settings (also in $ENV_FILE):"
  cat "$ENV_FILE"
  local rc=0
  for c in "${comps[@]}"; do "${c}_running" || { warn "$c is not up"; rc=1; }; done
  return $rc
}

cmd_down() {
  need_root
  [[ -d $STATE ]] || { say "nothing to stop ($STATE does not exist)"; return 0; }
  local c
  # slow stops (SGE's qmaster) begin first and finish in their NAME_down, while others stop
  for c in "${START_ORDER[@]}"; do optional "${c}_down_begin"; done
  for c in "${START_ORDER[@]}"; do "${c}_down"; done
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
