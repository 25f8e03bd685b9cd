# shellcheck shell=bash
# Component "pbs": Torque/PBS-style qsub, qstat, qdel, pbsnodes (slurm-wlm-torque) on top of
# SLURM. The package conflicts with gridengine-client in dpkg, so it is unpacked into a folder of
# its own, not installed; callers use the commands by full path ($CLUSTRIX_TEST_PBS_BIN/qsub).
#
# Interface (see scripts/testcluster.sh): pbs_packages, pbs_up, pbs_down, pbs_running, pbs_env.
# Needs slurm. Files: $STATE/pbs (the .deb and what it unpacks to), logs in $LOG.

component pbs 40 40 slurm

PBS_DIR=$STATE/pbs
PBS_BIN=$PBS_DIR/usr/bin

# The perl modules the wrappers use (the wrappers themselves are unpacked by pbs_up).
pbs_packages() { echo libslurm-perl libslurmdb-perl libswitch-perl; }

# Bare qstat exits 153 when SLURM holds no jobs at all; -Q (the queues) answers regardless.
pbs_running() { [[ -x $PBS_BIN/qsub ]] && slurm_running && "$PBS_BIN/qstat" -Q >/dev/null 2>&1; }

pbs_up() {
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
  slurm_running || fail "pbs needs slurm, which is down"
  wait_for 10 "PBS qstat wrapper" "$LOG/slurmctld.log" -- "$PBS_BIN/qstat" -Q
  say "pbs: up ($PBS_BIN)"
}

pbs_down() { :; }   # nothing runs: the wrappers call SLURM, which slurm_down stops

pbs_env() { echo "export CLUSTRIX_TEST_PBS_BIN=$PBS_BIN"; }
