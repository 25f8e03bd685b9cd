# shellcheck shell=bash
# Component "mfa": a second OpenSSH server for the test user on 127.0.0.1:$MFA_PORT (same host
# key as the "ssh" component) whose logins need the user's key AND a one-time code, asked by
# keyboard-interactive through PAM (pam_oath, time-based codes): a site's multi-factor login.
#
# Interface (see scripts/testcluster.sh): mfa_packages, mfa_up, mfa_down, mfa_running, mfa_env,
# mfa_ssh_ports.
# Codes: `oathtool --totp -s ${MFA_TOTP_STEP}s "$(cat "$CLUSTRIX_TEST_OATH_SECRET_FILE")"`. pam_oath
# refuses a code that is not newer than the last one it accepted (its users file,
# $CLUSTRIX_TEST_OATH_USERS_FILE, records it) and accepts codes up to $MFA_TOTP_WINDOW steps
# ahead: a second login within one step uses the next step's code.
# Files: $STATE/mfa (sshd_config, the secret and pam_oath's users file, root's only),
# /etc/pam.d/$MFA_SERVICE, pid file in $RUN, logs in $LOG.

component mfa 25 15 ssh   # after ssh: it uses ssh's host key and test user

MFA_PORT=${CLUSTRIX_TESTCLUSTER_MFA_PORT:-2223}
MFA_DIR=$STATE/mfa
# An authenticator app's 30 s steps (pam_oath knows 30 and 60 only) and a wide window: tests
# log in many times in a row, each with the code of a step of its own, and stay within it.
MFA_TOTP_STEP=30
MFA_TOTP_WINDOW=60
# OpenSSH 9.2 has no PAMServiceName: its PAM service is the name it was started as, so this
# sshd runs through a link of that name (which is its process name too: at most 15 characters).
MFA_SERVICE=clustrix-mfa
MFA_SSHD=$MFA_DIR/$MFA_SERVICE

mfa_packages() { echo openssh-server libpam-oath oathtool; }

mfa_running() { pid_alive "$RUN/sshd-mfa.pid" "$MFA_SERVICE"; }

# The port this component's sshd serves the ssh component's host key on (for its known_hosts).
mfa_ssh_ports() { echo "$MFA_PORT"; }

mfa_write_secret() {
  (umask 077; mkdir -p "$MFA_DIR")
  chmod 700 "$MFA_DIR"
  if [[ ! -s $MFA_DIR/secret ]]; then
    say "mfa: generating the test user's one-time-code secret"
    (umask 077; head -c 20 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$MFA_DIR/secret")
  fi
  chmod 600 "$MFA_DIR/secret"
  # pam_oath rewrites its users file after each login (last code, time): write it only when
  # this line (secret and step) is not in it yet, and keep what it recorded.
  local line
  line=$(printf 'HOTP/T%s/6\t%s\t-\t%s' "$MFA_TOTP_STEP" "$TEST_USER" "$(cat "$MFA_DIR/secret")")
  grep -qF "$line" "$MFA_DIR/users.oath" 2>/dev/null ||
    printf '%s\n' "$line" | write_if_changed "$MFA_DIR/users.oath" 600 || true
  chown root:root "$MFA_DIR/secret" "$MFA_DIR/users.oath"
}

mfa_write_pam() {
  # Only the code is asked here: the key was checked by sshd before (AuthenticationMethods).
  write_if_changed "/etc/pam.d/$MFA_SERVICE" 644 <<EOF || true
# Written by scripts/testcluster.sh for the test cluster's multi-factor sshd ($MFA_SERVICE).
auth     required  pam_oath.so usersfile=$MFA_DIR/users.oath window=$MFA_TOTP_WINDOW digits=6
account  required  pam_nologin.so
@include common-account
session  required  pam_limits.so
@include common-session-noninteractive
EOF
}

mfa_up() {
  [[ -s $SSH_DIR/ssh_host_ed25519_key ]] || fail "mfa needs the ssh component's host key: up ssh first"
  mfa_write_secret
  mfa_write_pam
  ln -sfn /usr/sbin/sshd "$MFA_SSHD"
  local conf_changed=0 login_vars
  login_vars=$(login_env | paste -sd ' ')
  write_if_changed "$MFA_DIR/sshd_config" 644 <<EOF && conf_changed=1
# Written by scripts/testcluster.sh: the test cluster's sshd with multi-factor logins.
Port $MFA_PORT
ListenAddress 127.0.0.1
HostKey $SSH_DIR/ssh_host_ed25519_key
PidFile $RUN/sshd-mfa.pid
UsePAM yes
AuthenticationMethods publickey,keyboard-interactive
PubkeyAuthentication yes
KbdInteractiveAuthentication yes
PasswordAuthentication no
PermitRootLogin no
AllowUsers $TEST_USER
AuthorizedKeysFile .ssh/authorized_keys
StrictModes yes
MaxStartups 100
MaxSessions 100
ClientAliveInterval 30
X11Forwarding no
PrintMotd no
Subsystem sftp internal-sftp
${login_vars:+SetEnv $login_vars}
LogLevel INFO
EOF
  if (( conf_changed )) && mfa_running; then
    say "mfa: sshd configuration changed: restarting it"
    stop_pidfile "$MFA_SERVICE" "$RUN/sshd-mfa.pid"
  fi
  if mfa_running; then say "mfa: already up"; return 0; fi
  mkdir -p /run/sshd && chmod 755 /run/sshd
  "$MFA_SSHD" -t -f "$MFA_DIR/sshd_config" >"$LOG/sshd-mfa.start.log" 2>&1 ||
    fail "the mfa sshd rejected its configuration" "$LOG/sshd-mfa.start.log"
  say "starting the mfa sshd on 127.0.0.1:$MFA_PORT"
  "$MFA_SSHD" -f "$MFA_DIR/sshd_config" -E "$LOG/sshd-mfa.log" </dev/null >>"$LOG/sshd-mfa.start.log" 2>&1 ||
    fail "the mfa sshd did not start" "$LOG/sshd-mfa.start.log" "$LOG/sshd-mfa.log"
  # A login would use up a code; that the port answers with its banner is enough here.
  wait_for 15 "the mfa sshd on port $MFA_PORT" "$LOG/sshd-mfa.log" -- mfa_banner
  mfa_running || fail "the mfa sshd is not running" "$LOG/sshd-mfa.start.log" "$LOG/sshd-mfa.log"
}

mfa_banner() {
  local banner
  exec 3<>"/dev/tcp/127.0.0.1/$MFA_PORT" || return 1
  read -r -t 3 banner <&3 || true
  exec 3<&- 3>&-
  [[ $banner == SSH-2.0-* ]]
}

mfa_down() { stop_pidfile "$MFA_SERVICE" "$RUN/sshd-mfa.pid"; }

mfa_env() {
  echo "export CLUSTRIX_TEST_MFA_PORT=$MFA_PORT"
  echo "export CLUSTRIX_TEST_OATH_SECRET_FILE=$MFA_DIR/secret"
  echo "export CLUSTRIX_TEST_OATH_USERS_FILE=$MFA_DIR/users.oath"
  echo "export CLUSTRIX_TEST_OATH_TOTP_STEP=$MFA_TOTP_STEP"
  echo "export CLUSTRIX_TEST_OATH_WINDOW=$MFA_TOTP_WINDOW"
}
