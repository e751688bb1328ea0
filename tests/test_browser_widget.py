"""The CAM explorer in a real browser: JupyterLab on localhost, headless Chromium.

The test writes a tiny notebook that builds an explorer on two untrained models and
random images (nothing is trained), serves it with JupyterLab on a free localhost port
with a token, opens it in headless Chromium (driven through the DevTools protocol),
runs all cells, and then checks from the page and a screenshot that

- the explorer rendered: its box, its dropdowns and the figure (a PNG ``<img>``) are in
  the DOM, and the text names the first model and its P(TB);
- it is live: choosing a second model in the page's "model B" menu makes the kernel
  redraw (the text then names both models and the picture changes);
- the screenshot is not blank (many distinct colours, some of them the heat map's).

Chromium is Debian's ``chromium`` package: installed here with apt-get when missing
(as root, or with password-less sudo); the test skips, saying why, when it cannot be
installed or started.
"""
from __future__ import annotations

import base64
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

DEADLINE_S = 110  # the whole browser session, once the browser is there

NOTEBOOK_CODE = """\
import numpy as np, torch
from types import SimpleNamespace
from tbkd_helpers import widgets
from tbkd_helpers.models import build_model

records = [SimpleNamespace(key=f"demo/xray_{i}_{i % 2}", dataset="demo", label=i % 2) for i in range(4)]
images = torch.rand(4, 1, 32, 32, generator=torch.Generator().manual_seed(0))
lungs = np.zeros((4, 32, 32), bool)
lungs[:, 5:27, 4:14] = lungs[:, 5:27, 18:28] = True
state = widgets.ExplorerState(records, images={32: images}, lung_masks=lungs)
state.add_model("tiny-resnet", build_model("resnet18", seed=0), "resnet18")
state.add_model("tiny-mobilenet", build_model("mobilenet_v3_small", seed=1), "mobilenet_v3_small")
explorer = widgets.CamExplorer(state)
explorer
"""


# --------------------------------------------------------------------------- setup
def _find_chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        path = shutil.which(name)
        if path:
            return path
    return None


def _install_chromium() -> str:
    """Debian's chromium via apt-get; returns why not when it cannot be done."""
    if not shutil.which("apt-get"):
        return "no apt-get on this system"
    prefix: list[str] = []
    if hasattr(os, "geteuid") and os.geteuid() != 0:
        ok = shutil.which("sudo") and subprocess.run(["sudo", "-n", "true"], capture_output=True).returncode == 0
        if not ok:
            return "installing chromium with apt-get needs root (or password-less sudo)"
        prefix = ["sudo", "-n", "-E"]
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd, limit in ((prefix + ["apt-get", "update"], 180),
                       (prefix + ["apt-get", "install", "-y", "--no-install-recommends", "chromium"], 600)):
        try:
            r = subprocess.run(cmd, capture_output=True, text=True, timeout=limit, env=env)
        except subprocess.TimeoutExpired:
            return f"`{' '.join(cmd)}` took over {limit} s"
        if r.returncode != 0:
            last = (r.stderr or r.stdout).strip().splitlines()[-1:] or ["no output"]
            return f"`{' '.join(cmd)}` failed: {last[0]}"
    return ""


@pytest.fixture(scope="module")
def chromium() -> str:
    path = _find_chromium()
    if path is None:
        why = _install_chromium()
        path = _find_chromium()
        if path is None:
            pytest.skip(f"headless Chromium is not available: {why or 'not found after installing'}")
    return path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stop(proc: subprocess.Popen | None) -> None:
    """Stop a process this test started (and its process group), politely then firmly."""
    if proc is None or proc.poll() is not None:
        return
    for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 5)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def _wait_for(check, timeout: float, what: str, interval: float = 0.5):
    end = time.monotonic() + timeout
    last = None
    while time.monotonic() < end:
        try:
            last = check()
        except Exception as err:  # noqa: BLE001 - still starting
            last = err
        else:
            if last:
                return last
        time.sleep(interval)
    raise TimeoutError(f"{what}: not within {timeout:.0f} s (last: {last!r})"[:600])


