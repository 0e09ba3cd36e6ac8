#!/usr/bin/env bash
# System packages the tests use for real components: headless Chromium (report test) and a
# single-node SLURM cluster (integration test). Installs only what is missing; needs root.
set -euo pipefail
packages=()
command -v chromium >/dev/null || packages+=(chromium)
command -v slurmctld >/dev/null || packages+=(slurmctld slurmd slurm-client munge)
if [ ${#packages[@]} -eq 0 ]; then exit 0; fi
if [ "$(id -u)" -ne 0 ]; then
    echo "install_system_deps: not root, cannot install ${packages[*]}; the tests needing them will say so" >&2
    exit 0
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${packages[@]}" >/dev/null
