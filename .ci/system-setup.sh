#!/usr/bin/env bash
# .ci/system-setup.sh: the system-level part of CI, run as root before the tests.
#
# Installs the system packages the test suite needs (python3-venv for the project's venv,
# and the Debian packages of the local Slurm cluster), then starts that cluster with
# `slurm/local-cluster up` so the tests marked `slurm` can run. It exports nothing (CI sets
# P2P_REQUIRE_SLURM=1 itself). Safe to run twice: packages already there are not
# reinstalled, and `up` on a running cluster is a quick no-op.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

if [[ $(id -u) -ne 0 ]]; then
    echo "system-setup: must run as root (it installs packages and starts daemons)" >&2
    exit 1
fi

# One apt-get update + install for everything missing: the cluster's packages plus these.
# gcc + libc6-dev: p2p.fused compiles its CPU kernel on first use (tests/test_fused.py needs it).
"$root/slurm/local-cluster" install python3-venv gcc libc6-dev
"$root/slurm/local-cluster" up
