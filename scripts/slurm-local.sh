#!/usr/bin/env bash
# A real one-node SLURM cluster on this machine, for the harness's tests and for trying the harness locally.
#
#   sudo scripts/slurm-local.sh up       install (Debian/Ubuntu), configure and start munge + slurmctld + slurmd
#   sudo scripts/slurm-local.sh down     cancel every job, stop slurmd and slurmctld (munged keeps running)
#   scripts/slurm-local.sh status        sinfo + squeue; exits non-zero when the cluster is not up
#
# No systemd and no cgroups needed (works in containers): processes are tracked with linuxproc, memory is a
# scheduling quantity only (not enforced), and there is no accounting database (sacct fails; squeue and
# `scontrol show job` work). Both `up` and `down` are idempotent.
set -euo pipefail

CONF=/etc/slurm/slurm.conf
MARKER="# Written by splitmask-harness scripts/slurm-local.sh; it rewrites this file on 'up'."
CTLD_PID=/run/slurmctld.pid
SLURMD_PID=/run/slurmd.pid
NODE=$(hostname -s)

say() { echo "slurm-local: $*"; }
die() {
    echo "slurm-local: error: $*" >&2
    exit 1
}

need_root() {
    [ "$(id -u)" = 0 ] || die "'$1' must run as root: sudo $0 $1"
}

# True when the pid file names a live process of that name: not a stale file whose pid was reused, nor a zombie
# (in a container whose init does not reap, a stopped daemon stays one).
alive() {
    local pid
    pid=$(cat "$1" 2>/dev/null) || return 1
    [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$(basename "$1" .pid)" ] &&
        ! grep -q '^State:[[:space:]]*Z' "/proc/$pid/status" 2>/dev/null
}

# True when slurmctld answers (scontrol ping prints "Slurmctld(primary) at <host> is UP", or DOWN).
ctld_up() { command -v scontrol >/dev/null && [[ "$(timeout 10 scontrol ping 2>/dev/null)" == *"is UP"* ]]; }

install_packages() {
    if command -v sbatch >/dev/null && command -v slurmctld >/dev/null && command -v slurmd >/dev/null &&
        command -v munged >/dev/null; then
        return
    fi
    command -v apt-get >/dev/null || die "SLURM is not installed and there is no apt-get: install slurm-wlm and munge"
    say "installing slurm-wlm and munge with apt-get (about a minute)"
    export DEBIAN_FRONTEND=noninteractive
    # Only refresh the package lists when the install fails with the ones we have.
    if ! apt-get install -y -q slurm-wlm munge >/dev/null; then
        say "install failed; running apt-get update and retrying"
        apt-get update -q >/dev/null
        apt-get install -y -q slurm-wlm munge >/dev/null
    fi
}

start_munge() {
    # The key: the package makes one; any 1024 random bytes do when it is missing.
    install -d -o munge -g munge -m 700 /etc/munge
    if [ ! -s /etc/munge/munge.key ]; then
        say "creating /etc/munge/munge.key"
        dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
    fi
    chown munge:munge /etc/munge/munge.key
    chmod 400 /etc/munge/munge.key
    # Without systemd nobody makes the runtime directories.
    install -d -o munge -g munge -m 755 /run/munge
    install -d -o munge -g munge -m 700 /var/log/munge /var/lib/munge
    if ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
        say "starting munged"
        su -s /bin/sh munge -c /usr/sbin/munged
    fi
    munge -n | unmunge >/dev/null || die "munge does not work (munge -n | unmunge failed); see /var/log/munge"
}

# The whole slurm.conf on stdout.
render_conf() {
    local cpus mem_total mem_real
    cpus=$(nproc)
    mem_total=$(awk '/^MemTotal:/ {print int($2 / 1024)}' /proc/meminfo)
    # Leave the OS 5% (at least 256 MiB) so slurmd never finds less memory than configured.
    mem_real=$((mem_total - (mem_total / 20 > 256 ? mem_total / 20 : 256)))
    cat <<EOF
$MARKER
# One node, no systemd, no cgroups, no accounting. See the script for why each setting is here.
ClusterName=local
SlurmctldHost=$NODE
AuthType=auth/munge
CredType=cred/munge
# Job-step credentials live 10 s (default 120): this is also how long a requeued job waits before it can run
# again, so preempt -> requeue -> resume takes seconds instead of minutes.
AuthInfo=cred_expire=10
SlurmUser=root
SlurmdUser=root
ReturnToService=2
MpiDefault=none
# No mail on this machine; the default /bin/mail is missing and slurmctld logs an error about it.
MailProg=/bin/true
# cgroup plugins fail in containers; linuxproc tracks a job's processes by parentage.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
SchedulerType=sched/backfill
# Try pending jobs every 5 s (main loop) and backfill every 5 s (defaults 60 and 30); submissions and job ends
# also trigger the main loop at once.
SchedulerParameters=sched_interval=5,bf_interval=5
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
# A job that asks for no memory gets its CPUs' share rather than the whole node.
DefMemPerCPU=$((mem_real / cpus))
# Finished jobs stay known to slurmctld (scontrol show job, squeue -t all) for 300 s, the default; with no
# accounting this is the only place their final state and exit code can be read.
MinJobAge=300
# Seconds between SIGTERM and SIGKILL when a job is cancelled or preempted (default 30): quick cancels.
KillWait=5
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
SlurmctldPidFile=$CTLD_PID
SlurmdPidFile=$SLURMD_PID
NodeName=$NODE CPUs=$cpus RealMemory=$mem_real State=UNKNOWN
PartitionName=debug Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
EOF
}

# Writes slurm.conf when it is absent or ours; sets CONF_CHANGED=1 when its content changed.
CONF_CHANGED=0
write_conf() {
    local new
    new=$(render_conf)
    if [ -f "$CONF" ]; then
        grep -qxF "$MARKER" "$CONF" ||
            die "$CONF exists and was not written by this script; not touching it (move it away to use this script)"
        [ "$(cat "$CONF")" = "$new" ] && return
    fi
    say "writing $CONF"
    mkdir -p "$(dirname "$CONF")"
    printf '%s\n' "$new" >"$CONF"
    CONF_CHANGED=1
}

stop_daemons() {
    if ctld_up; then
        say "stopping slurmctld and slurmd (scontrol shutdown)"
        scontrol shutdown >/dev/null 2>&1 || true
    fi
    local f i
    for f in "$SLURMD_PID" "$CTLD_PID"; do
        for i in $(seq 50); do
            alive "$f" || break
            if [ "$i" = 20 ]; then # not gone after 4 s: TERM it ourselves
                kill "$(cat "$f")" 2>/dev/null || true
            fi
            sleep 0.2
        done
        alive "$f" && die "$(basename "$f" .pid) (pid $(cat "$f")) does not stop"
        rm -f "$f"
    done
}

# Node state as sinfo prints it, e.g. idle, mix, alloc, down*, drain.
node_state() { timeout 10 sinfo -h -n "$NODE" -o %t 2>/dev/null | head -n1; }

logs_tail() {
    local f
    for f in /var/log/slurm/slurmctld.log /var/log/slurm/slurmd.log; do
        [ -f "$f" ] && { echo "--- last lines of $f"; tail -n 5 "$f"; }
    done >&2
}

wait_ready() {
    local i state="" resumed=""
    for i in $(seq 60); do # 30 s
        state=$(node_state || true)
        case "$state" in
        idle | mix | alloc | comp) return 0 ;;
        inval)
            logs_tail
            die "slurmctld finds node $NODE smaller than $CONF says: $(sinfo -h -R -o %E)"
            ;;
        down | drain | drng | fail | failg)
            # e.g. left down by an unclean stop; ReturnToService=2 does not clear a drain
            if [ -z "$resumed" ]; then
                say "node $NODE is $state; resuming it"
                scontrol update nodename="$NODE" state=resume || true
                resumed=1
            fi
            ;;
        esac
        sleep 0.5
    done
    logs_tail
    die "node $NODE not ready after 30 s (state '${state:-no answer}')"
}

