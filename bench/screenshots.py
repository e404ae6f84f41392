"""`python -m bench screenshots`: the README's pictures of the playground, one per panel.

Starts `banterbox serve` on the default model (the sample cards, the `chat`, `npc` and
`moderation` plugins, a throwaway SQLite store), opens the page in Debian's headless
Chromium through Playwright, and walks the "first ten minutes": a line to the blacksmith
(speech with its emotion and action chips), a chat message held in the moderation console,
and the metrics panel once both have run. Each panel is written as its own PNG.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
from pathlib import Path

from .procs import ServerProcess

CHROMIUM = "/usr/bin/chromium"  # `make setup` installs it; Playwright downloads no browser here
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run"]
WAIT_MS = 120_000
PANELS = ("npc", "moderation", "metrics")
NPC_LINE = "Hello! Can you sharpen my sword before the tournament?"
HELD_LINE = "your mom is so annoying"  # the game-chat lexicon holds family insults

# A panel's box cut to the bottom of its last visible child: the grid stretches panels to the
# tallest, and the picture should show the content, not the stretch.
CONTENT_BOX = """(selector) => {
  const panel = document.querySelector(selector);
  const box = panel.getBoundingClientRect();
  let bottom = box.top;
  for (const child of panel.children) {
    const r = child.getBoundingClientRect();
    if (r.height > 0) bottom = Math.max(bottom, r.bottom);
  }
  return { x: box.left, y: box.top, width: box.width, height: bottom - box.top + 16 };
}"""


def add_arguments(scenarios: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = scenarios.add_parser("screenshots", help="the playground's panels as PNGs (README)")
    p.add_argument("--model", type=Path, default=None, help="default: the pulled SmolLM2 GGUF")
    p.add_argument("--out", type=Path, default=Path("docs/playground"), help="folder for PNGs")
    p.add_argument("--tries", type=int, default=4, help="NPC lines until one has speech")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from server.pull import default_model_path

    model = args.model or default_model_path(os.environ)
    written = asyncio.run(shoot(model, args.out, tries=args.tries))
    for path in written:
        print(path)
    return 0


async def shoot(model: Path, out: Path, *, tries: int) -> list[Path]:
    """Write npc.png, moderation.png and metrics.png into `out`; return their paths."""
    from playwright.async_api import async_playwright, expect

    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as data:
        server = ServerProcess(model, store_url=f"sqlite://{data}/banterbox.db")
        server.start()
        try:
            async with async_playwright() as pw:
                browser = await pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
                try:
                    page = await browser.new_page(viewport={"width": 1500, "height": 950})
                    await page.goto(f"http://127.0.0.1:{server.port}/")
                    status = page.locator("#status")
                    await expect(status).to_contain_text("connected to", timeout=WAIT_MS)

                    for _ in range(tries):  # sampled: a turn may be events only
                        await page.fill("#npc-input", NPC_LINE)
                        await page.click("#npc-send")
                        line = page.locator(".line.npc").last
                        await expect(line).to_have_attribute("data-done", "true", timeout=WAIT_MS)
                        if await line.locator(".text").inner_text():
                            break

                    subscribed = page.locator("#mod-subscribed")
                    await expect(subscribed).to_contain_text("live feed", timeout=WAIT_MS)
                    await page.fill("#mod-text", HELD_LINE)
                    await page.click("#mod-check")
                    await expect(page.locator("#mod-holds li[data-message-id]")).to_have_count(
                        1, timeout=WAIT_MS
                    )
                    await page.click("#mod-load")
                    await expect(page.locator("#mod-policy")).not_to_have_value("")

                    await expect(page.locator("#m-ttft")).to_contain_text("ms", timeout=WAIT_MS)
                    written = []
                    for name, selector in zip(
                        PANELS, ("#npc-panel", "#mod-panel", "#metrics-panel"), strict=True
                    ):
                        path = out / f"{name}.png"
                        box = await page.evaluate(CONTENT_BOX, selector)
                        await page.screenshot(path=str(path), clip=box)
                        written.append(path)
                    return written
                finally:
                    await browser.close()
        finally:
            server.stop()
