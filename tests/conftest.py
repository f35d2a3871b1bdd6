"""Shared pytest fixtures."""
from __future__ import annotations

import os
import pathlib

import pytest


@pytest.fixture(scope="session")
def shared_data_dir() -> pathlib.Path:
  """The real MedMNIST files: `$TUNING_DATA_DIR`, else `<repo>/../shared/data`.

  Fails rather than skips when absent, so a misconfigured machine cannot pass
  the suite without exercising the real data.
  """
  configured = os.environ.get("TUNING_DATA_DIR")
  path = (pathlib.Path(configured) if configured
          else pathlib.Path(__file__).resolve().parents[2] / "shared" / "data")
  if not path.is_dir():
    pytest.fail(
        f"shared data dir {path} does not exist; set TUNING_DATA_DIR to a "
        "directory holding pneumoniamnist.npz and retinamnist.npz")
  return path
