#!/bin/sh
# Install the build into a temporary prefix, then build and run a program
# against the installed libuvmlease: through pkg-config (shared library,
# static archive, and as C++) and through find_package(uvmlease). When the
# build has a uvmleased, the programs take a real lease from it.
#   test_install.sh BUILD_DIR SOURCE_DIR C_COMPILER [EXTRA_FLAGS]
# EXTRA_FLAGS go to every compile and link (a sanitized build's library
# needs its consumers built with the same runtime).
set -eu
build=$1
src=$2
cc=$3
flags=${4:-}
case $(basename "$cc") in
  clang*) cxx=clang++ ;;
  gcc*) cxx=g++ ;;
  *) cxx=c++ ;;
esac
consumer=$src/tests/install/consumer
tmp=$(mktemp -d /tmp/ul-install-XXXXXX)
broker_pid=
cleanup() {
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
# The binary must load libuvmlease from the prefix, not from the build tree
# or the system. $2: a library path for the loader, if the binary needs one.
uses_installed() {
  LD_LIBRARY_PATH=${2:-} ldd "$1" | grep -q "$libdir/libuvmlease.so" ||
    fail "$1 does not use $libdir/libuvmlease.so"
}

step "install into $tmp/prefix"
prefix=$tmp/prefix
cmake --install "$build" --prefix "$prefix" >"$tmp/install.log" 2>&1 ||
  { cat "$tmp/install.log"; fail "cmake --install"; }
pc=$(find "$prefix" -name uvmlease.pc | head -n 1)
[ -n "$pc" ] || fail "no uvmlease.pc installed"
libdir=$(cd "$(dirname "$pc")/.." && pwd -P)
for f in include/uvmlease.h include/uvmlease_errors.h; do
  [ -f "$prefix/$f" ] || fail "$f not installed"
done
for f in libuvmlease.a libuvmlease.so; do
  [ -e "$libdir/$f" ] || fail "$f not installed in $libdir"
done
[ -n "$(find "$prefix" -name uvmleaseConfig.cmake)" ] || fail "no uvmleaseConfig.cmake"
export PKG_CONFIG_PATH="$libdir/pkgconfig"

endpoint=
if [ -x "$build/uvmleased" ]; then
  step "start uvmleased"
  "$build/uvmleased" --runtime-dir "$tmp/run" 2>"$tmp/broker.log" &
  broker_pid=$!
  endpoint=ipc://$tmp/run/broker.sock
  # Readiness: poll with the CLI, bounded (about 5 s).
  i=0
  until "$build/client/uvmleasectl" --endpoint "$endpoint" ping >/dev/null 2>&1; do
    i=$((i + 1))
    [ $i -lt 100 ] || { cat "$tmp/broker.log"; fail "the broker did not answer"; }
    sleep 0.05
  done
else
  step "no uvmleased in the build: checking without a broker"
fi

step "pkg-config: $(pkg-config --cflags --libs uvmlease)"
# shellcheck disable=SC2046
"$cc" $flags -Wall -Wextra -Werror -o "$tmp/c_pc" "$consumer/consumer.c" \
  $(pkg-config --cflags --libs uvmlease) || fail "build with pkg-config"
uses_installed "$tmp/c_pc" "$libdir"
LD_LIBRARY_PATH=$libdir "$tmp/c_pc" $endpoint || fail "run the pkg-config build"

step "pkg-config, static archive"
# libzmq's own static dependencies are not all installable on every
# distribution, so the archive is linked with the shared libzmq/msgpack.
# shellcheck disable=SC2046
"$cc" $flags -Wall -Werror -o "$tmp/c_static" "$consumer/consumer.c" \
  $(pkg-config --cflags uvmlease) "$libdir/libuvmlease.a" \
  $(pkg-config --libs libzmq msgpack) -pthread || fail "build with libuvmlease.a"
if readelf -d "$tmp/c_static" | grep -q 'libuvmlease'; then
  fail "the static build still needs libuvmlease.so"
fi
"$tmp/c_static" $endpoint || fail "run the static build"

if command -v "$cxx" >/dev/null 2>&1; then
  step "pkg-config, as C++ ($cxx)"
  # shellcheck disable=SC2046
  "$cxx" $flags -x c++ -Wall -Werror -o "$tmp/cxx_pc" "$consumer/consumer.c" \
    $(pkg-config --cflags --libs uvmlease) || fail "build as C++"
  LD_LIBRARY_PATH=$libdir "$tmp/cxx_pc" $endpoint || fail "run the C++ build"
fi

if [ -n "$endpoint" ]; then
  step "the shim example, against the broker"
  UVMLEASE_ENDPOINT=$endpoint "$build/client/uvmlease_shim_example" 0123abcd@vm ctr-1 \
    >"$tmp/example.log" 2>&1 || { cat "$tmp/example.log"; fail "the shim example"; }
fi

step "find_package(uvmlease)"
cmake -S "$consumer" -B "$tmp/fp" -DCMAKE_PREFIX_PATH="$prefix" -DCMAKE_C_COMPILER="$cc" \
  -DCMAKE_C_FLAGS="$flags" >"$tmp/fp.log" 2>&1 || { cat "$tmp/fp.log"; fail "configure with find_package"; }
cmake --build "$tmp/fp" >>"$tmp/fp.log" 2>&1 || { cat "$tmp/fp.log"; fail "build with find_package"; }
uses_installed "$tmp/fp/consumer"
"$tmp/fp/consumer" $endpoint || fail "run the find_package build"

echo "ok: installed library builds and runs via pkg-config and find_package"
