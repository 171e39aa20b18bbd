#!/usr/bin/env bash
# The crash and the fix, end to end, with the bring-up model of tests/sim/:
# a fake guest per UVM (a confidential one resets when two container
# bring-ups overlap) and simulated shims (one thread per container, sharing
# one libuvmlease connection, all released together on a barrier).
#
#   1. the upstream matrix in a confidential UVM without the broker: resets;
#   2. the same with uvmleased, a standard UVM in parallel: no reset;
#   3. a shim killed in the middle of a step, quarantine 0 vs. a quarantine
#      longer than the step.
#
# Installs what is missing (as root), builds into ${UL_BUILD:-build}, runs
# everything under a temporary runtime directory and stops all it started.
# Exits 0 only when the runs with the broker had no reset and completed
# every bring-up, and the runs without it reset at least once. Last line:
#   RESULT with_broker_resets=0 without_broker_resets=K bringups=N
# (N = bring-ups completed with the broker: section 2 and the quarantined
# run of section 3.)
set -euo pipefail
cd "$(dirname "$0")/.."
top=$(pwd)
build="${UL_BUILD:-$top/build}"
jobs=$(nproc 2>/dev/null || echo 2)
t_start=$(date +%s%N)

# Bring-up timings: tens of milliseconds per step keeps the demo short while
# leaving the unserialized bring-ups plenty of room to overlap.
step_ms=20
long_step_ms=800 # the step a shim dies in (section 3)
die_after_ms=150
quarantine_ms=1000 # longer than long_step_ms

say() { printf '%s\n' "$*"; }
section() { printf '\n== %s\n' "$*"; }
die() {
    printf 'demo: %s\n' "$*" >&2
    exit 1
}

# ---- dependencies and build ------------------------------------------------
deploy/deps.sh

