#!/usr/bin/env bash
# Install what uvmlease needs to build and test, from Debian's packages.
# Quick when everything is already present. Usage: deploy/deps.sh [--test]
set -euo pipefail

pkgs=(ca-certificates build-essential cmake pkg-config
      libzmq3-dev libmsgpack-dev libjansson-dev libsystemd-dev libinih-dev scdoc)
if [ "${1:-}" = "--test" ]; then
  # Criterion for the tests, clang + compiler-rt for the sanitizer build and
  # libFuzzer, promtool to check the Prometheus output, util-linux for
  # setpriv (tests run commands as nobody); Go and Debian's msgpack for Go
  # for the Go client (client/go, built offline from these packages);
  # systemd for systemd-analyze and systemd-sysusers, man-db to render the
  # man pages, dpkg-dev for the .deb's dependencies (dpkg-shlibdeps), file
  # for CPack, bash for the completion test.
  pkgs+=(libcriterion-dev clang libclang-rt-14-dev prometheus util-linux procps
         golang-go golang-github-vmihailenco-msgpack.v5-dev
         systemd man-db dpkg-dev file bash)
fi

missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0

if [ "$(id -u)" -ne 0 ]; then
  echo "deps: missing packages: ${missing[*]} (run as root to install them)" >&2
  exit 1
fi
echo "deps: installing ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
