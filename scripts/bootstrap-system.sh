#!/usr/bin/env bash
# Installs the Debian packages listed in scripts/apt-packages.txt, once, when run as root with
# apt available. Anywhere else it says why it did nothing; tests that need them skip with a reason.
# `$ARCH` in the list stands for `dpkg --print-architecture`. If the whole list cannot be
# installed at once, each package is tried alone and the missing ones are named.
# Then scripts/setup-bcc.sh makes bcc usable from the virtualenv (idempotent, every run).
set -u
here=$(cd "$(dirname "$0")" && pwd)
stamp="$here/../.venv/.stamp-system"
list="$here/apt-packages.txt"
setup_bcc() { bash "$here/setup-bcc.sh"; }
if [ -f "$stamp" ] && [ "$stamp" -nt "$list" ]; then setup_bcc; exit 0; fi
if [ "$(id -u)" != 0 ]; then echo "bootstrap-system: not root, skipping Debian packages"; exit 0; fi
if ! command -v apt-get >/dev/null; then echo "bootstrap-system: no apt-get, skipping"; exit 0; fi
arch=$(dpkg --print-architecture 2>/dev/null || echo amd64)
pkgs=$(grep -v '^\s*#' "$list" | sed "s/\$ARCH/$arch/g" | tr '\n' ' ')
echo "bootstrap-system: apt-get install $pkgs"
export DEBIAN_FRONTEND=noninteractive
install() { apt-get install -y -qq --no-install-recommends "$@" >/dev/null 2>&1; }
if apt-get update -qq >/dev/null 2>&1 && install $pkgs; then
  mkdir -p "$(dirname "$stamp")" && touch "$stamp"
else
  missing=""
  for p in $pkgs; do install "$p" || missing="$missing $p"; done
  echo "bootstrap-system: could not install:${missing:- (apt-get update failed)}; the tests that need them will skip with a reason" >&2
fi
setup_bcc
exit 0
