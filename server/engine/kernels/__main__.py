"""`python -m server.engine.kernels`: build the extension now (make setup runs this)."""

from __future__ import annotations

from . import build_directory, load

if __name__ == "__main__":
    load(verbose=False)
    print(f"banterbox: C++ kernels built in {build_directory()}")
