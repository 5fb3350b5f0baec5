"""sha256 of weights files, in a module without torch.

`sync` (the CLI and the model-sync Lambda) verifies every download; importing torch only to hash
bytes would add seconds to each of those cold starts.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

_CHUNK = 1024 * 1024


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file, read in chunks so a large weights file never sits in memory twice."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as stream:
        for chunk in iter(lambda: stream.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()
