#!/bin/sh
# Assemble vendor/ for an offline build from Debian's Go source packages
# (golang-github-vmihailenco-msgpack.v5-dev and its tagparser dependency),
# so that `go build -mod=vendor` needs no module proxy. vendor/ is never
# committed. Usage: client/go/mkvendor.sh [GOCODE_DIR]
set -eu
cd "$(dirname "$0")"
src="${1:-/usr/share/gocode/src}"
mp="$src/github.com/vmihailenco/msgpack/v5"
tp="$src/github.com/vmihailenco/tagparser/v2"
for d in "$mp" "$tp"; do
  if [ ! -d "$d" ]; then
    echo "mkvendor: $d missing (apt-get install golang-github-vmihailenco-msgpack.v5-dev)" >&2
    exit 1
  fi
done
rm -rf vendor.tmp
mkdir -p vendor.tmp/github.com/vmihailenco/msgpack vendor.tmp/github.com/vmihailenco/tagparser
cp -r "$mp" vendor.tmp/github.com/vmihailenco/msgpack/v5
cp -r "$tp" vendor.tmp/github.com/vmihailenco/tagparser/v2
# Tests and examples of the dependencies are not needed to build this module.
find vendor.tmp -name '*_test.go' -delete
cat > vendor.tmp/modules.txt <<'MODS'
# github.com/vmihailenco/msgpack/v5 v5.3.5
## explicit; go 1.11
github.com/vmihailenco/msgpack/v5
github.com/vmihailenco/msgpack/v5/msgpcode
# github.com/vmihailenco/tagparser/v2 v2.0.0
## explicit; go 1.15
github.com/vmihailenco/tagparser/v2
github.com/vmihailenco/tagparser/v2/internal
github.com/vmihailenco/tagparser/v2/internal/parser
MODS
rm -rf vendor
mv vendor.tmp vendor
