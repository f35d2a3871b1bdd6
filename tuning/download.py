"""Downloads for users with internet: data files and pretrained weights.

One atomic path for both: write a temp file beside the destination, rename on
success, so a killed or failed download never leaves a file that looks complete.
"""
from __future__ import annotations

import hashlib
import os
import pathlib
import re
import tempfile
import urllib.request

import tqdm

_CHUNK = 1 << 20
_TIMEOUT_S = 60


def download(url: str, dest: pathlib.Path) -> pathlib.Path:
  """Fetches `url` to `dest` (unless present) and returns `dest`.

  torchvision names its files `<name>-<first hex digits of the sha256>.<ext>`;
  when `dest`'s name carries such a prefix the download must match it, so a
  truncated or substituted file is never used. Network failures raise OSError.
  """
  if dest.exists():
    return dest
  dest.parent.mkdir(parents=True, exist_ok=True)
  fd, part = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
  try:
    digest = hashlib.sha256()
    with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=_TIMEOUT_S) as response:
      total = int(response.headers.get("Content-Length") or 0) or None
      with tqdm.tqdm(total=total, unit="B", unit_scale=True, desc=f"downloading {dest.name}") as bar:
        while chunk := response.read(_CHUNK):
          out.write(chunk)
          digest.update(chunk)
          bar.update(len(chunk))
    prefix = re.search(r"-([0-9a-f]{6,})\.[^.]+$", dest.name)
    if prefix and not digest.hexdigest().startswith(prefix.group(1)):
      raise ValueError(f"{url}: sha256 {digest.hexdigest()} does not start with "
                       f"{prefix.group(1)}, as the file name says")
    os.chmod(part, 0o644)  # mkstemp makes it private; it is a public download
    os.replace(part, dest)
  finally:
    if os.path.exists(part):
      os.unlink(part)
  return dest
