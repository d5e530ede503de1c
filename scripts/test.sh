#!/usr/bin/env bash
# The whole test suite on a fresh machine: system packages, Python packages, lint, tests.
set -euo pipefail
cd "$(dirname "$0")/.."

export DEBIAN_FRONTEND=noninteractive
SUDO=""
[ "$(id -u)" = 0 ] || SUDO="sudo"
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends \
    docker-registry skopeo podman docker.io runc busybox-static python3-venv >/dev/null

# Python packages go into a virtual environment inside the checkout (.venv, ignored by git),
# so running the tests never changes the user's own Python installation.
[ -x .venv/bin/python ] || python3 -m venv .venv
export PATH="$PWD/.venv/bin:$PATH"
python -m pip install -q --disable-pip-version-check -e '.[test,aws,gcp,azure,dask]' \
    -e ./plugins/occystrap-aws -e ./plugins/occystrap-gcp -e ./plugins/occystrap-azure

ruff check .
ruff format --check .
mypy occystrap plugins/occystrap-aws/occystrap_aws plugins/occystrap-gcp/occystrap_gcp plugins/occystrap-azure/occystrap_azure

status=0
python -m pytest -q -p no:cacheprovider "$@" || status=$?
if [ "$status" -eq 5 ]; then
    echo "pytest collected no tests: that is a failure" >&2
    exit 1
fi
exit "$status"
