#!/bin/sh
# libuvmlease.so exports exactly the functions uvmlease.h declares with
# UVMLEASE_API (nothing of libuvmlease's internals or of the common code),
# and carries a SONAME.
#   check_exports.sh LIBUVMLEASE_SO UVMLEASE_H
set -eu
so=$1
header=$2
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# Defined dynamic symbols, without version suffixes; "A" is the version node.
nm -D --defined-only "$so" | awk '$2 != "A" { sub(/@.*/, "", $3); print $3 }' | sort -u \
  >"$tmp/exported"
# Each declaration starts a line with UVMLEASE_API and names the function on it.
grep '^UVMLEASE_API' "$header" | grep -o 'uvmlease_[A-Za-z0-9_]*(' | tr -d '(' | sort -u \
  >"$tmp/declared"

fail=0
if grep -v '^uvmlease_' "$tmp/exported" >"$tmp/foreign"; then
  echo "exported symbols without the uvmlease_ prefix:"
  cat "$tmp/foreign"
  fail=1
fi
if ! cmp -s "$tmp/exported" "$tmp/declared"; then
  echo "exported (<) and declared in uvmlease.h (>) differ:"
  diff "$tmp/exported" "$tmp/declared" || true
  fail=1
fi
if [ "$(wc -l <"$tmp/declared")" -lt 10 ]; then
  echo "could not read the declarations of $header"
  fail=1
fi
soname=$(objdump -p "$so" | awk '$1 == "SONAME" { print $2 }')
case $soname in
  libuvmlease.so.[0-9]*) ;;
  *) echo "bad SONAME: '$soname'"; fail=1 ;;
esac
[ $fail -eq 0 ] && echo "ok: $(wc -l <"$tmp/exported") symbols, all uvmlease_*, SONAME $soname"
exit $fail
