"""`python -m training` (also `torchrun ... -m training`, and `python training/__main__.py`).

SageMaker script mode runs its entry point as a file, not a module; then the repository root
is not on the import path, so it is added here.
"""

import sys
from pathlib import Path

if not __package__:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from training.cli import main  # imported after the path fix above

if __name__ == "__main__":
    sys.exit(main())
