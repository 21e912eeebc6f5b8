"""The integration tests reuse the gateway tests' fake model server and loopback helpers."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "gateway"))
