"""The operator's page in a real headless browser (Debian's Chromium driven by Playwright).

The set-up script installs Chromium when run as root, as CI is; elsewhere these tests are
skipped with the reason. Nothing is downloaded at test time.
"""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.unit.server.test_dashboard import TOKEN, write_finished_run, write_running_run

CHROMIUM = Path("/usr/bin/chromium")
BIN = Path(sys.executable).parent
pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian chromium is not installed "
                                 "(scripts/setup_env.sh installs it when run as root)")]
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _serve(*args: str) -> tuple[subprocess.Popen, int]:
    port = _free_port()
    proc = subprocess.Popen([str(BIN / "implantfl-server"), "dashboard", "--port", str(port), *args],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return proc, port
        except OSError:
            assert proc.poll() is None, proc.communicate()[0]
            time.sleep(0.2)
    proc.kill()
    raise AssertionError("the dashboard did not start within 60 s")


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        yield b
        b.close()


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("dash")
    write_finished_run(root / "main-run")
    write_running_run(root / "live-run", rounds=1)
    return root


@pytest.fixture(scope="module")
def finished_server(runs) -> Iterator[int]:
    proc, port = _serve("--run-dir", str(runs / "main-run"))
    yield port
    proc.terminate()
    proc.wait(timeout=10)


def _open(browser, url: str):  # noqa: ANN001, ANN202
    page = browser.new_page()
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    response = page.goto(url)
    return page, response, errors


def test_the_page_shows_every_site_with_the_epsilon_results_json_records(browser, runs, finished_server):
    page, response, errors = _open(browser, f"http://127.0.0.1:{finished_server}/")
    assert response.status == 200
    page.wait_for_selector("#sites tr[data-site='hosp-c']")
    recorded: dict[str, float] = {}
    for r in json.loads((runs / "main-run" / "results.json").read_text())["rounds"]:
        for name, m in r["sites"].items():
            recorded[name] = max(recorded.get(name, 0.0), m["epsilon"])
    for name, eps in recorded.items():
        shown = page.locator(f"#sites tr[data-site='{name}'] .eps-value").inner_text()
        assert re.fullmatch(r"\d+\.\d\d", shown) and abs(float(shown) - eps) <= 0.005 + 1e-9, (name, shown, eps)
        assert "/ 10.00" in page.locator(f"#sites tr[data-site='{name}'] td.eps").inner_text()
    assert "not fit for use" in page.locator("#release").inner_text()
    assert page.locator("#acc-chart polyline").count() >= 1 and page.locator("#eps-chart polyline").count() == 3
    page.screenshot(path=str(runs / "dashboard.png"), full_page=True)
    assert errors == []
    page.close()


def test_a_round_landing_during_a_run_appears_without_reload(browser, runs):
    proc, port = _serve("--run-dir", str(runs / "live-run"))
    try:
        page, _, errors = _open(browser, f"http://127.0.0.1:{port}/")
        page.wait_for_function("document.getElementById('run-facts').textContent.includes('rounds 1 of 3')")
        page.evaluate("window.__sameDocument = true")  # gone if the page were reloaded
        write_running_run(runs / "live-run", rounds=2)
        page.wait_for_function("document.getElementById('run-facts').textContent.includes('rounds 2 of 3')",
                               timeout=15_000)
        assert page.evaluate("window.__sameDocument === true")
        assert page.locator("#run-state").inner_text() == "running"
        assert errors == []
        page.close()
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_with_a_token_the_browser_gets_401_then_the_page_once_it_gives_the_token(browser, runs, tmp_path):
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN)
    proc, port = _serve("--run-dir", str(runs / "main-run"), "--token-file", str(token_file))
    try:
        page, response, _ = _open(browser, f"http://127.0.0.1:{port}/")
        assert response.status == 401 and "token" in page.content()
        response = page.goto(f"http://127.0.0.1:{port}/?token={TOKEN}")
        assert response.status == 200 and page.url == f"http://127.0.0.1:{port}/"  # the token left the URL
        page.wait_for_selector("#sites tr[data-site='hosp-a']")  # the API calls carry the cookie
        page.close()
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_by_default_it_listens_on_127_0_0_1_only(finished_server):
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:  # the address this machine routes out with
        s.connect(("192.0.2.1", 9))  # a documentation address: no packet is sent
        outside = s.getsockname()[0]
    if outside.startswith("127."):
        pytest.skip("this machine has no address besides loopback")
    socket.create_connection(("127.0.0.1", finished_server), timeout=2).close()
    with pytest.raises(OSError):
        socket.create_connection((outside, finished_server), timeout=2).close()
