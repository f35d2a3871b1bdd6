"""Shared pytest fixtures."""
from __future__ import annotations

import io
import os
import pathlib
import urllib.request

import pytest


@pytest.fixture(scope="session", autouse=True)
def private_xla_cache(tmp_path_factory):
  """CLI processes the tests start compile into a cache of this session, not the user's."""
  os.environ["TUNING_XLA_CACHE"] = str(tmp_path_factory.mktemp("xla_cache"))


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


@pytest.fixture
def serve_url(monkeypatch):
  """Answers every `urllib.request.urlopen` with `payload`; no test touches the network.

  Call it with the bytes to serve; it returns the list the requested URLs go into.
  """
  def serve(payload: bytes) -> list[str]:
    requested = []
    def urlopen(url, timeout):
      del timeout
      requested.append(url)
      response = io.BytesIO(payload)
      response.headers = {"Content-Length": str(len(payload))}
      return response
    monkeypatch.setattr(urllib.request, "urlopen", urlopen)
    return requested
  return serve


@pytest.fixture(scope="session")
def torch():
  """torch, which builds the reference models of the parity tests; skips without it."""
  return pytest.importorskip("torch", reason="torch builds the parity tests' reference models "
                             "(pip install torch==2.13.0)")