work=$(mktemp -d "${TMPDIR:-/tmp}/uvmlease-demo.XXXXXX")
pids=()
# shellcheck disable=SC2317 # called by the EXIT trap
cleanup() {
    local rc=$?
    local p
    for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
    for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
    rm -rf "$work"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

section "build ($build)"
# The same configuration as deploy/test.sh, so both share one build tree.
if ! cmake -S "$top" -B "$build" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DUL_WERROR=ON \
    >"$work/build.log" 2>&1 ||
    ! cmake --build "$build" -j "$jobs" --target uvmleased fake_guest sim_shim \
        >>"$work/build.log" 2>&1; then
    tail -n 30 "$work/build.log" >&2
    die "build failed"
fi
ctl=""
if cmake --build "$build" -j "$jobs" --target uvmleasectl >>"$work/build.log" 2>&1; then
    ctl="$build/client/uvmleasectl"
fi
sim="$build/sim"
say "   uvmleased, sim/fake_guest, sim/sim_shim${ctl:+, uvmleasectl} built"

# ---- helpers ------------------------------------------------------------------
forget() { # stop tracking a reaped pid
    local keep=() p
    for p in "${pids[@]}"; do [ "$p" = "$1" ] || keep+=("$p"); done
    pids=("${keep[@]}")
}

wait_for_file() {
    local i
    for ((i = 0; i < 500; i++)); do
        [ -e "$1" ] && return 0
        sleep 0.02
    done
    die "timed out waiting for $1"
}

# Wait until file holds at least n lines matching pattern.
wait_for_lines() { # file pattern n
    local i
    for ((i = 0; i < 500; i++)); do
        [ "$(grep -c -- "$2" "$1" 2>/dev/null || true)" -ge "$3" ] && return 0
        sleep 0.02
    done
    die "timed out waiting for '$2' in $1"
}

field() { # line key -> the number after " key="
    sed -n "s/.* $2=\([0-9][0-9]*\).*/\1/p" <<<"$1"
}

rt="$work/rt"
ep="ipc://$rt/broker.sock"
broker_pid=""
broker_start() { # extra uvmleased options
    "$build/uvmleased" --runtime-dir "$rt" "$@" 2>>"$work/broker.log" &
    broker_pid=$!
    pids+=("$broker_pid")
    wait_for_file "$rt/broker.sock"
    if [ -n "$ctl" ]; then
        local i
        for ((i = 0; i < 100; i++)); do
            "$ctl" --endpoint "$ep" ping >/dev/null 2>&1 && return 0
            sleep 0.02
        done
        die "uvmleased does not answer"
    fi
}
broker_stop() {
    kill -TERM "$broker_pid"
    wait "$broker_pid" || die "uvmleased exited with an error"
    forget "$broker_pid"
}

guest_pid=""
guest_sock=""
guest_log=""
guest_start() { # name confidential(0|1)
    local args=(--uvm "$1" --verbose)
    [ "$2" = 1 ] && args+=(--confidential)
    guest_sock="$work/$1.sock"
    guest_log="$work/$1.log"
    "$sim/fake_guest" "${args[@]}" "$guest_sock" >"$work/$1.out" 2>"$guest_log" &
    guest_pid=$!
    pids+=("$guest_pid")
    wait_for_file "$guest_sock"
}
guest_line=""
guest_stop() { # pid name; sets guest_line
    kill -TERM "$1"
    wait "$1" || die "fake guest $2 exited with an error"
    forget "$1"
    guest_line=$(grep '^GUEST ' "$work/$2.out") || die "no GUEST line from $2"
}

shim_seq=0
shim_pid=""
shim_out=""
shim_bg() { # sim_shim options; output in $shim_out
    shim_seq=$((shim_seq + 1))
    shim_out="$work/shim-$shim_seq.out"
    "$sim/sim_shim" --step-ms "$step_ms" "$@" >"$shim_out" 2>"$work/shim-$shim_seq.log" &
    shim_pid=$!
    pids+=("$shim_pid")
}
shim_line=""
shim_wait() { # pid out; sets shim_line (the shim's exit status is in the line)
    wait "$1" || true
    forget "$1"
    shim_line=$(grep '^SHIM ' "$2") || die "no SHIM line in $2"
}

# Realistic UVM IDs: 64 hex digits and "@vm".
uvm_id() { printf '%s@vm' "$(printf '%s' "$1" | sha256sum | cut -c1-64)"; }

groups=("2xnanoserver" "2xmount-host" "1xmount-host,2xnanoserver")
labels=("2x nanoserver" "2x mount-host" "1x mount-host + 2x nanoserver")

without_resets=0
without_ok=1
with_resets=0
with_fence_errors=0
with_bringups=0
with_expected=0
with_ok=1

# ---- 1. without the broker ----------------------------------------------------
section "1. upstream matrix, confidential UVM, WITHOUT the broker"
say "   each group starts its containers together against a fresh guest"
first_reset=""
for i in "${!groups[@]}"; do
    name="nobroker-$i"
    guest_start "$name" 1
    shim_bg --no-broker --confidential --uvm "$(uvm_id "$name")" --guest "$guest_sock" \
        --containers "${groups[$i]}" --label-prefix "g$i"
    shim_wait "$shim_pid" "$shim_out"
    guest_stop "$guest_pid" "$name"
    r=$(field "$guest_line" resets)
    printf '   %-32s %d begun, %d completed, guest resets: %d\n' "${labels[$i]}" \
        "$(field "$guest_line" begun)" "$(field "$guest_line" completed)" "$r"
    without_resets=$((without_resets + r))
    [ "$r" -ge 1 ] || without_ok=0
    [ -n "$first_reset" ] || first_reset=$(grep -m1 'RESET' "$guest_log" || true)
done
[ -z "$first_reset" ] || say "   guest log: ${first_reset#*] }"

# ---- 2. with the broker -------------------------------------------------------
section "2. the same WITH uvmleased (runtime dir $rt), a standard UVM in parallel"
broker_start
std_name="standard"
std_uvm=$(uvm_id "$std_name")
guest_start "$std_name" 0
std_pid=$guest_pid
std_sock=$guest_sock
std_count=0

# One group against a fresh confidential guest, with standard bring-ups
# running at the same time. Sets with_* totals.
with_group() { # index name containers label [extra shim options...]
    local i=$1 name=$2 containers=$3 label=$4
    shift 4
    guest_start "$name" 1
    local conf_pid=$guest_pid conf_log=$guest_log conf_uvm
    conf_uvm=$(uvm_id "$name-uvm")
    shim_bg --uvm "$std_uvm" --guest "$std_sock" --endpoint "$ep" \
        --containers 2xnanoserver --label-prefix "std$i" "$@"
    local sp=$shim_pid so=$shim_out
    std_count=$((std_count + 2))
    local cpids=() couts=() spec
    IFS=' ' read -r -a specs <<<"$containers"
    local k=0
    for spec in "${specs[@]}"; do
        shim_bg --confidential --uvm "$conf_uvm" --guest "$guest_sock" \
            --endpoint "$ep" --containers "$spec" --label-prefix "c$i-$k" "$@"
        cpids+=("$shim_pid")
        couts+=("$shim_out")
        k=$((k + 1))
    done
    if [ -n "${SHOW_LIST:-}" ]; then
        show_admin_view "$conf_log" "$conf_uvm"
    fi
    local completed=0 failed=0 j
    for j in "${!cpids[@]}"; do
        shim_wait "${cpids[$j]}" "${couts[$j]}"
        completed=$((completed + $(field "$shim_line" completed)))
        failed=$((failed + $(field "$shim_line" containers) - $(field "$shim_line" completed)))
    done
    shim_wait "$sp" "$so"
    [ "$(field "$shim_line" completed)" = 2 ] || with_ok=0
    guest_stop "$conf_pid" "$name"
    local r f b c
    r=$(field "$guest_line" resets)
    f=$(field "$guest_line" fence_errors)
    b=$(field "$guest_line" begun)
    c=$(field "$guest_line" completed)
    printf '   %-32s %d begun, %d completed, guest resets: %d, fence errors: %d\n' \
        "$label" "$b" "$c" "$r" "$f"
    with_resets=$((with_resets + r))
    with_fence_errors=$((with_fence_errors + f))
    with_bringups=$((with_bringups + c))
    with_expected=$((with_expected + b))
    [ "$failed" -eq 0 ] && [ "$c" -eq "$completed" ] || with_ok=0
}

show_admin_view() { # guest log, UVM id
    # Once a bring-up is in its second step, the others are queued.
    wait_for_lines "$1" ': step ' 2
    if [ -n "$ctl" ] && "$ctl" --endpoint "$ep" list >"$work/list.out" 2>"$work/list.err"; then
        say "   -- uvmleasectl list, mid-run:"
        sed 's/^/   /' "$work/list.out"
    else
        # Until the admin view exists: the broker's own lines once the lease
        # has passed from one shim to the next.
        wait_for_lines "$work/broker.log" "msg=grant uvm=$2" 2
        say "   -- broker log of that UVM, mid-run (uvmleasectl list is not available yet):"
        grep -E "msg=(grant|release) uvm=$2" "$work/broker.log" | tail -n 4 |
            sed -e 's/^ts=[^ ]* //' -e "s/uvm=$2/uvm=${2:0:8}…@vm/" -e 's/^/   /'
    fi
}

for i in "${!groups[@]}"; do
    with_group "$i" "broker-$i" "${groups[$i]}" "${labels[$i]}"
done
# Several shim processes on one UVM at once, with slower steps so the admin
# view catches bring-ups in flight and others waiting.
SHOW_LIST=1 with_group 3 "broker-all" "${groups[*]}" "all 3 groups, 3 shims at once" \
    --step-ms 60
guest_stop "$std_pid" "$std_name"
printf '   %-32s %d begun, %d completed, up to %d at once, resets: %d\n' \
    "standard UVM alongside" "$(field "$guest_line" begun)" \
    "$(field "$guest_line" completed)" "$(field "$guest_line" max_open)" \
    "$(field "$guest_line" resets)"
[ "$(field "$guest_line" completed)" = "$std_count" ] || with_ok=0

# ---- 3. a shim killed in the middle of a step --------------------------------
section "3. a shim killed ${die_after_ms} ms into a ${long_step_ms} ms cim-mount; the next one waits for the lease"
killed_run() { # name; prints and sets kr_resets, kr_completed, kr_wait
    local name=$1
    guest_start "$name" 1
    local gp=$guest_pid glog=$guest_log uvm
    uvm=$(uvm_id "$name-uvm")
    shim_bg --confidential --uvm "$uvm" --guest "$guest_sock" --endpoint "$ep" \
        --containers 1xnanoserver --label-prefix dying --step "cim-mount=$long_step_ms" \
        --die-in-step cim-mount --die-after-ms "$die_after_ms"
    local dp=$shim_pid
    wait_for_lines "$glog" 'begin dying' 1
    shim_bg --confidential --uvm "$uvm" --guest "$guest_sock" --endpoint "$ep" \
        --containers 1xnanoserver --label-prefix next
    local np=$shim_pid no=$shim_out
    wait "$dp" 2>/dev/null || true
    forget "$dp"
    shim_wait "$np" "$no"
    kr_completed=$(field "$shim_line" completed)
    kr_wait=$(field "$shim_line" max_wait_ms)
    guest_stop "$gp" "$name"
    kr_resets=$(field "$guest_line" resets)
    kr_reset_line=$(grep -m1 'RESET' "$glog" || true)
}

killed_run "killed-q0"
printf '   %-20s next shim waited %4d ms: completed %d, guest resets: %d\n' \
    "quarantine 0 ms:" "$kr_wait" "$kr_completed" "$kr_resets"
[ -z "$kr_reset_line" ] || say "      ${kr_reset_line#*] }"
q0_resets=$kr_resets

broker_stop
broker_start --quarantine-ms "$quarantine_ms"
killed_run "killed-q"
printf '   %-20s next shim waited %4d ms: completed %d, guest resets: %d\n' \
    "quarantine ${quarantine_ms} ms:" "$kr_wait" "$kr_completed" "$kr_resets"
with_resets=$((with_resets + kr_resets))
with_bringups=$((with_bringups + kr_completed))
with_expected=$((with_expected + 1))
[ "$kr_completed" = 1 ] || with_ok=0
if [ "$q0_resets" -ge 1 ]; then
    say "   without quarantine the lease passed on while the dead shim's step still ran"
else
    say "   (this time the next bring-up did not meet the dead shim's step)"
fi
broker_stop

# ---- verdict ------------------------------------------------------------------
t_end=$(date +%s%N)
section "verdict"
printf '   without the broker: %d resets in %d groups\n' "$without_resets" "${#groups[@]}"
printf '   with the broker:    %d resets, %d fence errors, %d of %d bring-ups completed\n' \
    "$with_resets" "$with_fence_errors" "$with_bringups" "$with_expected"
printf '   demo took %d.%01d s\n' $(((t_end - t_start) / 1000000000)) \
    $(((t_end - t_start) / 100000000 % 10))
rc=0
[ "$with_resets" -eq 0 ] && [ "$with_fence_errors" -eq 0 ] && [ "$with_ok" -eq 1 ] &&
    [ "$with_bringups" -eq "$with_expected" ] || rc=1
[ "$without_ok" -eq 1 ] && [ "$without_resets" -ge 1 ] || rc=1
if [ "$rc" -eq 0 ]; then say "   OK"; else say "   FAILED"; fi
say "RESULT with_broker_resets=$with_resets without_broker_resets=$without_resets bringups=$with_bringups"
exit "$rc"
