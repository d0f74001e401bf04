"""Both entry points start through casbackup.launch, and leave the collector running."""

from __future__ import annotations

import subprocess
import sys
from importlib.metadata import entry_points
from pathlib import Path

from casbackup import __version__
from casbackup.errors import ExitCode

SCRIPT = Path(sys.executable).parent / "casbackup"

PROBE = """
import gc, sys
sys.argv = ["casbackup", "--version"]
from casbackup import launch
try:
    launch.main()
except SystemExit as exit:
    print(exit.code, gc.isenabled(), gc.get_freeze_count() > 0)
"""


def test_imports_are_frozen_and_collection_resumes() -> None:
    out = subprocess.run(
        [sys.executable, "-c", PROBE], capture_output=True, text=True, check=True
    ).stdout.split()
    assert out[-3:] == ["0", "True", "True"]


FAILED_IMPORT = """
import gc, sys
sys.modules["casbackup.cli.main"] = None  # the import of the CLI fails
from casbackup import launch
try:
    launch.main()
except ImportError:
    print(gc.isenabled())
"""


def test_collection_resumes_when_the_import_fails() -> None:
    out = subprocess.run(
        [sys.executable, "-c", FAILED_IMPORT], capture_output=True, text=True, check=True
    ).stdout.split()
    assert out[-1:] == ["True"]


def test_both_entry_points_start_in_launch() -> None:
    (script,) = entry_points(group="console_scripts", name="casbackup")
    assert script.value == "casbackup.launch:main"
    main_module = Path(__file__).parent.parent / "casbackup" / "__main__.py"
    assert "from casbackup.launch import main" in main_module.read_text()


def test_module_and_script_run_the_cli(tmp_path: Path) -> None:
    for command in ([sys.executable, "-m", "casbackup"], [str(SCRIPT)]):
        version = subprocess.run(
            [*command, "--version"], capture_output=True, text=True, check=True
        )
        assert version.stdout.strip() == f"casbackup {__version__}"
        missing = subprocess.run(
            [*command, "--repo", str(tmp_path / "none"), "list"], capture_output=True, text=True
        )
        assert missing.returncode == ExitCode.NOT_FOUND
        assert missing.stderr.startswith("casbackup: error: no casbackup repository")
        # A wrong --repo during a restore must not read as "run init" (a new, empty repository).
        assert "check the location" in missing.stderr
        assert "Traceback" not in missing.stderr


# Ctrl-C while the command line is still being imported (about half a second
# of every run, before casbackup's own signal handling is installed). The child
# starts with Python's own SIGINT handler, as from a terminal: it would inherit
# an ignored SIGINT from the test process (something in the full suite leaves it
# so), and the signal would then never arrive.
CTRL_C_DURING_IMPORT = """
import os, signal, sys
signal.signal(signal.SIGINT, signal.default_int_handler)
class CtrlC:
    def find_spec(self, name, path, target=None):
        if name == "casbackup.cli.main":
            os.kill(os.getpid(), signal.SIGINT)
        return None
sys.meta_path.insert(0, CtrlC())
from casbackup.launch import main
main()
"""


def test_ctrl_c_during_start_up_is_one_line_and_exit_130() -> None:
    result = subprocess.run(
        [sys.executable, "-c", CTRL_C_DURING_IMPORT, "list"], capture_output=True, text=True
    )
    assert result.returncode == ExitCode.INTERRUPTED
    assert result.stderr == "casbackup: error: interrupted by SIGINT; partial work was cleaned up\n"


# What the command line may not load at start-up: services only some commands
# use. Every process would pay for them (~20 ms on the project's VM), the
# nightly `create` among them. Each stays out until its command runs.
LOADED_AT_START = """
import sys
import casbackup.cli.main
print(" ".join(sorted(m for m in sys.modules if m.startswith("casbackup."))))
"""
SERVICES_LOADED_ON_USE = (
    "casbackup.clean",
    "casbackup.gc",
    "casbackup.nightly",
    "casbackup.restore",
    "casbackup.verify",
)


def test_the_command_line_loads_services_only_for_their_commands() -> None:
    loaded = subprocess.run(
        [sys.executable, "-c", LOADED_AT_START], capture_output=True, text=True, check=True
    ).stdout.split()
    assert "casbackup.backup" in loaded  # the probe sees the services that are loaded
    assert not set(SERVICES_LOADED_ON_USE) & set(loaded)


def test_warnings_of_the_log_and_of_the_commands_read_alike(tmp_path: Path) -> None:
    """A log grep found `casbackup: WARNING: ...` from the log and `warning: ...` from the
    commands; both are `casbackup: warning: ...` now, as errors are `casbackup: error: ...`."""
    repo = tmp_path / "repo"
    base = [str(SCRIPT), "--repo", str(repo), "--clickhouse", "clickhouse://default@127.0.0.1:1"]
    subprocess.run([*base, "init"], capture_output=True, check=True)
    (repo / "manifests").mkdir(exist_ok=True)
    (repo / "manifests" / "b1").write_bytes(b"not a manifest")
    logged = subprocess.run([*base, "catalog", "sync"], capture_output=True, text=True)
    assert logged.returncode == ExitCode.WARNING
    assert logged.stderr.startswith("casbackup: warning: backup b1 not indexed: "), logged.stderr
    noted = subprocess.run([*base, "clean"], capture_output=True, text=True)
    assert noted.returncode == ExitCode.WARNING
    assert "casbackup: warning: skipped ClickHouse cleanup: " in noted.stderr.splitlines()[-1]
    # Not "nothing to clean": it could not look at ClickHouse.
    assert noted.stdout == "nothing to clean in the store\n"
