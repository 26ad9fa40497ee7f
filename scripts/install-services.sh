#!/usr/bin/env bash
# Install everything the service-backed backend tests (tests/backends) need, from nothing.
#
# Idempotent and fast when already installed: dpkg is asked first, apt-get runs only for what is
# missing, and `apt-get update` only when the package lists are absent or an install fails.
# Installing starts nothing: the tests start dockerd, sshd, munged and slurm themselves, under a
# temporary directory, on 127.0.0.1 or inside network namespaces they create.
#
# SLURM accounting: the backend reads finished jobs from `squeue --states=all` (the controller
# keeps them for MinJobAge seconds) and falls back to one `sacct` call for jobs squeue forgot.
# slurmdbd + MariaDB let the tests exercise that path (a private mariadbd the tests start).
set -euo pipefail

packages=(
    docker.io        # dockerd + containerd + runc; the engine the docker tests start
    busybox-static   # a 2 MB static shell for the tiny test image
    bash-static      # so job scripts (bash) also run in that tiny image
    debootstrap      # the optional Debian+python image for run:/script: rules in containers
    openssh-server   # sshd for the ssh backend tests
    iproute2         # ip netns / bridges / veth for several ssh "hosts"
    util-linux       # unshare (own hostname, private mount namespace)
    slurm-wlm        # slurmctld + slurmd + client commands (sbatch, squeue, scancel, scontrol)
    munge            # SLURM's authentication daemon
    slurmdbd         # SLURM accounting daemon, so sacct works in the accounting tests
    mariadb-server   # the database behind slurmdbd (the tests start a private mariadbd)
    procps           # ps/pkill used by test helpers to inspect processes
)

if [ "$(id -u)" != 0 ]; then
    echo "install-services: must run as root (apt-get)" >&2
    exit 1
fi

missing=()
for p in "${packages[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
        missing+=("$p")
    fi
done

if [ "${#missing[@]}" -eq 0 ]; then
    echo "install-services: all present"
    exit 0
fi

export DEBIAN_FRONTEND=noninteractive
# The services must not start themselves at install time (the tests own them): policy-rc.d 101
# tells invoke-rc.d "not allowed". Only written if nobody else has one; removed afterwards.
policy=/usr/sbin/policy-rc.d
own_policy=0
if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' >"$policy"
    chmod 755 "$policy"
    own_policy=1
fi
cleanup() { if [ "$own_policy" = 1 ]; then rm -f "$policy"; fi; }
trap cleanup EXIT

apt_install() {
    apt-get install -y -q --no-install-recommends "$@"
}

echo "install-services: installing ${missing[*]}"
if ! ls /var/lib/apt/lists/*_Packages >/dev/null 2>&1; then
    apt-get update -q
fi
if ! apt_install "${missing[@]}"; then
    # Stale package lists are the usual cause: refresh once and retry.
    apt-get update -q
    apt_install "${missing[@]}"
fi
echo "install-services: done"
