#!/usr/bin/env bash
# Prepare a fresh Debian 12 machine for dbfence's demo, tests and benchmarks (run as root).
# Installs the real servers the lab runs, without letting the packages start system services,
# then a virtualenv in .venv with dbfence and its test extras. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."

packages=(mariadb-server mariadb-client mariadb-backup etcd-server etcd-client sysbench haproxy iproute2 iptables nftables
          dnsutils openssl python3-venv prometheus)
missing=()
for pkg in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "setup: these Debian packages are missing and installing them needs root: ${missing[*]}" >&2
    exit 1
  fi
  # The lab runs its own servers on loopback ports: forbid the packages' system services from
  # starting (exit 101 = "action forbidden" for invoke-rc.d), and put the old policy back after.
  policy=/usr/sbin/policy-rc.d
  saved=""
  if [ -e "$policy" ]; then saved=$(mktemp); cp -p "$policy" "$saved"; fi
  restore_policy() { if [ -n "$saved" ]; then mv "$saved" "$policy"; else rm -f "$policy"; fi; }
  trap restore_policy EXIT
  printf '#!/bin/sh\nexit 101\n' > "$policy"
  chmod +x "$policy"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${missing[@]}" >/dev/null
  restore_policy
  trap - EXIT
fi

python=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$python" -m venv .venv
fi
stamp=.venv/.dbfence-installed
if [ ! -f "$stamp" ] || [ setup.cfg -nt "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -e '.[test]'
  touch "$stamp"
fi
echo "setup: ready (.venv/bin/dbfence $(.venv/bin/dbfence --version | awk '{print $NF}'))"
