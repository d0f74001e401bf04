#!/usr/bin/env bash
# Install everything the tests need on a fresh Debian machine, then run them.
#
#   bash tools/test.sh [pytest arguments]
#
# Installs (as root, or with sudo): the Debian ClickHouse server (18.16, the
# tests start their own instance on loopback ports) and client, and PostgreSQL
# (its binaries: a test starts a server of its own for a PostgreSQL catalog).
# Then a .venv with casbackup and its test extras (chdb, hypothesis, moto,
# psycopg, ruff, mypy),
# lint, type check and the whole test suite. Engines that cannot be found are
# a failure here, not a skip (CASBACKUP_REQUIRE_ENGINES=1).
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
packages=()
command -v clickhouse-server >/dev/null || packages+=(clickhouse-server)
command -v clickhouse-client >/dev/null || packages+=(clickhouse-client)
command -v chattr >/dev/null || packages+=(e2fsprogs)
# A PostgreSQL catalog is tested against a real server (initdb/pg_ctl of its own).
compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null || packages+=(postgresql)
if [ ${#packages[@]} -gt 0 ]; then
    echo "== apt-get install ${packages[*]}"
    $SUDO apt-get update -qq
    # The package's own service start fails without an init system; harmless.
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${packages[@]}" >/dev/null || \
        command -v clickhouse-server >/dev/null
fi

if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
fi
echo "== pip install -e .[test]"
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e ".[test]"

echo "== ruff, mypy"
.venv/bin/ruff check casbackup tests tools schema
.venv/bin/ruff format --check casbackup tests tools schema
.venv/bin/mypy

echo "== pytest"
CASBACKUP_REQUIRE_ENGINES=1 exec .venv/bin/python -m pytest -q "$@"
