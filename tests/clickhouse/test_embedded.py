"""The embedded client loads chdb without pyarrow, and leaves pyarrow importable."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.chdb


def run_probe(code: str, data_dir: Path) -> list[str]:
    """Run ``code`` in a fresh interpreter (the test process may hold pyarrow already)."""
    return subprocess.run(
        [sys.executable, "-c", code, str(data_dir)], capture_output=True, text=True, check=True
    ).stdout.split()


PROBE = """
import sys
from casbackup.clickhouse.embedded import EmbeddedClient
client = EmbeddedClient(sys.argv[1])
rows = client.query("SELECT 40 + 2 AS answer")
client.close()
loaded = sorted(name for name in ("pyarrow", "numpy") if name in sys.modules)
import pyarrow
print(rows[0]["answer"], loaded or "none", pyarrow.__name__)
"""


def test_chdb_is_loaded_without_pyarrow_which_stays_importable(tmp_path: Path) -> None:
    out = run_probe(PROBE, tmp_path / "data")
    assert out[-3:] == ["42", "none", "pyarrow"]


PREIMPORTED = """
import sys
import pyarrow
from casbackup.clickhouse.embedded import EmbeddedClient
client = EmbeddedClient(sys.argv[1])
client.close()
import chdb.state.sqlitelike as stateful
print(stateful.pa is pyarrow)
"""


def test_pyarrow_already_imported_is_left_to_chdb(tmp_path: Path) -> None:
    out = run_probe(PREIMPORTED, tmp_path / "data")
    assert out[-1:] == ["True"]
