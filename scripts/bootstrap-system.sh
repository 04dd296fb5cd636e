#!/usr/bin/env bash
# Installs the Debian packages listed in scripts/apt-packages.txt, once, when run as root with
# apt available. Anywhere else it says why it did nothing; tests that need them skip with a reason.
set -u
here=$(cd "$(dirname "$0")" && pwd)
stamp="$here/../.venv/.stamp-system"
list="$here/apt-packages.txt"
[ -f "$stamp" ] && [ "$stamp" -nt "$list" ] && exit 0
if [ "$(id -u)" != 0 ]; then echo "bootstrap-system: not root, skipping Debian packages"; exit 0; fi
if ! command -v apt-get >/dev/null; then echo "bootstrap-system: no apt-get, skipping"; exit 0; fi
pkgs=$(grep -v '^\s*#' "$list" | tr '\n' ' ')
echo "bootstrap-system: apt-get install $pkgs"
export DEBIAN_FRONTEND=noninteractive
if apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq --no-install-recommends $pkgs >/dev/null 2>&1; then
  mkdir -p "$(dirname "$stamp")" && touch "$stamp"
else
  echo "bootstrap-system: apt-get failed; eBPF tests will skip with a reason" >&2
fi
exit 0
