#!/bin/sh
# The Debian package: built with CPack from the build tree, named
# uvmlease_<version>_<arch>.deb, its control data (Depends: computed from the
# shared libraries, conffiles, maintainer scripts) and file list checked
# with dpkg-deb, and its contents unpacked: the unit names /usr/sbin, the
# programs run and find every library they need on this host.
#   test_package.sh BUILD_DIR SOURCE_DIR
set -eu
build=$1
src=$2
tmp=$(mktemp -d /tmp/ul-deb-XXXXXX)
trap 'rm -rf "$tmp"' EXIT
fail() {
  echo "FAIL: $*"
  exit 1
}
version=$(sed -n 's/^project(uvmlease VERSION \([0-9.]*\).*/\1/p' "$src/CMakeLists.txt")
arch=$(dpkg --print-architecture)
deb=$tmp/out/uvmlease_${version}_${arch}.deb

echo "== cpack"
(cd "$tmp" && cpack -G DEB --config "$build/CPackConfig.cmake" -B "$tmp/out") >"$tmp/cpack.log" 2>&1 ||
  { cat "$tmp/cpack.log"; fail "cpack"; }
[ -f "$deb" ] || { ls "$tmp/out"; fail "no $(basename "$deb")"; }

echo "== control"
field() { dpkg-deb -f "$deb" "$1"; }
[ "$(field Package)" = uvmlease ] || fail "Package: $(field Package)"
[ "$(field Version)" = "$version" ] || fail "Version: $(field Version)"
[ "$(field Architecture)" = "$arch" ] || fail "Architecture: $(field Architecture)"
[ -n "$(field Maintainer)" ] || fail "no Maintainer:"
[ -n "$(field Description)" ] || fail "no Description:"
deps=$(field Depends)
echo "Depends: $deps"
# The libraries the binaries link, each with the package that has it.
for pkg in libc6 libzmq5 libmsgpackc2 libinih1 libjansson4 libsystemd0; do
  echo "$deps" | grep -Eq "(^|, )$pkg( |,|$)" || fail "Depends: lacks $pkg"
done
dpkg-deb -e "$deb" "$tmp/control"
grep -qx /etc/uvmlease/uvmleased.conf "$tmp/control/conffiles" || fail "the config is no conffile"
for s in postinst prerm postrm; do
  [ -x "$tmp/control/$s" ] || fail "no $s"
  sh -n "$tmp/control/$s" || fail "$s does not parse"
done
grep -q 'systemd-sysusers uvmlease.conf' "$tmp/control/postinst" || fail "postinst creates no groups"
grep -q ldconfig "$tmp/control/triggers" || fail "no ldconfig trigger"

echo "== files"
dpkg-deb -c "$deb" | awk '{print $6}' | sed 's|^\./|/|' | sort >"$tmp/files"
for f in /usr/sbin/uvmleased /usr/bin/uvmleasectl /usr/lib/systemd/system/uvmleased.service \
  /usr/lib/sysusers.d/uvmlease.conf /etc/uvmlease/uvmleased.conf \
  /usr/share/doc/uvmlease/uvmleased.conf.example /usr/share/bash-completion/completions/uvmleasectl \
  /usr/share/man/man8/uvmleased.8 /usr/share/man/man5/uvmleased.conf.5 \
  /usr/share/man/man1/uvmleasectl.1 /usr/share/man/man3/libuvmlease.3 \
  /usr/include/uvmlease.h /usr/include/uvmlease_errors.h /usr/lib/pkgconfig/uvmlease.pc; do
  grep -qx "$f" "$tmp/files" || fail "$f not in the package"
done
grep -q '^/usr/lib/.*libuvmlease\.so\.0$' "$tmp/files" || fail "no libuvmlease.so.0"
# Nothing from the build machine's paths, nothing under /usr/local.
grep -E "^/(tmp|work|root|home)/|^/usr/local/" "$tmp/files" && fail "stray paths in the package"
dpkg-deb -c "$deb" | awk '{print $2}' | grep -qv '^root/root$' && fail "files not owned by root"

echo "== contents"
dpkg-deb -x "$deb" "$tmp/root"
r=$tmp/root
grep -qx "ExecStart=/usr/sbin/uvmleased" "$r/usr/lib/systemd/system/uvmleased.service" ||
  fail "the packaged unit does not start /usr/sbin/uvmleased"
cmp -s "$r/etc/uvmlease/uvmleased.conf" "$src/deploy/uvmleased.conf.example" ||
  fail "/etc/uvmlease/uvmleased.conf is not the example"
for bin in "$r/usr/sbin/uvmleased" "$r/usr/bin/uvmleasectl"; do
  LD_LIBRARY_PATH=$r/usr/lib ldd "$bin" | grep 'not found' && fail "$bin: libraries not found"
  readelf -S "$bin" | grep -q '\.debug_info' && fail "$bin is not stripped"
done
"$r/usr/sbin/uvmleased" --version | grep -q "uvmleased $version" || fail "uvmleased --version"
"$r/usr/bin/uvmleasectl" --help >/dev/null 2>&1 || fail "uvmleasectl --help"
LC_ALL=C.UTF-8 MANWIDTH=80 man -l "$r/usr/share/man/man8/uvmleased.8" | grep -q "uvmleased - " ||
  fail "the packaged man page does not render"
echo "ok: $(basename "$deb")"
