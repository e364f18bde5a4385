"""`tunesmith web-ui` in a real browser (Debian's chromium driven by Playwright), with two users, on the tiny model:
start a LoRA run, close the page, upload data in a new one and see its bad row, find the run still going, stop it
(checkpoint kept), resume it, export the result and chat with it; the second user sees none of it, in the UI or by
URL. What does not need a job's result is done while a job's process starts (each takes ~15-30 s to import)."""

import json
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from e2e_cli import TUNESMITH, WORDS

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (apt-get install chromium)")
playwright = pytest.importorskip("playwright.sync_api", reason="needs playwright (pip install playwright)")
SHOTS: list[Path] = []  # where this run's screenshots go (the test's output folder), one per tab


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def webui(tiny_model, tmp_path_factory):
    """`tunesmith web-ui` started (ready or not: the browser launches while it imports); its jobs ended after."""
    root = tmp_path_factory.mktemp("webui")
    (root / "users.yaml").write_text("users:\n  alice: sha256:" + __import__("hashlib").sha256(b"a-pass").hexdigest()
                                     + "\n  bob: b-pass\n")
    alice = root / "ws" / "alice"
    shutil.copytree(tiny_model, alice / "models" / "tiny")
    (alice / "data").mkdir(parents=True)
    rows = [{"messages": [{"role": "user", "content": f"code for {w}"}, {"role": "assistant", "content": f"CODE {w} OK"}]}
            for w in WORDS]
    (alice / "data" / "good.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    port = free_port()
    log = (root / "ui.log").open("w")
    proc = subprocess.Popen([TUNESMITH, "web-ui", "--auth", str(root / "users.yaml"), "--root", str(root / "ws"),
                             "--port", str(port)], stdout=log, stderr=subprocess.STDOUT, cwd=root,
                            env={**__import__("os").environ, "OMP_NUM_THREADS": "1"})
    yield f"http://127.0.0.1:{port}", root, proc
    proc.terminate()
    proc.wait(timeout=30)
    for record in (root / "ws").glob("*/jobs/*.json"):  # jobs outlive the UI by design: end them here
        try:
            __import__("os").killpg(json.loads(record.read_text())["pid"], 15)
        except OSError:
            pass


@pytest.fixture(scope="module")
def browser(webui):
    with playwright.sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=[
            "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
            "--disable-component-update", "--disable-sync"])
        yield chromium
        chromium.close()


@pytest.fixture(scope="module")
def server(webui, browser):
    url, root, proc = webui
    end = time.monotonic() + 120
    while time.monotonic() < end and proc.poll() is None:
        try:
            urllib.request.urlopen(url, timeout=2)
            break
        except OSError:
            time.sleep(0.2)
    assert proc.poll() is None, (root / "ui.log").read_text()[-4000:]
    return url, root


def login(browser, url, user, password):
    page = browser.new_context().new_page()
    page.goto(url)
    page.get_by_label("username").fill(user)
    page.get_by_label("password").fill(password)
    page.get_by_role("button", name="Login").click()
    page.wait_for_selector("#who", timeout=60_000)
    assert f"workspace of {user}" in page.locator("#who").inner_text()
    return page


def field(page, elem_id):
    return page.locator(f"#{elem_id} textarea, #{elem_id} input").first


def shot(page, name):
    SHOTS[0].mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS[0] / f"{name}.png"), full_page=True)


def wait_for(predicate, timeout=120, every=0.2):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    raise AssertionError("timed out waiting")


def runs_status(page):
    return page.locator("#runs-status").inner_text()


