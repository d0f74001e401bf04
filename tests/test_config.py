"""Settings: file, environment and command-line precedence; validation."""

from __future__ import annotations

import os
import tomllib
from pathlib import Path

import pytest

from casbackup.config import ENVIRONMENT, load_settings, render_default_config
from casbackup.errors import ConfigError


def test_defaults_without_a_file(tmp_path: Path) -> None:
    settings = load_settings(
        tmp_path / "absent.toml" if False else None, environ={"HOME": str(tmp_path)}
    )
    assert settings.clickhouse.url.startswith("clickhouse://")
    assert settings.catalog_url("r" * 32).endswith("/catalog.sqlite")


def test_precedence_cli_over_env_over_file(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text(
        '[repository]\nlocation = "/from/file"\n[clickhouse]\nurl = "clickhouse://file@h:1"\n'
    )
    env = {"CASBACKUP_REPO": "/from/env"}
    settings = load_settings(config, environ=env)
    assert settings.repository.location == "/from/env"
    assert settings.clickhouse.url == "clickhouse://file@h:1"
    settings = load_settings(
        config, environ=env, overrides={("repository", "location"): "/from/cli"}
    )
    assert settings.repository.location == "/from/cli"
    assert settings.source == str(config)


@pytest.mark.parametrize(("text", "value"), [("true", True), ("false", False), ('"auto"', "auto")])
def test_fingerprints_setting(tmp_path: Path, text: str, value: object) -> None:
    path = tmp_path / "c.toml"
    path.write_text(f"[backup]\nfingerprints = {text}\n")
    assert load_settings(path, environ={}).backup.fingerprints == value


def test_fingerprints_default_to_off() -> None:
    from casbackup.config import BackupSettings

    assert BackupSettings().fingerprints is False


def test_config_file_from_environment(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text("[repository]\ncompression_level = 5\n")
    assert (
        load_settings(environ={"CASBACKUP_CONFIG": str(config)}).repository.compression_level == 5
    )
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(environ={"CASBACKUP_CONFIG": str(tmp_path / "nope.toml")})


def test_password_is_secret(tmp_path: Path) -> None:
    settings = load_settings(environ={"CASBACKUP_CLICKHOUSE_PASSWORD": "hunter2"})
    assert settings.clickhouse.password is not None
    assert "hunter2" not in repr(settings) and "hunter2" not in str(settings.model_dump())
    assert settings.clickhouse.password.get_secret_value() == "hunter2"


def test_remote_repository_catalog_lives_in_the_state_dir() -> None:
    settings = load_settings(environ={"CASBACKUP_REPO": "s3://bucket/prefix"})
    assert settings.catalog_url("ab" * 16).endswith(f"catalogs/{'ab' * 16}.sqlite")


def test_default_config_is_valid_and_complete(tmp_path: Path) -> None:
    text = render_default_config()
    document = tomllib.loads(text)
    assert set(document) == {
        "repository",
        "catalog",
        "clickhouse",
        "backup",
        "retention",
        "gc",
        "verify",
        "s3",
    }
    path = tmp_path / "c.toml"
    path.write_text(text)
    from_file = load_settings(path, environ={})
    assert from_file.model_dump(exclude={"source"}) == load_settings(environ={}).model_dump(
        exclude={"source"}
    )


@pytest.mark.parametrize(
    "content",
    [
        "[repository]\npack_size_mb = 0",
        "[repository]\nthreads = 'two'",
        "repository = 3",
        "[clickhouse]\nport = 9000",
        "[backup]\nfingerprints = 'sometimes'",
    ],
)
def test_invalid_settings(tmp_path: Path, content: str) -> None:
    path = tmp_path / "c.toml"
    path.write_text(content)
    with pytest.raises(ConfigError):
        load_settings(path, environ={})


def test_a_config_file_that_is_not_utf8_is_a_configuration_error(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_bytes(b"\xff\xfe[repository]\n")
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_settings(path, environ={})


# What os.environ and sys.argv hold for the bytes b"/srv/r\xff": the byte as a lone surrogate.
NOT_UTF8 = os.fsdecode(b"/srv/r\xff")


@pytest.mark.parametrize(
    "variable", ["CASBACKUP_REPO", "CASBACKUP_CATALOG", "CASBACKUP_CLICKHOUSE"]
)
def test_an_environment_variable_that_is_not_utf8_is_a_configuration_error(variable: str) -> None:
    """CASBACKUP_CATALOG of such a path failed at `init` as an internal error (exit 70)."""
    with pytest.raises(ConfigError, match=f"{variable} is not UTF-8 text"):
        load_settings(environ={variable: f"sqlite://{NOT_UTF8}"})


def test_a_command_line_value_that_is_not_utf8_is_a_configuration_error() -> None:
    with pytest.raises(ConfigError, match=r"repository\.location on the command line is not UTF-8"):
        load_settings(environ={}, overrides={("repository", "location"): NOT_UTF8})


@pytest.mark.parametrize(
    "variable", ["CASBACKUP_REPO", "CASBACKUP_CATALOG", "CASBACKUP_CLICKHOUSE_PASSWORD"]
)
def test_environment_over_a_section_that_is_not_a_table(tmp_path: Path, variable: str) -> None:
    path = tmp_path / "c.toml"
    path.write_text('repository = "x"\ncatalog = 1\nclickhouse = []\n')
    with pytest.raises(ConfigError, match="must be a table"):
        load_settings(path, environ={variable: "value"})


@pytest.mark.parametrize("subset", ["bogus", "0%", "200%", "0/7", "8/7"])
def test_a_bad_read_data_subset_is_refused_when_the_config_is_loaded(
    tmp_path: Path, subset: str
) -> None:
    """Not when `run` reaches its verify step, after it has backed up and collected garbage."""
    path = tmp_path / "c.toml"
    path.write_text(f'[verify]\nread_data_subset = "{subset}"\n')
    with pytest.raises(ConfigError, match=r"verify\.read_data_subset: (?!Value error)") as caught:
        load_settings(path, environ={})
    assert "--subset" not in caught.value.message


@pytest.mark.parametrize("subset", ["5%", "100%", "1/7", "2G", "500 MiB", ""])
def test_read_data_subsets_that_verify_reads(tmp_path: Path, subset: str) -> None:
    path = tmp_path / "c.toml"
    path.write_text(f'[verify]\nread_data_subset = "{subset}"\n')
    assert load_settings(path, environ={}).verify.read_data_subset == subset


def test_empty_environment_variables_mean_not_set(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "no-config-here"))
    empty = {variable: "" for variable in ENVIRONMENT} | {"CASBACKUP_CONFIG": ""}
    assert load_settings(environ=empty) == load_settings(environ={})


def test_an_empty_repository_location_in_the_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('[repository]\nlocation = ""\n')
    with pytest.raises(ConfigError, match=r"repository\.location"):
        load_settings(path, environ={})


@pytest.mark.parametrize(
    "url", ["sqlite://", "sqlite:///:memory:", "sqlite+pysqlite://", "sqlite://?cache=shared"]
)
def test_a_catalog_in_memory_is_refused(tmp_path: Path, url: str) -> None:
    """It would be empty at every start: each command re-reading the whole store, silently."""
    with pytest.raises(ConfigError, match="an SQLite catalog needs a file"):
        load_settings(None, environ={"HOME": str(tmp_path), "CASBACKUP_CATALOG": url})


@pytest.mark.parametrize("url", ["sqlite:///rel.sqlite", "sqlite:////abs/c.sqlite"])
def test_a_catalog_file_is_accepted(tmp_path: Path, url: str) -> None:
    settings = load_settings(None, environ={"HOME": str(tmp_path), "CASBACKUP_CATALOG": url})
    assert settings.catalog.url == url


@pytest.mark.parametrize("where", ["file", "environment"])
def test_a_blank_repository_location_is_refused(tmp_path: Path, where: str) -> None:
    """--repo " " was refused already; the file and CASBACKUP_REPO took it for a directory."""
    config = tmp_path / "c.toml"
    config.write_text('[repository]\nlocation = " "\n' if where == "file" else "")
    env = {"HOME": str(tmp_path)} | ({"CASBACKUP_REPO": " "} if where == "environment" else {})
    with pytest.raises(ConfigError, match="location"):
        load_settings(config, environ=env)


def test_a_bad_value_from_the_environment_is_named_as_the_variable(tmp_path: Path) -> None:
    """CASBACKUP_CATALOG=sqlite:// was reported as the config file's catalog.url: the operator
    looked for a key the file does not have."""
    config = tmp_path / "c.toml"
    config.write_text('[repository]\nlocation = "/backups/repo"\n')
    with pytest.raises(ConfigError) as raised:
        load_settings(config, environ={"CASBACKUP_CATALOG": "sqlite://"})
    assert raised.value.message.startswith(
        "configuration error: CASBACKUP_CATALOG (catalog.url): an SQLite catalog needs a file"
    ), raised.value.message
    assert str(config) not in raised.value.message
    config.write_text('[catalog]\nurl = "sqlite://"\n')
    with pytest.raises(ConfigError, match=rf"^configuration error: {config}: catalog\.url: "):
        load_settings(config, environ={})


def test_default_config_names_the_catalog_place_of_the_user_running_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """It said /var/lib/casbackup/catalogs/ to every user, while other users' S3 catalogs live
    under $XDG_STATE_HOME (docs/operations.md, "Catalog")."""
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    text = render_default_config()
    assert f"{tmp_path / 'state'}/casbackup/catalogs/<repository id>.sqlite" in text
    assert "/var/lib/casbackup/catalogs" not in text
    assert "$XDG_CONFIG_HOME/casbackup/casbackup.toml" in text
