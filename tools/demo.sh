#!/usr/bin/env bash
# The main job, end to end, on the embedded engine (chdb), a local repository
# and a SQLite catalog — all under ./demo/. Safe to run again: it starts over.
#
#   bash tools/demo.sh
#
# Sets up .venv if needed, creates demo tables with data, backs them up, runs
# an ALTER DELETE (which renames every part), backs up again (and shows how
# little that stored), drops a table, restores it and checks the rows.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
DEMO=$ROOT/demo
PY=$ROOT/.venv/bin/python

if [ ! -x "$PY" ] || ! "$PY" -c "import casbackup, chdb" 2>/dev/null; then
    echo "== setting up .venv (first run only)"
    python3 -m venv .venv
    "$PY" -m pip install --quiet --upgrade pip
    "$PY" -m pip install --quiet -e ".[chdb]"
fi

rm -rf "$DEMO"
mkdir -p "$DEMO"
export CASBACKUP_REPO=$DEMO/repo
export CASBACKUP_CLICKHOUSE=chdb://$DEMO/clickhouse
export CASBACKUP_CONFIG=$DEMO/casbackup.toml
: > "$CASBACKUP_CONFIG"   # all defaults; the two variables above say where

casbackup() { echo "\$ casbackup $*" >&2; "$PY" -m casbackup "$@"; }
# SQL on the embedded engine, in a process of its own (chdb allows one per data directory).
sql() { "$PY" tools/chdb_sql.py "$DEMO/clickhouse" "$1"; }

echo "== demo data: shop.events (3 months, 3M rows), shop.users, a view"
sql "CREATE DATABASE shop"
sql "CREATE TABLE shop.events (ts DateTime, user_id UInt32, event LowCardinality(String), url String, amount Decimal(12, 2))
     ENGINE = MergeTree PARTITION BY toYYYYMM(ts) ORDER BY (user_id, ts) SETTINGS min_bytes_for_wide_part = 0"
sql "INSERT INTO shop.events SELECT toDateTime('2026-08-01 00:00:00') + number * 2.6, rand() % 50000,
     ['view', 'click', 'cart', 'buy'][number % 4 + 1], concat('https://shop.example/p/', toString(rand() % 20000)),
     (rand() % 100000) / 100 FROM numbers(3000000)"
sql "CREATE TABLE shop.users (user_id UInt32, name String, country FixedString(2)) ENGINE = MergeTree ORDER BY user_id"
sql "INSERT INTO shop.users SELECT number, concat('user', toString(number)), ['DE', 'FR', 'US', 'JP'][number % 4 + 1] FROM numbers(50000)"
sql "CREATE VIEW shop.revenue AS SELECT toStartOfMonth(ts) AS month, sum(amount) AS revenue FROM shop.events GROUP BY month"

echo "== 1. create a repository and take a first backup"
casbackup init
casbackup tables
casbackup create night-1

echo "== 2. retention trims August's first week: ALTER DELETE rewrites August's parts and"
echo "==    renames every other part (same files, new names); back up again"
sql "ALTER TABLE shop.events DELETE WHERE ts < '2026-08-08 00:00:00' SETTINGS mutations_sync = 2"
casbackup create night-2
casbackup list
"$PY" - "$DEMO" <<'PYEOF'
import json, subprocess, sys
def parts(name):
    out = subprocess.run([sys.executable, "-m", "casbackup", "show", name, "--json"], capture_output=True, check=True).stdout
    return {(t["database"], t["name"], p["name"]): p["bytes"] for t in json.loads(out)["tables"] for p in t["parts"]}
one, two = parts("night-1"), parts("night-2")
renamed = [k for k in two if k not in one]
listed = json.loads(subprocess.run([sys.executable, "-m", "casbackup", "list", "--json"], capture_output=True, check=True).stdout)
print(f"parts with new names: {len(renamed)} of {len(two)}; a part-name incremental would upload "
      f"{sum(two[k] for k in renamed) / 1e6:.1f} MB, casbackup stored {listed[-1]['new_bytes'] / 1e6:.1f} MB")
PYEOF

echo "== 3. disaster: shop.events is dropped; restore it from night-2"
rows_before=$(sql "SELECT count() FROM shop.events")
sql "DROP TABLE shop.events SYNC"
casbackup restore night-2 --tables 'shop.events'
rows_after=$(sql "SELECT count() FROM shop.events")
echo "rows before the drop: $rows_before; rows after the restore: $rows_after"
echo "revenue view still answers: $(sql 'SELECT count() FROM shop.revenue') months"
[ "$rows_before" = "$rows_after" ] || { echo "demo FAILED: row counts differ" >&2; exit 1; }
echo "== demo OK (repository, catalog and engine data are under ./demo/)"
