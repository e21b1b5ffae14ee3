#!/usr/bin/env bash
# Installs the system packages the service needs beyond Python, only if they are missing.
# Idempotent: a second run changes nothing and does not touch the network.
#   bubblewrap (bwrap): the run_python sandbox (app/tools/sandbox.py): user, PID, network and
#   mount namespaces for sandboxed code. Without it the tool is not registered.
set -euo pipefail

declare -A wanted=([bwrap]=bubblewrap)
missing=()
for command in "${!wanted[@]}"; do
  command -v "$command" >/dev/null 2>&1 || missing+=("${wanted[$command]}")
done

if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi

if ! command -v apt-get >/dev/null 2>&1; then
  echo "install-system-packages: apt-get not found; install these yourself: ${missing[*]}" >&2
  exit 1
fi

sudo=()
if [ "$(id -u)" -ne 0 ]; then
  if ! command -v sudo >/dev/null 2>&1; then
    echo "install-system-packages: need root (or sudo) to install: ${missing[*]}" >&2
    exit 1
  fi
  sudo=(sudo)
fi

echo "install-system-packages: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
"${sudo[@]}" apt-get update -qq
"${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}"