cmd_up() {
    need_root up
    install_packages
    start_munge
    mkdir -p /var/spool/slurmctld /var/spool/slurmd /var/log/slurm
    write_conf
    if [ "$CONF_CHANGED" = 1 ] && { alive "$CTLD_PID" || alive "$SLURMD_PID"; }; then
        say "configuration changed: restarting the daemons"
        stop_daemons
    fi
    if ! alive "$CTLD_PID"; then
        say "starting slurmctld"
        slurmctld -i
    fi
    if ! alive "$SLURMD_PID"; then
        say "starting slurmd"
        slurmd
    fi
    wait_ready
    say "up: node $NODE ($(nproc) CPUs) in partition debug; try: sbatch --wrap hostname && squeue"
}

cmd_down() {
    need_root down
    if ctld_up; then
        # Every job of every user; pending array records cancel as a whole through their array job id.
        local jobs i
        jobs=$(squeue -h -o %A | sort -u)
        if [ -n "$jobs" ]; then
            say "cancelling $(echo "$jobs" | wc -l) job(s)"
            # shellcheck disable=SC2086 # one id per word
            scancel $jobs || true
            for i in $(seq 40); do # up to 20 s for jobs to be killed (KillWait is 5 s)
                [ -z "$(squeue -h -o %A)" ] && break
                sleep 0.5
            done
        fi
    fi
    stop_daemons
    say "down"
}

cmd_status() {
    command -v sinfo >/dev/null || {
        echo "slurm-local: SLURM is not installed (sudo $0 up)"
        exit 1
    }
    if ! ctld_up; then
        echo "slurm-local: slurmctld does not answer (sudo $0 up)"
        exit 1
    fi
    sinfo
    echo
    squeue
    case "$(node_state)" in
    idle | mix | alloc | comp) ;;
    *)
        echo "slurm-local: node $NODE is not usable (sudo $0 up)"
        exit 1
        ;;
    esac
}

case "${1:-}" in
up) cmd_up ;;
down) cmd_down ;;
status) cmd_status ;;
*)
    echo "usage: $0 up|down|status" >&2
    exit 2
    ;;
esac
