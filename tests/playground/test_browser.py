"""The playground in headless Chromium (Debian's, driven by Playwright): an NPC turn, an
interrupt, a moderation hold approved, live metrics; a screenshot of each in tmp/artifacts."""

from __future__ import annotations

import contextlib
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from playwright.async_api import Locator, Page, async_playwright, expect
from playwright.async_api import TimeoutError as PlaywrightTimeoutError
from server_harness import fast_config, running_server
from tiny import TinyConfig, random_hf_tensors, write_gguf

from server.app import BanterboxServer
from server.config import ApiKey

CHROMIUM = "/usr/bin/chromium"  # `make setup` installs it; Playwright's own browsers never
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip
ARTIFACTS = Path(__file__).resolve().parents[2] / "tmp" / "artifacts" / "playground"
WAIT_MS = 60_000
CLICK_MS = 2_000  # the interrupt button is enabled only while the NPC speaks
MAX_TRIES = 5
# The page's last chip of a turn: its finish_reason, or moderation replacing the random
# model's line (the sample cards check NPC output when the moderation plugin is loaded).
FINISHED = re.compile(r"^(stop|length|replaced by moderation)$")

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    config = TinyConfig(max_position=4096)  # a sample card's prompt fits (the tokens are bytes)
    folder = tmp_path_factory.mktemp("model")
    return write_gguf(folder / "tiny.gguf", config, random_hf_tensors(config))


def screenshot_path(name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    # Test output, never committed: the folder ignores itself.
    (ARTIFACTS.parent / ".gitignore").write_text("*\n")
    return ARTIFACTS / f"{name}.png"


@asynccontextmanager
async def playground(
    model: Path, *, auth: dict[str, Any] | None = None, connected: str = "connected to"
) -> AsyncIterator[tuple[BanterboxServer, Page]]:
    config = fast_config(
        plugins={
            "enabled": ["chat", "npc", "moderation"],
            "settings": {"npc": {"max_tokens": 1500}},  # long turns: time to interrupt one
        },
        engine={"kv_cache_mib": 64},
        auth=auth or {},
    )
    async with running_server(model, config) as server, async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = await browser.new_page(viewport={"width": 1500, "height": 950})
            errors: list[str] = []
            page.on("pageerror", lambda error: errors.append(str(error)))
            await page.goto(f"http://127.0.0.1:{server.port}/")
            await expect(page.locator("#status")).to_contain_text(connected, timeout=WAIT_MS)
            yield server, page
            assert errors == []
        finally:
            await browser.close()


async def say(page: Page, text: str) -> Locator:
    """Send a line; the NPC's line once it speaks or ends (a random model may say only events)."""
    await page.fill("#npc-input", text)
    await page.click("#npc-send")
    line = page.locator(".line.npc").last
    await expect(line.locator(".text:not(:empty)").or_(
        line.locator(':scope[data-done="true"]')
    )).to_be_visible(timeout=WAIT_MS)  # fmt: skip
    return line


async def test_npc_turn_streams_text_and_events_and_metrics_update(model: Path) -> None:
    async with playground(model) as (_, page):
        for _ in range(MAX_TRIES):
            line = await say(page, "Hello, can you fix my sword?")
            await expect(line).to_have_attribute("data-done", "true", timeout=WAIT_MS)
            if await line.locator(".text").inner_text():
                break
        await expect(line.locator(".text")).not_to_be_empty()
        await expect(line.locator(".event").last).to_have_text(FINISHED, timeout=WAIT_MS)
        await expect(page.locator("#npc-interrupt")).to_be_disabled()
        await expect(page.locator("#m-ttft")).to_contain_text("ms", timeout=WAIT_MS)
        await expect(page.locator("#m-kv")).to_contain_text("%")
        await page.screenshot(path=screenshot_path("npc-turn"), full_page=True)


async def test_typing_prefills_and_interrupt_cuts_the_turn(model: Path) -> None:
    async with playground(model) as (_, page):
        await page.locator("#npc-input").press_sequentially("Tell me")
        await expect(page.locator("#npc-typing")).to_have_text("prefilled while you typed",
                                                               timeout=WAIT_MS)  # fmt: skip
        for _ in range(MAX_TRIES):  # a random model's turn may end before the click lands
            line = await say(page, "Tell me about the dragon, all of it")
            if not await line.locator(".text").inner_text():
                continue
            with contextlib.suppress(PlaywrightTimeoutError):
                await page.click("#npc-interrupt", timeout=CLICK_MS)
            await expect(line).to_have_attribute("data-done", "true", timeout=WAIT_MS)
            if await line.locator(".event.cut").count():
                break
        await expect(line.locator(".event.cut")).to_contain_text("interrupted after")
        await expect(page.locator("#npc-interrupt")).to_be_disabled()
        await page.screenshot(path=screenshot_path("npc-interrupt"), full_page=True)


async def test_moderation_hold_then_approve(model: Path) -> None:
    async with playground(model) as (_, page):
        await expect(page.locator("#mod-subscribed")).to_contain_text("live feed", timeout=WAIT_MS)
        await expect(page.locator("#mod-policy")).not_to_have_value("")
        await page.fill("#mod-policy", '{"hold_s": 300}')
        await page.click("#mod-save")
        await expect(page.locator("#mod-policy-status")).to_have_text("saved", timeout=WAIT_MS)
        await page.fill("#mod-text", "your mom")
        await page.click("#mod-check")
        await expect(page.locator("#mod-verdict .badge")).to_have_text("hold", timeout=WAIT_MS)
        held = page.locator("#mod-holds li[data-message-id]")
        await expect(held).to_have_count(1, timeout=WAIT_MS)
        await expect(held).to_contain_text("your mom")
        await expect(page.locator("#mod-feed li").first.locator(".badge")).to_have_text("hold")
        await page.screenshot(path=screenshot_path("moderation-hold"), full_page=True)
        await held.locator("button.approve").click()
        await expect(page.locator("#mod-verdict")).to_contain_text("approve → allow",
                                                                   timeout=WAIT_MS)  # fmt: skip
        await expect(page.locator("#mod-holds li[data-message-id]")).to_have_count(0)
        await expect(page.locator("#mod-feed li").first).to_contain_text("approve by playground")
        await page.screenshot(path=screenshot_path("moderation-approved"), full_page=True)


async def test_with_auth_on_the_key_field_connects_and_unlocks_metrics(model: Path) -> None:
    key = ApiKey(key="pg-key-1", tenant="t1", scopes=frozenset({"generate", "moderate", "metrics"}))
    async with playground(model, auth={"keys": (key,)}, connected="unauthorized") as (_, page):
        await expect(page.locator("#metrics-status")).to_contain_text("needs a key",
                                                                      timeout=WAIT_MS)  # fmt: skip
        await page.fill("#api-key", "pg-key-1")
        await page.click("#connect")
        await expect(page.locator("#status")).to_contain_text("connected to", timeout=WAIT_MS)
        await expect(page.locator("#m-connections")).to_have_text("1", timeout=WAIT_MS)
        await expect(page.locator("#mod-subscribed")).to_contain_text("live feed", timeout=WAIT_MS)
        await page.screenshot(path=screenshot_path("auth-key"), full_page=True)
