"""A local AWS Lambda: the Runtime API driving the real awslambdaric, and a Function URL in front.

`Emulator` (with `EmulatorConfig`) is the Python API; `python -m emulator serve` the command line.
"""

from emulator.config import EmulatorConfig
from emulator.pool import InvokeResult
from emulator.report import EmulatorStats, InvocationRecord, RuntimeStats
from emulator.service import Emulator

__all__ = ["Emulator", "EmulatorConfig", "EmulatorStats", "InvocationRecord", "InvokeResult", "RuntimeStats"]