def test_the_lifecycle_in_a_browser_with_two_users(server, browser, tmp_path):
    url, root = server
    alice = root / "ws" / "alice"
    SHOTS[:] = [tmp_path / "screenshots"]

    # Train: the form shows its command and plan, then starts a job
    page = login(browser, url, "alice", "a-pass")
    page.get_by_role("tab", name="Train").click()
    field(page, "sft-model").fill("models/tiny")
    field(page, "sft-dataset").fill("data/good.jsonl")
    field(page, "sft-max-steps").fill("3000")
    page.get_by_text("Advanced").first.click()
    field(page, "sft-logging-steps").fill("1")
    field(page, "sft-save-steps").fill("5")
    field(page, "sft-report-to").fill("none")
    page.locator("#sft-preview").click()
    wait_for(lambda: "tunesmith sft --model models/tiny" in page.locator("#sft-command").inner_text(), timeout=30)
    assert "memory plan" in page.locator("#sft-verdict").inner_text()
    shot(page, "train")
    page.locator("#sft-start").click()
    wait_for(lambda: "started job" in page.locator("#sft-verdict").inner_text(), timeout=30)
    job_id = page.locator("#sft-verdict").inner_text().split("started job ")[1].split()[0]
    page.context.close()  # the page goes away; the job must not

    # Data, in a new page while the job's process starts: an uploaded file with one bad row is reported with its line
    # and field
    page = login(browser, url, "alice", "a-pass")
    bad = tmp_path / "mixed.jsonl"
    bad.write_text(json.dumps({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]})
                   + "\n" + json.dumps({"messages": [{"role": "wizard", "content": "?"}]}) + "\n")
    page.get_by_role("tab", name="Data").click()
    page.locator("#data-upload input[type=file]").set_input_files(str(bad))
    wait_for(lambda: field(page, "data-dataset").input_value().endswith("mixed.jsonl"), timeout=30)
    field(page, "data-model").fill("models/tiny")
    page.locator("#data-check").click()
    wait_for(lambda: "bad" in page.locator("#data-summary").inner_text(), timeout=60)
    summary = page.locator("#data-summary").inner_text()
    assert "1 good rows, 1 bad" in summary and "mixed.jsonl:2" in summary and "role" in summary
    shot(page, "data")

    # Runs: the page finds the run still going, its loss growing
    page.get_by_role("tab", name="Runs").click()
    wait_for(lambda: job_id in runs_status(page) and "running" in runs_status(page), timeout=60)
    run_dir = alice / "runs" / job_id
    steps = lambda: len([1 for line in (run_dir / "metrics.jsonl").read_text().splitlines() if '"loss"' in line]) \
        if (run_dir / "metrics.jsonl").exists() else 0  # noqa: E731
    first = wait_for(steps, timeout=120)
    wait_for(lambda: steps() > first + 2, timeout=120)
    wait_for(lambda: "step" in runs_status(page), timeout=30)  # the status line shows step/total and the ETA
    shot(page, "runs")

    page.locator("#runs-stop").click()  # graceful: a checkpoint and final/
    wait_for(lambda: "stopped" in runs_status(page), timeout=120)
    assert (run_dir / "final" / "adapter_model.safetensors").exists() and list(run_dir.glob("checkpoint-*"))
    stopped_at = json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[-2])["step"]
    page.locator("#runs-resume").click()
    shown_job = lambda: runs_status(page).split(":", 1)[0].strip()  # noqa: E731 - the selected job's id
    wait_for(lambda: "running" in runs_status(page) and shown_job() not in ("", job_id), timeout=60)
    resumed_id = shown_job().strip("*")

    # While the resumed job's process starts: the other tabs, and a second user who sees none of it, not in the UI,
    # not by a direct file URL
    for tab in ("Align", "Evaluate", "Serve"):
        page.get_by_role("tab", name=tab).click()
        shot(page, tab.lower())
    page.get_by_role("tab", name="Runs").click()
    other = login(browser, url, "bob", "b-pass")
    other.get_by_role("tab", name="Runs").click()
    other.locator("#runs-refresh").click()
    looked = time.monotonic() + 3  # the refresh answered and a timer tick (2 s) came after it
    wait_for(lambda: "no job selected" in runs_status(other), timeout=30)
    for path in (run_dir / "final" / "adapter_model.safetensors", alice / "data" / "good.jsonl"):
        assert path.exists()
        as_bob = other.request.get(f"{url}/gradio_api/file={path}")  # with bob's session cookie
        assert as_bob.status in (403, 404), as_bob.status
        with pytest.raises(urllib.error.HTTPError) as anonymous:
            urllib.request.urlopen(f"{url}/gradio_api/file={path}", timeout=10)
        assert anonymous.value.code in (401, 403, 404)
    time.sleep(max(0.0, looked - time.monotonic()))
    assert "no job selected" in runs_status(other)
    assert job_id not in other.content() and resumed_id not in other.content()
    other.get_by_role("tab", name="Chat").click()
    field(other, "chat-left").fill(str(run_dir / "final"))  # an absolute path into alice's workspace
    field(other, "chat-message").fill("hello")
    other.locator("#chat-send").click()
    wait_for(lambda: "paths are relative to your workspace" in other.locator("body").inner_text(), timeout=60)
    assert "CODE" not in other.locator("#chat-left-answers").inner_text()
    other.context.close()

    wait_for(lambda: json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[-1]).get("step", 0) > stopped_at,
             timeout=120)  # continued from the checkpoint, in the same run folder
    page.locator("#runs-stop").click()
    wait_for(lambda: "stopped" in runs_status(page), timeout=120)

    # Export the result, and chat with it while the export job runs
    page.get_by_role("tab", name="Export").click()
    field(page, "export-adapters").fill(f"runs/{job_id}/final")
    field(page, "export-output").fill("exports/merged")
    page.locator("#export-start").click()
    page.get_by_role("tab", name="Chat").click()
    field(page, "chat-left").fill(f"runs/{job_id}/final")
    field(page, "chat-message").fill("code for river")
    page.locator("#chat-send").click()
    wait_for(lambda: page.locator("#chat-left-answers").inner_text().count("code for river") >= 1
             and len(page.locator("#chat-left-answers").inner_text()) > len("code for river") + 2, timeout=120)
    shot(page, "chat")
    wait_for(lambda: (alice / "exports" / "merged" / "model.safetensors").exists(), timeout=180)
    page.get_by_role("tab", name="Export").click()
    shot(page, "export")
    print(f"screenshots: {SHOTS[0]}")
