"""The one download path: atomic, and checked against torchvision's hash-in-name."""
import hashlib

import pytest

from tuning.download import download

PAYLOAD = b"weights" * 1000
DIGEST = hashlib.sha256(PAYLOAD).hexdigest()


@pytest.fixture
def served(serve_url):
  return serve_url(PAYLOAD)


def test_downloads_once_and_checks_the_hash_prefix_in_the_name(tmp_path, served):
  dest = tmp_path / f"net-{DIGEST[:8]}.pth"
  assert download("https://example.invalid/net.pth", dest) == dest
  assert dest.read_bytes() == PAYLOAD
  download("https://example.invalid/net.pth", dest)
  assert len(served) == 1  # a present file is not fetched again


def test_a_file_not_matching_its_hash_prefix_is_not_kept(tmp_path, served):
  with pytest.raises(ValueError, match="does not start with 00000000"):
    download("https://example.invalid/net.pth", tmp_path / "net-00000000.pth")
  assert not list(tmp_path.iterdir())
