#!/bin/sh
# What `cmake --install` puts on a host, in a temporary prefix: the files;
# the unit (ExecStart= the installed daemon, `systemd-analyze verify` with
# nothing to say, the man pages it names found); the sysusers.d file creating
# both groups in a scratch root; every man page rendering with `man -l`
# without a warning; the example configuration accepted by the daemon; and
# bash completion of commands and of UVM IDs from a running broker.
#   test_host_install.sh BUILD_DIR SOURCE_DIR
set -eu
build=$1
src=$2
tmp=$(mktemp -d /tmp/ul-host-XXXXXX)
broker_pid=
holder_pid=
cleanup() {
  [ -z "$holder_pid" ] || kill "$holder_pid" 2>/dev/null || true
  if [ -n "$broker_pid" ]; then
    kill "$broker_pid" 2>/dev/null || true
    wait "$broker_pid" 2>/dev/null || true
  fi
  rm -rf "$tmp"
}
trap cleanup EXIT
step() { echo "== $*"; }
fail() {
  echo "FAIL: $*"
  exit 1
}

step "install into $tmp/prefix"
p=$tmp/prefix
cmake --install "$build" --prefix "$p" >"$tmp/install.log" 2>&1 ||
  { cat "$tmp/install.log"; fail "cmake --install"; }
for f in sbin/uvmleased bin/uvmleasectl lib/systemd/system/uvmleased.service \
  lib/sysusers.d/uvmlease.conf share/bash-completion/completions/uvmleasectl \
  share/doc/uvmlease/uvmleased.conf.example share/doc/uvmlease/README.md \
  share/doc/uvmlease/WINDOWS.md share/man/man8/uvmleased.8 share/man/man5/uvmleased.conf.5 \
  share/man/man1/uvmleasectl.1 share/man/man3/libuvmlease.3; do
  [ -f "$p/$f" ] || fail "$f not installed"
done
# Nothing outside the prefix: a plain install never writes /etc.
grep "^-- \(Installing\|Up-to-date\): " "$tmp/install.log" | grep -v ": $p/" &&
  fail "installed outside the prefix"

step "the unit"
unit=$p/lib/systemd/system/uvmleased.service
grep -qx "ExecStart=$p/sbin/uvmleased" "$unit" || fail "ExecStart= does not name $p/sbin/uvmleased"
for line in Type=notify WatchdogSec=10s Restart=always CapabilityBoundingSet=CAP_KILL \
  PrivateNetwork=yes ProtectProc=default RuntimeDirectory=uvmlease; do
  grep -qx "$line" "$unit" || fail "the unit lacks $line"
done
grep -q '^PrivatePIDs\|^ProtectProc=invisible\|^ProtectProc=noaccess' "$unit" &&
  fail "the unit hides the host's processes"
# A crash loop cannot use up the start limit: restarts per interval stay
# below the burst.
rs=$(sed -n 's/^RestartSec=\([0-9]*\)s$/\1/p' "$unit")
iv=$(sed -n 's/^StartLimitIntervalSec=\([0-9]*\)s$/\1/p' "$unit")
burst=$(sed -n 's/^StartLimitBurst=\([0-9]*\)$/\1/p' "$unit")
[ -n "$rs" ] && [ -n "$iv" ] && [ -n "$burst" ] || fail "no restart timing in the unit"
[ $((iv / rs)) -lt "$burst" ] || fail "$iv s / RestartSec $rs s reaches StartLimitBurst $burst"
# The man pages in Documentation= must be found: look in the prefix.
MANPATH=$p/share/man systemd-analyze verify "$unit" >"$tmp/verify.log" 2>&1 ||
  { cat "$tmp/verify.log"; fail "systemd-analyze verify failed"; }
[ ! -s "$tmp/verify.log" ] || { cat "$tmp/verify.log"; fail "systemd-analyze verify has complaints"; }

step "sysusers.d creates the groups"
mkdir -p "$tmp/root/etc"
systemd-sysusers --root="$tmp/root" "$p/lib/sysusers.d/uvmlease.conf" >"$tmp/sysusers.log" 2>&1 ||
  { cat "$tmp/sysusers.log"; fail "systemd-sysusers"; }
