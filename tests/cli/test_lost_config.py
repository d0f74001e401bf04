"""A repository that lost its `config` object must not be re-initialised over its backups.

Every manifest records the id of its repository, and a new config gets a new
id: `init` over the remains would cut every backup off. So `list` explains
what is missing instead of advising `init`, `init` refuses and writes
nothing, and `init --recover` writes the config back with the id the
manifests record. The damage is made by hand, as an operator's `rm` would.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from casbackup.errors import ExitCode
from casbackup.repo import manifest as codec
from tests.cli.test_failures import one_line_error
from tests.helpers import small_backups


@pytest.fixture
def two_backups(cli: Any, tmp_path: Path) -> str:
    """A repository at tmp_path/repo holding backups b1 and b2; returns its id."""
    assert cli(None, "init").code == 0
    return small_backups(tmp_path / "repo", tmp_path, ["b1", "b2"])


def backup_names(cli: Any) -> list[str]:
    listed = cli(None, "list", "--json")
    assert listed.code == 0, listed.stderr
    return [b["name"] for b in listed.json()]


def test_list_explains_a_lost_config_instead_of_advising_init(
    cli: Any, tmp_path: Path, two_backups: str
) -> None:
    (tmp_path / "repo" / "config").unlink()

    listed = cli(None, "list")
    assert listed.code == ExitCode.INTEGRITY
    one_line_error(listed.stderr)
    assert "no `config` object" in listed.stderr
    assert f"its id, {two_backups}, is recorded in manifest b1" in listed.stderr
    assert "`casbackup init --recover`" in listed.stderr
    assert "`casbackup init` would start a new" not in listed.stderr


def test_init_over_the_remains_is_refused_and_writes_nothing(
    cli: Any, tmp_path: Path, two_backups: str
) -> None:
    root = tmp_path / "repo"
    (root / "config").unlink()

    refused = cli(None, "init")
    assert refused.code == ExitCode.INTEGRITY
    one_line_error(refused.stderr)
    assert "`casbackup init --recover`" in refused.stderr
    assert not (root / "config").exists()

    # Packs alone (every manifest deleted): there is no id to recover.
    shutil.rmtree(root / "manifests")
    refused = cli(None, "init")
    assert refused.code == ExitCode.INTEGRITY
    assert "has objects under packs/ but no `config` object" in refused.stderr
    assert "no readable manifest records its id" in refused.stderr
    assert cli(None, "init", "--recover").code == ExitCode.INTEGRITY
    assert not (root / "config").exists()


def test_init_recover_restores_access_to_every_backup(
    cli: Any, tmp_path: Path, two_backups: str
) -> None:
    root = tmp_path / "repo"
    original = json.loads((root / "config").read_text())
    (root / "config").unlink()

    recovered = cli(None, "init", "--recover", "--json")
    assert recovered.code == 0, recovered.stderr
    assert recovered.json()["id"] == two_backups
    config = json.loads((root / "config").read_text())
    assert {k: v for k, v in config.items() if k != "created"} == {
        k: v for k, v in original.items() if k != "created"
    }
    assert backup_names(cli) == ["b1", "b2"]
    shown = cli(None, "show", "b2")
    assert shown.code == 0, shown.stderr
    assert cli(None, "verify", "--read-data").code == 0

    again = cli(None, "init", "--recover")
    assert again.code == ExitCode.CONFLICT  # a config exists: nothing to recover


def test_init_recover_refuses_manifests_of_two_repositories(
    cli: Any, tmp_path: Path, two_backups: str
) -> None:
    root = tmp_path / "repo"
    b1 = codec.decode((root / "manifests" / "b1").read_bytes(), "b1")
    stranger = b1.model_copy(update={"name": "b3", "repository_id": "f" * 32})
    (root / "manifests" / "b3").write_bytes(codec.encode(stranger))
    (root / "config").unlink()

    refused = cli(None, "init", "--recover")
    assert refused.code == ExitCode.INTEGRITY
    one_line_error(refused.stderr)
    assert f"{two_backups}: b1, b2" in refused.stderr and f"{'f' * 32}: b3" in refused.stderr
    assert not (root / "config").exists()


def test_init_refused_by_the_catalog_leaves_no_config(cli: Any, tmp_path: Path) -> None:
    """A catalog of another repository is found before the config is written, not after."""
    assert cli(None, "init", repo=tmp_path / "first").code == 0
    (tmp_path / "second").mkdir()
    shutil.copy(tmp_path / "first" / "catalog.sqlite", tmp_path / "second" / "catalog.sqlite")

    refused = cli(None, "init", repo=tmp_path / "second")
    assert refused.code == ExitCode.CATALOG
    assert not (tmp_path / "second" / "config").exists()
    # Not "run `casbackup catalog rebuild`": there is no repository to rebuild it from.
    one_line_error(refused.stderr)
    assert "a new repository needs a catalog of its own" in refused.stderr
    assert "rebuild" not in refused.stderr


def test_a_changed_config_id_is_named_as_the_damage_not_the_catalog(
    cli: Any, tmp_path: Path, two_backups: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The config's id changed (an edit, a copy of another repository's config).

    The catalog and every manifest still record the old id, so every command
    stopped with exit 17 advising `casbackup catalog rebuild`, which would
    index the repository under the new id and leave every backup out.
    """
    config = tmp_path / "repo" / "config"
    doc = json.loads(config.read_text())
    doc["id"] = "0" * 32
    config.write_text(json.dumps(doc))

    for command in (["verify"], ["list"]):
        result = cli(None, *command)
        assert result.code == ExitCode.INTEGRITY, result.stderr
        one_line_error(result.stderr)
        assert f"names repository {'0' * 32}, but manifest b1 and the catalog record " in (
            result.stderr
        )
        assert two_backups in result.stderr and "catalog rebuild" not in result.stderr

    config.rename(tmp_path / "config.changed")  # as the error says
    assert cli(None, "init", "--recover").code == 0
    assert cli(None, "verify", "--read-data").code == 0
    assert backup_names(cli) == ["b1", "b2"]
    # A catalog of another repository is still that, not a changed config.
    assert cli(None, "init", repo=tmp_path / "other").code == 0
    monkeypatch.setenv("CASBACKUP_CATALOG", f"sqlite:///{tmp_path / 'other' / 'catalog.sqlite'}")
    assert cli(None, "verify").code == ExitCode.CATALOG
