"""`python -m bench screenshots` over a real `banterbox serve` and Debian's Chromium: the
README's three panel pictures come out as PNGs of the panels' content."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest
from tiny import TinyConfig, random_hf_tensors, write_gguf

from bench.screenshots import PANELS, shoot

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path.name} is not a PNG"
    width, height = struct.unpack(">II", data[16:24])  # the IHDR chunk comes first
    return width, height


async def test_one_png_per_panel_cut_to_its_content(tmp_path: Path) -> None:
    config = TinyConfig(max_position=4096)  # a sample card's prompt fits (the tokens are bytes)
    model = write_gguf(tmp_path / "tiny.gguf", config, random_hf_tensors(config))
    written = await shoot(model, tmp_path / "out", tries=1)
    assert [path.name for path in written] == [f"{name}.png" for name in PANELS]
    sizes = {path.stem: png_size(path) for path in written}
    for name, (width, height) in sizes.items():
        assert width >= 200 and height >= 100, (name, width, height)
    # Cut to the content, not the grid row's height: metrics is far shorter than moderation.
    assert sizes["metrics"][1] < sizes["moderation"][1] / 2
