# shellcheck shell=bash
# Component "lmod": environment modules (Debian's Lmod) for the test user, with one module of
# our own, clustrixdemo/1.0 (a Lua modulefile that puts a small program on PATH and sets
# CLUSTRIXDEMO_HOME), as a site's `module load` would.
#
# Interface (see scripts/testcluster.sh): lmod_packages, lmod_up, lmod_down, lmod_running,
# lmod_env, lmod_login_env.
# `module` works in every shell of the test user: ~/.bashrc loads Lmod's profile script when a
# shell does not have it yet (as RHEL's /etc/bashrc does for `ssh host command`), and Lmod
# exports BASH_ENV and the `module` function, so the jobs submitted from there (non-login bash,
# SLURM passes the environment on) have it too. LMOD_SITE_MODULEPATH (a login setting) adds
# our folder to MODULEPATH.
# Files: $STATE/modules (modulefiles), $STATE/software (what they load), a block in the test
# user's ~/.bashrc. There is no daemon: `down` leaves them.

component lmod 50 16 ssh   # after ssh: it writes to the test user's ~/.bashrc

LMOD_MODULES=$STATE/modules
LMOD_SOFTWARE=$STATE/software
LMOD_BEGIN='# >>> clustrix testcluster lmod >>>'
LMOD_END='# <<< clustrix testcluster lmod <<<'

lmod_packages() { echo lmod; }

lmod_login_env() { echo "LMOD_SITE_MODULEPATH=$LMOD_MODULES"; }

lmod_write_module() {
  local home=$LMOD_SOFTWARE/clustrixdemo/1.0
  mkdir -p "$home/bin" "$LMOD_MODULES/clustrixdemo"
  chmod 755 "$LMOD_SOFTWARE" "$LMOD_SOFTWARE/clustrixdemo" "$home" "$home/bin" \
    "$LMOD_MODULES" "$LMOD_MODULES/clustrixdemo"
  printf '#!/bin/sh\n# Written by scripts/testcluster.sh: the program of module clustrixdemo/1.0.\necho "clustrixdemo 1.0 $*"\n' |
    write_if_changed "$home/bin/clustrixdemo" 755 || true
  write_if_changed "$LMOD_MODULES/clustrixdemo/1.0.lua" 644 <<EOF || true
-- Written by scripts/testcluster.sh: a module for clustrix's tests.
whatis("clustrixdemo 1.0: a small program on PATH and CLUSTRIXDEMO_HOME")
local home = "$home"
setenv("CLUSTRIXDEMO_HOME", home)
prepend_path("PATH", pathJoin(home, "bin"))
EOF
}

# The ~/.bashrc block, placed after the ssh component's (whose settings it reads) and before
# Debian's "not interactive: return".
lmod_write_bashrc() {
  local rc=$TEST_HOME/.bashrc block tmp
  block="$LMOD_BEGIN
# Lmod in every shell, \`ssh host command\` included (BASH_ENV brings it to scripts).
if ! type module >/dev/null 2>&1 && [ -r /etc/profile.d/lmod.sh ]; then
  . /etc/profile.d/lmod.sh
fi
$LMOD_END"
  [[ -f $rc ]] || fail "$rc does not exist: up ssh first"
  if ! grep -qxF "$LMOD_END" "$rc" || [[ $(sed -n "/^$LMOD_BEGIN\$/,/^$LMOD_END\$/p" "$rc") != "$block" ]]; then
    tmp=$(mktemp)
    sed "/^$LMOD_BEGIN\$/,/^$LMOD_END\$/d" "$rc" >"$tmp.old"
    if grep -qxF "$TEST_ENV_END" "$tmp.old"; then
      awk -v block="$block" -v end="$TEST_ENV_END" '{ print } $0 == end { print block }' "$tmp.old" >"$tmp"
    else
      { printf '%s\n' "$block"; cat "$tmp.old"; } >"$tmp"
    fi
    rm -f "$tmp.old"
    install -m 644 -o "$TEST_USER" -g "$TEST_USER" "$tmp" "$rc"
    rm -f "$tmp"
  fi
}

lmod_running() {
  [[ -x /usr/share/lmod/lmod/libexec/lmod && -f $LMOD_MODULES/clustrixdemo/1.0.lua ]] &&
    grep -qxF "$LMOD_END" "$TEST_HOME/.bashrc" 2>/dev/null
}

lmod_up() {
  lmod_write_module
  lmod_write_bashrc
  # The ssh component's sshds pass LMOD_SITE_MODULEPATH on (lmod_login_env): they are up first.
  ssh_login 'module --terse avail clustrixdemo 2>&1' | grep -qx 'clustrixdemo/1.0' ||
    fail "module clustrixdemo/1.0 is not visible in the test user's logins"
  say "lmod: up (module clustrixdemo/1.0)"
}

lmod_down() { :; }   # nothing runs

lmod_env() { echo "export CLUSTRIX_TEST_MODULEPATH=$LMOD_MODULES"; }
