# Copyright (c) kubepki.certs contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Headless Chromium (Debian's chromium) driven over the DevTools protocol with websocket-client: start the browser,
open a page, evaluate JavaScript, click and press keys as a user does (Input domain), take a screenshot.

Imports nothing from plugins/: the verdicts come from the real browser."""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import time
import urllib.request

import websocket

STARTUP_SECONDS = 60


class DevToolsError(RuntimeError):
    pass


class Chromium:
    """One headless Chromium with one page. Use as a context manager."""

    def __init__(self, profile_dir: str, width: int = 1400, height: int = 1000) -> None:
        binary = shutil.which("chromium")
        if binary is None:
            raise DevToolsError("chromium is not installed: scripts/bootstrap.sh installs Debian's chromium package")
        self.profile_dir = profile_dir
        argv = [binary, "--headless", "--disable-gpu", "--no-first-run", "--no-default-browser-check",
                "--remote-debugging-port=0", "--user-data-dir=%s" % profile_dir,
                "--window-size=%d,%d" % (width, height), "about:blank"]
        if os.geteuid() == 0:
            argv.insert(1, "--no-sandbox")  # Chromium refuses to start as root with its sandbox (CI runs as root)
        self.log = open(os.path.join(profile_dir, "chromium.log"), "wb")  # pylint: disable=consider-using-with
        self.process = subprocess.Popen(argv, stdout=self.log, stderr=subprocess.STDOUT)  # pylint: disable=consider-using-with
        self.socket = None
        self.next_id = 0
        self.events = []

    def __enter__(self) -> "Chromium":
        port = self._port()
        deadline = time.monotonic() + STARTUP_SECONDS
        while True:
            with urllib.request.urlopen("http://127.0.0.1:%d/json/list" % port, timeout=10) as response:
                pages = [t for t in json.load(response) if t.get("type") == "page"]
            if pages or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        if not pages:
            raise DevToolsError("chromium shows no page target")
        # websocket-client sends an Origin header by default, which Chromium refuses without --remote-allow-origins.
        self.socket = websocket.create_connection(pages[0]["webSocketDebuggerUrl"], timeout=60, suppress_origin=True)
        self.call("Page.enable")
        self.call("Runtime.enable")
        return self

    def __exit__(self, *exc) -> None:
        if self.socket is not None:
            self.socket.close()
        self.process.terminate()
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.log.close()

    def _port(self) -> int:
        """The port Chromium chose, from the DevToolsActivePort file it writes into its profile."""
        marker = os.path.join(self.profile_dir, "DevToolsActivePort")
        deadline = time.monotonic() + STARTUP_SECONDS
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                with open(self.log.name, "rb") as handle:
                    tail = handle.read()[-2000:].decode("utf-8", "replace")
                raise DevToolsError("chromium exited (rc=%s): %s" % (self.process.returncode, tail))
            if os.path.exists(marker):
                with open(marker, encoding="utf-8") as handle:
                    first = handle.readline().strip()
                if first.isdigit():
                    return int(first)
            time.sleep(0.1)
        raise DevToolsError("chromium did not open its DevTools port in %d s" % STARTUP_SECONDS)

    def call(self, method: str, **params):
        """Send one command, return its result; events received meanwhile are kept in ``events``."""
        self.next_id += 1
        self.socket.send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        while True:
            message = json.loads(self.socket.recv())
            if message.get("id") == self.next_id:
                if "error" in message:
                    raise DevToolsError("%s: %s" % (method, message["error"]))
                return message.get("result", {})
            if "method" in message:
                self.events.append(message)

    def wait_event(self, method: str, timeout: float = 60):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for index, event in enumerate(self.events):
                if event["method"] == method:
                    return self.events.pop(index)
            message = json.loads(self.socket.recv())
            if "method" in message:
                self.events.append(message)
        raise DevToolsError("no %s within %d s" % (method, timeout))

    def open(self, url: str) -> None:
        self.events.clear()
        self.call("Page.navigate", url=url)
        self.wait_event("Page.loadEventFired")

    def evaluate(self, expression: str):
        """The value of a JavaScript expression (JSON-serializable), or DevToolsError with the exception."""
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise DevToolsError("JavaScript error: %s" % json.dumps(result["exceptionDetails"])[:2000])
        return result["result"].get("value")

    def click(self, selector: str) -> None:
        """A left click in the middle of the element, as a mouse would (scrolled into view first)."""
        box = self.evaluate("(function(){var e=document.querySelector(%s);e.scrollIntoView({block:'center'});"
                            "var r=e.getBoundingClientRect();return [r.left+r.width/2,r.top+r.height/2];})()"
                            % json.dumps(selector))
        for kind in ("mousePressed", "mouseReleased"):
            self.call("Input.dispatchMouseEvent", type=kind, x=box[0], y=box[1], button="left", clickCount=1)

    def press_enter(self) -> None:
        """Enter on the focused element, as a keyboard would."""
        self.call("Input.dispatchKeyEvent", type="keyDown", key="Enter", code="Enter", windowsVirtualKeyCode=13,
                  text="\r")
        self.call("Input.dispatchKeyEvent", type="keyUp", key="Enter", code="Enter", windowsVirtualKeyCode=13)

    def screenshot(self, path: str) -> None:
        data = self.call("Page.captureScreenshot", format="png", captureBeyondViewport=True)["data"]
        with open(path, "wb") as handle:
            handle.write(base64.b64decode(data))
