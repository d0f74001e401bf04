#!/usr/bin/env python3
"""Run one SQL statement on a chdb data directory and print the result (TSV).

    python tools/chdb_sql.py DATA_DIR "SELECT 1"
    python tools/chdb_sql.py DATA_DIR "BACKUP TABLE db.t TO File('/dir/b1')" --config-file CFG.xml

For the demo and benchmarks: chdb locks a data directory to one process, so
each statement runs in a short process of its own, like a client would.
--config-file passes a server config (root element <clickhouse>) to the
engine, e.g. one with <backups><allowed_path> for BACKUP ... TO File(...).
"""

import argparse
import sys

from chdb import session


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("data_dir")
    parser.add_argument("sql")
    parser.add_argument("--config-file", help="server config file for the engine")
    args = parser.parse_args()
    path = args.data_dir
    if args.config_file:
        path = f"{path}?config-file={args.config_file}"
    s = session.Session(path)
    try:
        out = s.query(args.sql, "TSV")
        text = out.bytes().decode() if hasattr(out, "bytes") else str(out)
        sys.stdout.write(text)
    finally:
        s.close()


if __name__ == "__main__":
    main()
