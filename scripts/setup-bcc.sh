#!/usr/bin/env bash
# Makes Debian's python3-bpfcc usable from the project's virtualenv, for the eBPF cloner's bcc
# loader (issue 5). Idempotent; called by scripts/bootstrap-system.sh. Two steps:
#
# 1. `pip install bcc` is an unrelated package, and adding all of /usr/lib/python3/dist-packages
#    to the venv would shadow newer packages. So only the `bcc` directory is made visible: a
#    symlink in .venv/bcc-shim, and a .pth file in the venv's site-packages naming that directory.
# 2. bcc compiles with kernel headers even for TC programs. Without headers for the running
#    kernel (/lib/modules/$(uname -r)/build), Debian's linux-headers-amd64 serves: TC programs use
#    only the stable uapi. bcc wants one tree, Debian splits it into -common and -amd64, and
#    neither alone works: merge them as a symlink tree in .venv/share/bcc-kernel-source, which
#    gossip/transport/ebpf/_bcc_loader.py passes as BCC_KERNEL_SOURCE.
set -u
here=$(cd "$(dirname "$0")" && pwd)
venv=${VENV:-"$here/../.venv"}
[ -d "$venv" ] || { echo "setup-bcc: no virtualenv at $venv, skipping"; exit 0; }
venv=$(cd "$venv" && pwd)

bcc_dir=/usr/lib/python3/dist-packages/bcc
if [ -f "$bcc_dir/__init__.py" ]; then
  site=$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
  mkdir -p "$venv/bcc-shim"
  ln -sfn "$bcc_dir" "$venv/bcc-shim/bcc"
  echo "$venv/bcc-shim" > "$site/gossip-bcc-shim.pth"
else
  echo "setup-bcc: $bcc_dir missing (apt-get install python3-bpfcc); the bcc loader will skip"
fi

if [ -d "/lib/modules/$(uname -r)/build/include" ]; then
  exit 0  # bcc finds the running kernel's own headers
fi
amd64=$(ls -d /usr/src/linux-headers-*-amd64 2>/dev/null | sort -V | tail -n1)
[ -n "$amd64" ] || amd64=$(ls -d /usr/src/linux-headers-*-arm64 2>/dev/null | sort -V | tail -n1)
if [ -z "$amd64" ]; then
  echo "setup-bcc: no linux-headers-* in /usr/src (apt-get install linux-headers-amd64)"
  exit 0
fi
common=${amd64%-*}-common
[ -d "$common" ] || { echo "setup-bcc: $common missing"; exit 0; }
tree="$venv/share/bcc-kernel-source"
stamp="$tree/.from"
if [ "$(cat "$stamp" 2>/dev/null)" != "$common $amd64" ]; then
  rm -rf "$tree" && mkdir -p "$tree"
  cp -rs "$common/." "$tree/" && cp -rsf "$amd64/." "$tree/" && echo "$common $amd64" > "$stamp"
  echo "setup-bcc: kernel header tree for bcc in $tree"
fi
exit 0
