"""tuning/xla_cache.py: the CLI's persistent compilation cache, its directory and its off switch."""
from __future__ import annotations

import jax
import pytest

from tuning import cli, xla_cache


@pytest.fixture
def restore_jax_config():
  saved = {name: getattr(jax.config, name) for name in (
      "jax_compilation_cache_dir", "jax_compilation_cache_max_size")}
  yield
  for name, value in saved.items():
    jax.config.update(name, value)


def test_points_jax_at_the_configured_directory(tmp_path, monkeypatch, restore_jax_config):
  monkeypatch.setenv("TUNING_XLA_CACHE", str(tmp_path / "xla"))
  assert xla_cache.enable() == str(tmp_path / "xla")
  assert jax.config.jax_compilation_cache_dir == str(tmp_path / "xla")
  assert jax.config.jax_compilation_cache_max_size == xla_cache.MAX_BYTES


def test_defaults_to_the_user_cache_and_can_be_turned_off(monkeypatch, restore_jax_config):
  monkeypatch.delenv("TUNING_XLA_CACHE")
  monkeypatch.setattr(jax.config, "update", lambda *args: None)  # leave the session's alone
  assert xla_cache.enable().endswith("/.cache/tuning/xla")
  monkeypatch.setenv("TUNING_XLA_CACHE", "off")
  assert xla_cache.enable() is None


def test_the_cli_enables_it_before_running_a_command(monkeypatch):
  calls = []
  monkeypatch.setattr(cli.allocator, "keep_freed_memory", lambda: calls.append("malloc"))
  monkeypatch.setattr(cli.xla_cache, "enable", lambda: calls.append("cache"))
  monkeypatch.setattr(cli.app, "run", lambda *args, **kwargs: calls.append("command"))
  monkeypatch.setattr(cli.sys, "argv", ["tuning", "report", "x"])
  cli.run()
  assert calls == ["malloc", "cache", "command"]
