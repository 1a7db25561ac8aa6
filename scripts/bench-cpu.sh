# shellcheck shell=sh
# Sourced by the bench scripts (POSIX sh): CPU priority for a bench over whatever else runs.
#
# The kernel groups tasks by session (sched_autogroup_enabled=1 on Debian), and every session
# weighs the same whatever its tasks' nice: another session's `nice -n 19` build takes as much
# CPU as the bench, and each daemon the bench starts (its own session) is one more share. So a
# bench moves itself, and with it everything it starts afterwards (daemons, criu, tar, ...),
# into a cpu cgroup of its own weighing 16 sessions, as a nice-0 bench would weigh against
# nice-19 builds without autogroups. Containers' own cgroups are the daemon's and stay
# where it puts them, weighed up only by bench_cpu_containers. BENCH_CPU_PRIORITY=0 turns both
# off; bench_cpu_priority_json says which.
#
#   bench_cpu_priority NAME   after the bench's exit trap is set (it must call bench_cpu_release)
#   bench_cpu_containers      for a bench that times what runs inside containers (a boot): the
#                             daemon's containers' parent cpu cgroup (`corral`, the runtime's
#                             cgroup::PARENT) weighs the same 16 sessions until the release; its
#                             old weight is put back then. Containers' cgroups are not under the
#                             bench's: without this, a container booting on a machine where four
#                             other sessions build gets a fifth of the CPU (a Debian boot measured
#                             here: systemd done at 941-1057 ms with the default weight, 352-377 ms
#                             with this, at load 11)
#   bench_cpu_release         in the exit trap: back to the parent cgroup, the cgroup removed

bench_cpu_cgroup=
bench_cpu_parent_knob= bench_cpu_parent_old= bench_cpu_parent_weight=

bench_cpu_priority() {
    [ "${BENCH_CPU_PRIORITY:-1}" != 0 ] || return 0
    if [ -f /sys/fs/cgroup/cpu/cpu.shares ]; then # v1 (or the hybrid layout)
        bench_cpu_cgroup=/sys/fs/cgroup/cpu/corral-bench-$1-$$
        mkdir "$bench_cpu_cgroup" && echo 16384 >"$bench_cpu_cgroup/cpu.shares"
    elif grep -qw cpu /sys/fs/cgroup/cgroup.controllers 2>/dev/null; then # v2
        echo +cpu >/sys/fs/cgroup/cgroup.subtree_control
        bench_cpu_cgroup=/sys/fs/cgroup/corral-bench-$1-$$
        mkdir "$bench_cpu_cgroup" && echo 1600 >"$bench_cpu_cgroup/cpu.weight" # 16 × 100
    else
        echo "bench: no cpu controller: the bench runs without CPU priority" >&2
        return 0
    fi
    echo $$ >"$bench_cpu_cgroup/cgroup.procs"
}

bench_cpu_containers() {
    [ "${BENCH_CPU_PRIORITY:-1}" != 0 ] || return 0
    if [ -f /sys/fs/cgroup/cpu/cpu.shares ]; then
        bench_cpu_parent_knob=/sys/fs/cgroup/cpu/corral/cpu.shares bench_cpu_parent_weight=16384
    elif grep -qw cpu /sys/fs/cgroup/cgroup.controllers 2>/dev/null; then
        bench_cpu_parent_knob=/sys/fs/cgroup/corral/cpu.weight bench_cpu_parent_weight=1600
        echo +cpu >/sys/fs/cgroup/cgroup.subtree_control
    else
        return 0
    fi
    # The runtime makes the parent when it starts the first container; made here first, as it
    # would be (the v2 controllers it enables below it are enabled again by the runtime).
    mkdir -p "$(dirname "$bench_cpu_parent_knob")"
    bench_cpu_parent_old=$(cat "$bench_cpu_parent_knob")
    echo "$bench_cpu_parent_weight" >"$bench_cpu_parent_knob"
}

bench_cpu_release() {
    if [ -n "$bench_cpu_parent_knob" ]; then
        echo "$bench_cpu_parent_old" >"$bench_cpu_parent_knob" ||
            echo "bench: cannot put $bench_cpu_parent_knob back to $bench_cpu_parent_old" >&2
        bench_cpu_parent_knob=
    fi
    [ -n "$bench_cpu_cgroup" ] || return 0
    echo $$ >"$(dirname "$bench_cpu_cgroup")/cgroup.procs"
    rmdir "$bench_cpu_cgroup" 2>/dev/null ||
        echo "bench: cannot remove $bench_cpu_cgroup, still in it: $(tr '\n' ' ' <"$bench_cpu_cgroup/cgroup.procs")" >&2
    bench_cpu_cgroup=
}

bench_cpu_priority_json() {
    case $bench_cpu_cgroup in
        '') printf none ;;
        /sys/fs/cgroup/cpu/*) printf "cpu cgroup, cpu.shares 16384" ;;
        *) printf "cpu cgroup, cpu.weight 1600" ;;
    esac
    [ -z "$bench_cpu_parent_knob" ] || printf "; containers' parent cgroup too (%s)" "$bench_cpu_parent_knob"
    echo
}
