#!/usr/bin/env python3
"""Run one SQL statement on a chdb data directory and print the result (TSV).

    python tools/chdb_sql.py DATA_DIR "SELECT 1"

For the demo and benchmarks: chdb locks a data directory to one process, so
each statement runs in a short process of its own, like a client would.
"""

import sys

from chdb import session


def main() -> None:
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    s = session.Session(sys.argv[1])
    try:
        out = s.query(sys.argv[2], "TSV")
        text = out.bytes().decode() if hasattr(out, "bytes") else str(out)
        sys.stdout.write(text)
    finally:
        s.close()


if __name__ == "__main__":
    main()