class DevTools:
    """A minimal Chrome DevTools protocol client over one page's websocket."""

    def __init__(self, ws_url: str):
        import websocket  # websocket-client, a dependency of jupyter_server

        self.ws = websocket.create_connection(ws_url, timeout=30, suppress_origin=True)
        self._id = 0

    def call(self, method: str, **params):
        self._id += 1
        self.ws.send(json.dumps({"id": self._id, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv())
            if msg.get("id") == self._id:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg.get("result", {})

    def js(self, expression: str):
        res = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in res:
            raise RuntimeError(f"JS error: {res['exceptionDetails'].get('text')}: "
                               f"{res.get('result', {}).get('description', '')}"[:400])
        return res.get("result", {}).get("value")

    def close(self):
        self.ws.close()


# --------------------------------------------------------------------------- the test
JS_STATE = """(() => {
  const box = document.querySelector('.tbkd-cam-explorer');
  if (!box) return null;
  const img = box.querySelector('img');
  return {
    selects: Array.from(box.querySelectorAll('select')).map(s => s.value),
    labels: Array.from(box.querySelectorAll('label')).map(l => l.textContent.trim()),
    text: box.innerText,
    img: img ? {w: img.naturalWidth, h: img.naturalHeight, src: img.src} : null,
  };
})()"""

JS_CHOOSE_B = """(() => {
  const box = document.querySelector('.tbkd-cam-explorer');
  const sel = Array.from(box.querySelectorAll('.widget-dropdown')).find(
      d => d.textContent.includes('model B')).querySelector('select');
  const opt = Array.from(sel.options).find(o => o.textContent === 'tiny-mobilenet');
  sel.value = opt.value;
  sel.dispatchEvent(new Event('change', {bubbles: true}));
  return sel.value;
})()"""


def _colourfulness(png: bytes) -> tuple[int, int]:
    """(number of distinct colours, number of strongly saturated pixels) of a PNG."""
    import numpy as np
    from PIL import Image

    img = np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(int)
    distinct = len(np.unique(img.reshape(-1, 3), axis=0))
    saturated = int(((img.max(2) - img.min(2)) > 120).sum())
    return distinct, saturated


def test_explorer_renders_in_jupyterlab(chromium, tmp_path):
    pytest.importorskip("websocket", reason="websocket-client (a jupyter_server dependency) is missing")
    nbformat = pytest.importorskip("nbformat")
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(NOTEBOOK_CODE)]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, str(tmp_path / "explorer.ipynb"))

    token, port = "tbkd-browser-test", _free_port()
    env = {**os.environ, "JUPYTER_CONFIG_DIR": str(tmp_path / "cfg"), "JUPYTER_RUNTIME_DIR": str(tmp_path / "rt"),
           "JUPYTERLAB_WORKSPACES_DIR": str(tmp_path / "ws"), "JUPYTERLAB_SETTINGS_DIR": str(tmp_path / "settings"),
           "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg"}
    lab = browser = devtools = None
    log_lab = open(tmp_path / "lab.log", "w")
    log_browser = open(tmp_path / "chromium.log", "w")
    try:
        lab = subprocess.Popen(
            [sys.executable, "-m", "jupyterlab", "--no-browser", f"--port={port}", "--ip=127.0.0.1",
             "--port-retries=0", f"--ServerApp.token={token}", f"--ServerApp.root_dir={tmp_path}",
             "--LabApp.expose_app_in_browser=True", "--ServerApp.disable_check_xsrf=False",
             "--allow-root"],
            cwd=tmp_path, env=env, stdout=log_lab, stderr=subprocess.STDOUT, start_new_session=True)
        base = f"http://127.0.0.1:{port}"
        _wait_for(lambda: urllib.request.urlopen(f"{base}/api/status?token={token}", timeout=5).status == 200,
                  60, f"JupyterLab on port {port} (log: {tmp_path / 'lab.log'})")

        dt_port = _free_port()
        browser = subprocess.Popen(
            [chromium, "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
             "--no-first-run", "--no-default-browser-check", f"--remote-debugging-port={dt_port}",
             "--remote-allow-origins=*", f"--user-data-dir={tmp_path / 'chromium-profile'}",
             "--window-size=1400,1100", "about:blank"],
            env=env, stdout=log_browser, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            pages = _wait_for(lambda: [t for t in json.load(urllib.request.urlopen(
                f"http://127.0.0.1:{dt_port}/json", timeout=5)) if t.get("type") == "page"], 30,
                "Chromium's DevTools endpoint")
        except TimeoutError as err:
            tail = (tmp_path / "chromium.log").read_text()[-400:]
            pytest.skip(f"headless Chromium did not start: {err}; {tail}")
        devtools = DevTools(pages[0]["webSocketDebuggerUrl"])
        t0 = time.monotonic()
        left = lambda: max(5.0, DEADLINE_S - (time.monotonic() - t0))  # noqa: E731
        devtools.call("Page.enable")
        devtools.call("Emulation.setFocusEmulationEnabled", enabled=True)
        devtools.call("Page.navigate", url=f"{base}/lab/tree/explorer.ipynb?token={token}&reset")

        # the notebook open, its kernel ready
        _wait_for(lambda: devtools.js(
            "!!(window.jupyterapp && document.querySelector('.jp-NotebookPanel .jp-Cell'))"), left(),
            "JupyterLab showing the notebook")
        # (a headless window has no focus, so JupyterLab has no "current" notebook until
        # the panel is activated with focus emulated)
        _wait_for(lambda: devtools.js("""(() => {
            const app = window.jupyterapp;
            const p = Array.from(app.shell.widgets('main')).find(w => w.sessionContext);
            if (!p) return false;
            app.shell.activateById(p.id);
            const k = p.sessionContext.session && p.sessionContext.session.kernel;
            return !!k && k.status === 'idle' && app.shell.currentWidget === p;
          })()"""), left(), "the notebook's kernel to be idle")
        devtools.js("window.jupyterapp.commands.execute('notebook:run-all-cells').then(() => true)")

        # the explorer rendered, with its figure
        first = _wait_for(lambda: (lambda s: s if s and s["img"] and s["img"]["w"] > 0 else None)(
            devtools.js(JS_STATE)), left(), "the explorer's figure in the page")
        assert "tiny-resnet" in first["selects"], first["selects"]
        assert "gradcam" in first["selects"], first["selects"]
        for label in ("data set", "model A", "model B", "CAM method", "opacity"):
            assert label in first["text"] or label in first["labels"], (label, first["text"][:300])
        assert "tiny-resnet" in first["text"] and "P(TB) = " in first["text"]
        assert first["img"]["w"] > 150 and first["img"]["h"] > 150, first["img"]
        assert devtools.js("document.querySelectorAll('.tbkd-cam-explorer .jupyter-widgets').length") > 5

        # it is live: a second model chosen in the page is drawn by the kernel
        devtools.js(JS_CHOOSE_B)
        second = _wait_for(lambda: (lambda s: s if s and "tiny-mobilenet" in s["text"]
                                    and s["img"] and s["img"]["src"] != first["img"]["src"] else None)(
            devtools.js(JS_STATE)), left(), "the redraw after choosing model B")
        assert second["img"]["w"] > first["img"]["w"] * 1.5, (first["img"], second["img"])

        # the screenshot is not blank (the explorer in view, the file browser folded away)
        devtools.js("""(() => {
            const app = window.jupyterapp;
            if (!app.shell.leftCollapsed) app.commands.execute('application:toggle-left-area');
            document.querySelector('.tbkd-cam-explorer img').scrollIntoView({block: 'center'});
            return true;
          })()""")
        time.sleep(1.0)
        png = base64.b64decode(devtools.call("Page.captureScreenshot", format="png")["data"])
        (tmp_path / "explorer.png").write_bytes(png)
        shot = os.environ.get("TBKD_BROWSER_SCREENSHOT")
        if shot:
            Path(shot).write_bytes(png)
        distinct, saturated = _colourfulness(png)
        assert distinct > 500, f"screenshot looks blank: {distinct} distinct colours ({tmp_path / 'explorer.png'})"
        assert saturated > 2000, f"no heat map in the screenshot: {saturated} saturated pixels"
    finally:
        if devtools is not None:
            try:
                devtools.close()
            except Exception:  # noqa: BLE001
                pass
        _stop(browser)
        _stop(lab)
        log_lab.close()
        log_browser.close()
