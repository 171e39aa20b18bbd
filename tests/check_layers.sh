#!/bin/sh
# Layers point one way. Reads the #include "..." lines of broker/, client/
# and common/ and fails when a file includes a header of a layer above its
# own, a header of its own layer where peers may not call each other, or
# when modules (x.c with x.h) include each other in a circle. Every C file
# and header must have a layer below: a new file is added here on purpose.
#
# usage: check_layers.sh [SOURCE_DIR]
set -eu
top=${1:-$(dirname "$0")/..}
cd "$top"

# A name is a module (x.c and x.h together) or one file (x.h, x.c) when
# a header is an interface below its own implementation.
# module layer peers: "peers" lets modules of one layer use each other (the
# broker's services); "alone" forbids it (ops and admin do not call each
# other). Lower numbers are lower layers. Headers of the C library
# (<...>) are not checked.
map='
common/uvmlease_errors 0 peers
common/ul_list 0 peers
common/ul_proto 1 peers
common/ul_text 1 peers
common/ul_log 1 peers
common/ul_sys 1 peers
common/ul_sys_linux.c 1 peers
common/ul_codec 2 peers
common/ul_errors 2 peers
common/ul_mpcheck 2 peers
broker/lt_hash 9 peers
broker/lease_table.h 10 peers
broker/lt_heap 11 peers
broker/lease_table.c 12 peers
broker/journal 10 peers
broker/runtime 10 peers
broker/accept_guard 10 peers
broker/uvmlease_broker 11 peers
broker/broker_internal 12 peers
broker/config 12 peers
broker/notify 12 peers
broker/kills 13 peers
broker/send 13 peers
broker/watch 14 peers
broker/procs 15 peers
broker/conn 16 peers
broker/persist 16 peers
broker/heartbeat 16 peers
broker/events 17 alone
broker/ops 18 alone
broker/admin 18 alone
broker/broker 19 alone
broker/main 20 alone
client/uvmlease.h 10 peers
client/ul_client.h 11 peers
client/conn 11 peers
client/uvmlease.c 12 peers
client/ctl_table 19 peers
client/ctl_signal 19 peers
client/ctl_output 20 peers
client/ctl_output_text 20 peers
client/ctl_output_json 20 peers
client/ctl_output_prom 20 peers
client/ctl.h 21 peers
client/ctl_parse 22 peers
client/ctl_request 22 peers
client/ctl_run 22 peers
client/ctl_watch 22 peers
client/uvmleasectl 23 peers
'
# Files that are built from several modules' headers but are not modules
# of their own (none today).

files=$(ls broker/*.c broker/*.h client/*.c client/*.h common/*.c common/*.h 2>/dev/null)
edges=$(for f in $files; do
  sed -n 's/^[[:space:]]*#[[:space:]]*include[[:space:]]*"\([^"]*\)".*/\1/p' "$f" |
    while read -r h; do
      d=$(dirname "$f")
      if [ -f "$d/$h" ]; then echo "$f ${d}/${h} $f"
      elif [ -f "common/$h" ]; then echo "$f common/${h} $f"
      elif [ -f "broker/$h" ]; then echo "$f broker/${h} $f"
      elif [ -f "client/$h" ]; then echo "$f client/${h} $f"
      fi
    done
done)
mods=$(for f in $files; do echo "$f"; done)

printf '%s\n%s\n---\n%s\n' "$map" "$mods" "$edges" | awk '
  BEGIN { part = 0; bad = 0 }
  /^---$/ { part = 2; next }
  function node(f,    m) { if (f in layer) return f; m = f; sub(/\.[ch]$/, "", m); return m }
  part < 2 && NF == 3 { layer[$1] = $2; kind[$1] = $3; next }
  part < 2 && NF == 1 { if (!(node($1) in layer)) { printf "%s: no layer (add it to tests/check_layers.sh)\n", $1; bad = 1 } next }
  part == 2 && NF == 3 {
    a = node($1); b = node($2); f = $3
    if (a == b) next
    if (!(a in layer) || !(b in layer)) next
    if (layer[b] > layer[a]) { printf "%s includes %s: layer %d above its own (%d)\n", f, b, layer[b], layer[a]; bad = 1 }
    else if (layer[b] == layer[a] && kind[a] == "alone") { printf "%s includes %s: same layer (%d), and these do not call each other\n", f, b, layer[a]; bad = 1 }
    if (!((a, b) in dep)) { dep[a, b] = 1; out[a] = out[a] " " b }
    next
  }
  function visit(m,    n, i, list) {
    if (state[m] == 2) return
    if (state[m] == 1) { printf "include cycle through %s\n", m; bad = 1; return }
    state[m] = 1
    n = split(out[m], list, " ")
    for (i = 1; i <= n; i++) visit(list[i])
    state[m] = 2
  }
  END {
    for (m in layer) visit(m)
    if (bad) exit 1
    print "layers: ok"
  }'
