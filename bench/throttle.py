"""The password throttle against many sessions, on a real server: `streamlit run app.py` with a
labeling password, and N browser sessions (Chromium pages, each its own Streamlit session, all
from 127.0.0.1, so one client address) typing wrong passwords as fast as the page answers. Counts
the guesses the server compared per minute, then, with the attack still running, times a
colleague's fresh session from typing the right password to the guarded form (retrying after
"try again in N s", as a person would).

Needs a feature database in the data folder (`python -m backend demo --no-serve`) and Debian's
Chromium. Last line: compared_per_min_1=<x> compared_per_min_N=<y> right_password_s=<z>
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update"]
PASSWORD = "the-right-one"


def _serve(data: str) -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = dict(os.environ, SAE_DASHBOARD_DATA=data, SAE_DASHBOARD_PASSWORD=PASSWORD)
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "streamlit",
            "run",
            "app.py",
            "--server.port",
            str(port),
            "--server.address",
            "127.0.0.1",
        ],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    for _ in range(120):
        try:
            urllib.request.urlopen(base + "/_stcore/health", timeout=1)
            return proc, base
        except OSError:
            time.sleep(0.5)
    proc.kill()
    raise RuntimeError("streamlit did not start")


async def _open(browser, url: str, name: str):
    ctx = await browser.new_context()
    page = await ctx.new_page()
    page.set_default_timeout(120_000)
    await page.goto(url)
    box = page.get_by_label("Your name (for labels)")
    await box.fill(name)
    await box.press("Enter")
    await page.get_by_label("Labeling password").wait_for()
    return ctx, page


async def _settled(page) -> None:
    app = page.locator("[data-testid='stApp']")
    try:
        await app.and_(page.locator("[data-test-script-state='running']")).wait_for(timeout=2000)
    except Exception:  # noqa: BLE001 - the rerun may have finished before we looked
        pass
    await app.and_(page.locator("[data-test-script-state='notRunning']")).wait_for()


async def _guess(page, text: str) -> str:
    """'compared', 'refused' (not checked) or 'in', after the page's rerun."""
    box = page.get_by_label("Labeling password")
    await box.fill(text)
    await box.press("Enter")
    await _settled(page)
    if not await page.get_by_label("Labeling password").count():
        return "in"  # the password field gave way to what it guarded
    if await page.get_by_text("was not checked").count():
        return "refused"
    return "compared"


async def _attack(browser, url: str, sessions: int, seconds: float, colleague_at: float | None) -> tuple[float, float]:
    pages = await asyncio.gather(*(_open(browser, url, f"guesser{i}") for i in range(sessions)))
    counts = [0] * sessions
    stop = time.monotonic() + seconds

    async def guesser(i: int) -> None:
        n = 0
        while time.monotonic() < stop:
            n += 1
            if await _guess(pages[i][1], f"wrong-{i}-{n}") == "compared":
                counts[i] += 1

    async def colleague() -> float:
        await asyncio.sleep(colleague_at)
        ctx, page = await _open(browser, url, "colleague")
        box = page.get_by_label("Labeling password")
        start = time.monotonic()
        for _ in range(30):
            await box.fill(PASSWORD)
            await box.press("Enter")
            for _ in range(300):  # the answer: the field gives way, or "not checked"
                await asyncio.sleep(0.1)
                if not await page.get_by_label("Labeling password").count():
                    took = time.monotonic() - start
                    await ctx.close()
                    return took
                if await page.get_by_text("was not checked").count():
                    break
            text = await page.get_by_text("was not checked").inner_text()
            wait = re.search(r"in (\d+) s", text)
            await asyncio.sleep(float(wait.group(1)) if wait else 1.0)
            await box.fill("")  # a changed value, so the same password is sent again
            await box.press("Enter")
            await _settled(page)
        await ctx.close()
        return float("nan")

    start = time.monotonic()
    tasks = [guesser(i) for i in range(sessions)]
    results = await asyncio.gather(*tasks, *([colleague()] if colleague_at is not None else []))
    elapsed = time.monotonic() - start
    for ctx, _ in pages:
        await ctx.close()
    right = results[-1] if colleague_at is not None else float("nan")
    return sum(counts) * 60 / elapsed, right


async def _main(args) -> None:
    from playwright.async_api import async_playwright

    db = args.db or sorted(Path(args.data).glob("*.duckdb"))[0].name
    proc, base = _serve(args.data)
    try:
        async with async_playwright() as p:
            browser = await p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
            url = f"{base}/Interpretability?db={db}"  # a light page with a guarded write (label import)
            one, _ = await _attack(browser, url, 1, args.seconds, None)
            print(f"1 session: {one:.1f} compared guesses/min", flush=True)
            await asyncio.sleep(10)  # the throttle's record of the address stays; its delay is the cap now
            many, right = await _attack(browser, url, args.sessions, args.seconds, args.seconds / 2)
            print(
                f"{args.sessions} sessions: {many:.1f} compared guesses/min; right password in {right:.1f} s",
                flush=True,
            )
            await browser.close()
    finally:
        proc.terminate()
        proc.wait(timeout=20)
    print(f"compared_per_min_1={one:.1f} compared_per_min_{args.sessions}={many:.1f} right_password_s={right:.1f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="data", help="data folder with a feature database")
    ap.add_argument("--db", default=None, help="database file name (default: the first)")
    ap.add_argument("--sessions", type=int, default=10)
    ap.add_argument("--seconds", type=float, default=60.0, help="length of each attack")
    asyncio.run(_main(ap.parse_args()))


if __name__ == "__main__":
    main()