for g in uvmlease uvmlease-admin; do
  grep -q "^$g:x:[0-9]*:" "$tmp/root/etc/group" || fail "no group $g"
done

step "man pages render"
for m in man8/uvmleased.8 man5/uvmleased.conf.5 man1/uvmleasectl.1 man3/libuvmlease.3; do
  name=$(basename "$m" | sed 's/\.[0-9]$//')
  LC_ALL=C.UTF-8 MANWIDTH=80 man --warnings -E UTF-8 -l "$p/share/man/$m" >"$tmp/page" 2>"$tmp/warn" ||
    fail "man -l $m"
  [ ! -s "$tmp/warn" ] || { cat "$tmp/warn"; fail "warnings rendering $m"; }
  grep -q "^NAME" "$tmp/page" || fail "$m has no NAME section"
  grep -q "$name - " "$tmp/page" || fail "$m does not name $name"
done
LC_ALL=C.UTF-8 MANWIDTH=80 man -l "$p/share/man/man5/uvmleased.conf.5" | grep -q "max-leases" ||
  fail "uvmleased.conf(5) does not describe max-leases"

step "the example configuration"
"$p/sbin/uvmleased" --config "$p/share/doc/uvmlease/uvmleased.conf.example" \
  --socket-group 0 --admin-group 0 --check-config >"$tmp/check" 2>&1 ||
  { cat "$tmp/check"; fail "the example is refused"; }
# Every key the daemon knows is in the example.
for k in $(sed -n 's/^#\{0,1\}\([a-z-]*\) = .*/\1/p' "$tmp/check"); do
  grep -q "^#\{0,1\}$k = " "$p/share/doc/uvmlease/uvmleased.conf.example" ||
    fail "the example lacks $k"
done

step "bash completion"
if ! command -v bash >/dev/null 2>&1; then
  echo "no bash: skipped"
  exit 0
fi
rt=$tmp/run
"$p/sbin/uvmleased" --config /dev/null --runtime-dir "$rt" 2>"$tmp/broker.log" &
broker_pid=$!
ep=ipc://$rt/broker.sock
i=0
until "$p/bin/uvmleasectl" --endpoint "$ep" ping >/dev/null 2>&1; do
  i=$((i + 1))
  [ $i -lt 200 ] || { cat "$tmp/broker.log"; fail "the broker did not answer"; }
  sleep 0.05
done
# A lease held by a command that waits on a FIFO: listed while it waits.
mkfifo "$tmp/go" "$tmp/held"
"$p/bin/uvmleasectl" --endpoint "$ep" run --uvm cmp-one@vm --confidential -- \
  sh -c 'echo held >"$0"; read x <"$1"' "$tmp/held" "$tmp/go" &
holder_pid=$!
read -r _ <"$tmp/held"
cat >"$tmp/comp.bash" <<EOS
PATH=$p/bin:\$PATH
. "$p/share/bash-completion/completions/uvmleasectl"
complete -p uvmleasectl >/dev/null || { echo "not registered"; exit 1; }
c() { COMP_WORDS=("\$@"); COMP_CWORD=\$((\${#COMP_WORDS[@]} - 1)); COMPREPLY=(); _uvmleasectl; echo "\${COMPREPLY[*]}"; }
echo "1:\$(c uvmleasectl dr)"
echo "2:\$(c uvmleasectl --endpoint $ep show '')"
echo "3:\$(c uvmleasectl --endpoint $ep run --uvm cmp)"
echo "4:\$(c uvmleasectl release --mode '')"
echo "5:\$(c uvmleasectl --endpoint ipc://$tmp/nobroker.sock show '')"
echo "6:\$(c uvmleasectl list --w)"
EOS
bash "$tmp/comp.bash" >"$tmp/comp.out" 2>&1 || { cat "$tmp/comp.out"; fail "completion script"; }
echo go >"$tmp/go"
wait "$holder_pid" || fail "the lease holder failed"
holder_pid=
check() { grep -qx "$1" "$tmp/comp.out" || { cat "$tmp/comp.out"; fail "completion: expected '$1'"; }; }
check "1:drain"
check "2:cmp-one@vm"
check "3:cmp-one@vm"
check "4:revoke kill"
check "5:"
check "6:--wide"
echo "ok: host install, unit, sysusers, man pages, example configuration, completion"
