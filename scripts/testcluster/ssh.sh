# shellcheck shell=bash
# Component "ssh": an OpenSSH server of our own on 127.0.0.1:$SSH_PORT (own config and host key,
# not the system one) and the test user "clustrix", who logs in with a generated ed25519 key and
# can submit to the schedulers from there (the realistic path: a laptop reaches a login node).
#
# Interface (see scripts/testcluster.sh): ssh_packages, ssh_up, ssh_down, ssh_running, ssh_env.
# For other components: TEST_USER and TEST_HOME (the test user), SSH_PORT, SSH_DIR, ssh_login.
# The user's logins get every component's NAME_login_env (sshd's SetEnv and ~/.bashrc).
# known_hosts lists this sshd's key for its port and every component's NAME_ssh_ports.
# Files: $STATE/ssh (keys, known_hosts, sshd_config), /home/clustrix, pid file in $RUN, logs in $LOG.

component ssh 20 10   # started first: it is cheap

SSH_PORT=${CLUSTRIX_TESTCLUSTER_SSH_PORT:-2222}
TEST_USER=clustrix
TEST_HOME=/home/$TEST_USER
SSH_DIR=$STATE/ssh

ssh_packages() { echo openssh-server openssh-client python3 python3-venv; }

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
$(login_env | sed 's/^/export /')
$TEST_ENV_END"
  # (grep -F would take each line of the block as a pattern of its own: compare the block)
  if [[ $(sed -n "/^$TEST_ENV_BEGIN\$/,/^$TEST_ENV_END\$/p" "$rc") != "$block" ]]; then
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

ssh_running() { pid_alive "$RUN/sshd.pid" sshd; }

ssh_up() {
  mkdir -p "$SSH_DIR"
  chmod 755 "$SSH_DIR"
  [[ -s $SSH_DIR/ssh_host_ed25519_key ]] ||
    ssh-keygen -q -t ed25519 -N '' -C "clustrix-testcluster-host" -f "$SSH_DIR/ssh_host_ed25519_key"
  [[ -s $SSH_DIR/id_ed25519 ]] ||
    ssh-keygen -q -t ed25519 -N '' -C "clustrix-testcluster" -f "$SSH_DIR/id_ed25519"
  chmod 600 "$SSH_DIR/ssh_host_ed25519_key" "$SSH_DIR/id_ed25519"
  chmod 644 "$SSH_DIR/id_ed25519.pub" "$SSH_DIR/ssh_host_ed25519_key.pub"
  local hostkey port
  hostkey=$(cut -d' ' -f1,2 "$SSH_DIR/ssh_host_ed25519_key.pub")
  # Other components' sshds (mfa) serve the same key on ports of their own.
  for port in "$SSH_PORT" $(extra_ssh_ports); do
    printf '[127.0.0.1]:%s %s\n[localhost]:%s %s\n' "$port" "$hostkey" "$port" "$hostkey"
  done | write_if_changed "$SSH_DIR/known_hosts" 644 || true
  ensure_test_user
  # sshd passes the schedulers' settings (every NAME_login_env) to each login.
  local conf_changed=0 login_vars
  login_vars=$(login_env | paste -sd ' ')
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
${login_vars:+SetEnv $login_vars}
LogLevel INFO
EOF
  if (( conf_changed )) && ssh_running; then
    say "sshd configuration changed: restarting sshd"
    stop_pidfile sshd "$RUN/sshd.pid"
  fi
  if ! ssh_running; then
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

ssh_down() { stop_pidfile sshd "$RUN/sshd.pid"; }

ssh_env() {
  echo "export CLUSTRIX_TEST_SSH_HOST=127.0.0.1"
  echo "export CLUSTRIX_TEST_SSH_PORT=$SSH_PORT"
  echo "export CLUSTRIX_TEST_SSH_USER=$TEST_USER"
  echo "export CLUSTRIX_TEST_SSH_KEY=$SSH_DIR/id_ed25519"
  echo "export CLUSTRIX_TEST_KNOWN_HOSTS=$SSH_DIR/known_hosts"
}
