"""Environment detection: flag, then BASTION_ENV, then bastion.toml; live never inferred."""

from __future__ import annotations

import pytest

from bastion import ConfigError, Environment
from bastion._environment import allow_unsigned_requested, detect_environment


def test_default_is_development(tmp_path) -> None:
    assert detect_environment(None, tmp_path / "bastion.toml") is Environment.DEVELOPMENT


def test_order_flag_env_config(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "bastion.toml"
    config.write_text('environment = "paper"\n')
    assert detect_environment(None, config) is Environment.PAPER
    monkeypatch.setenv("BASTION_ENV", "development")
    assert detect_environment(None, config) is Environment.DEVELOPMENT
    assert detect_environment("paper", config) is Environment.PAPER


def test_live_only_from_the_flag(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Nothing is inferred into live: BASTION_ENV or the config file saying live is an error."""
    config = tmp_path / "bastion.toml"
    assert detect_environment("live", config) is Environment.LIVE
    monkeypatch.setenv("BASTION_ENV", "live")
    with pytest.raises(ConfigError, match="--env live explicitly"):
        detect_environment(None, config)
    monkeypatch.delenv("BASTION_ENV")
    config.write_text('environment = "live"\n')
    with pytest.raises(ConfigError, match="never inferred"):
        detect_environment(None, config)


def test_bad_values(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "bastion.toml"
    config.write_text("environment = [")
    with pytest.raises(ConfigError, match="not valid TOML"):
        detect_environment(None, config)
    monkeypatch.setenv("BASTION_ENV", "prod")
    with pytest.raises(ConfigError, match="unknown environment 'prod'"):
        detect_environment(None, config)


def test_allow_unsigned_env(monkeypatch: pytest.MonkeyPatch) -> None:
    assert not allow_unsigned_requested(False)
    assert allow_unsigned_requested(True)
    monkeypatch.setenv("BASTION_ALLOW_UNSIGNED", "1")
    assert allow_unsigned_requested(False)
    monkeypatch.setenv("BASTION_ALLOW_UNSIGNED", "maybe")
    with pytest.raises(ConfigError):
        allow_unsigned_requested(False)


def test_the_env_file_comes_after_the_variable_and_before_bastion_toml(
    tmp_path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Detection order: --env, BASTION_ENV, BASTION_ENV= in the workspace's .env file,
    then bastion.toml; each result says where it came from."""
    from bastion._environment import detect

    (tmp_path / "bastion.toml").write_text('environment = "development"\n')
    assert detect(None, tmp_path).source.endswith("bastion.toml")
    (tmp_path / ".env").write_text("# a comment\nOTHER=1\nBASTION_ENV=paper\n")
    found = detect(None, tmp_path)
    assert found.environment is Environment.PAPER and found.source.endswith(".env (BASTION_ENV=)")
    monkeypatch.setenv("BASTION_ENV", "development")
    assert detect(None, tmp_path).source == "BASTION_ENV"
    assert detect("paper", tmp_path).source == "--env"


def test_live_is_never_inferred_from_the_env_file(tmp_path) -> None:
    """BASTION_ENV=live in .env is refused like the variable and the config file."""
    from bastion._environment import detect

    (tmp_path / ".env").write_text("BASTION_ENV=live\n")
    with pytest.raises(ConfigError, match=r"\.env.*--env live explicitly"):
        detect(None, tmp_path)
    assert detect("live", tmp_path).environment is Environment.LIVE
