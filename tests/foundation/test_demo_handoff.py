"""The demo's HTTP hand-off: the printed curl works when pasted into a shell, `relstream serve`
prints the address it really bound (also for port 0), and services the demo leaves running are
recorded with the stack so `relstream stack down` stops them."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import httpx
import pytest

from relstream.demo.tools import SERVE_BANNER, stop_command
from relstream.demo.report import CurlCall, curl_command, format_summary, token_export
from relstream.stack.local import LocalStack
from relstream.stack.process import is_alive

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.timeout(120)


class _Recorder(BaseHTTPRequestHandler):
    """Answers 200 when the bearer token is the expected one, 401 otherwise; records the request."""

    seen: list = []
    token = ""

    def do_POST(self):  # noqa: N802 - http.server's naming
        body = self.rfile.read(int(self.headers.get("content-length", 0)))
        self.seen.append({"auth": self.headers.get("authorization"), "type": self.headers.get("content-type"),
                          "body": body, "path": self.path})
        ok = self.headers.get("authorization") == f"Bearer {self.token}"
        self.send_response(200 if ok else 401)
        self.end_headers()
        self.wfile.write(b'{"ok": true}' if ok else b'{"error": "unauthorized"}')

    def log_message(self, *args):
        pass


@pytest.fixture
def recorder():
    server = HTTPServer(("127.0.0.1", 0), _Recorder)
    _Recorder.seen = []
    _Recorder.token = "demo-token-'quoted\"$x"  # a token no naive quoting survives
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def _bash(line: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", "-c", line], capture_output=True, text=True, timeout=30,
                          env={k: v for k, v in {**os.environ, **(env or {})}.items()})


def test_printed_curl_sends_the_token_from_the_environment(recorder):
    body = json.dumps({"transaction_id": 1, "note": "it's \"quoted\" $HOME `x`"})
    command = curl_command(f"{recorder}/v1/score", body)
    assert '"Authorization: Bearer $RELSTREAM_API_TOKEN"' in command  # double quotes: the shell expands it
    proc = _bash(command + " -w '\\n%{http_code}'", {"RELSTREAM_API_TOKEN": _Recorder.token})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.rsplit("\n", 1)[1] == "200"
    got = _Recorder.seen[-1]
    assert got["auth"] == f"Bearer {_Recorder.token}" and got["type"] == "application/json"
    assert got["body"].decode() == body and got["path"] == "/v1/score"


def test_the_two_pasted_lines_work_in_a_fresh_shell(recorder):
    call = CurlCall(curl_command(f"{recorder}/v1/score", "{}"), 200, "{}",
                    token_export=token_export(_Recorder.token))
    env = {k: v for k, v in os.environ.items() if k != "RELSTREAM_API_TOKEN"}
    proc = subprocess.run(["bash", "-c", f"{call.token_export}\n{call.command} -w '\\n%{{http_code}}'"],
                          capture_output=True, text=True, timeout=30, env=env)
    assert proc.stdout.rsplit("\n", 1)[1] == "200", proc.stdout + proc.stderr


def test_summary_prints_the_hand_off_only_when_serve_was_kept():
    from tests.e2e.test_report import _stream

    from relstream.demo.report import StageTiming, summarise

    stream, _ = _stream()
    kept = CurlCall("curl X", 200, "{}", token_export="export RELSTREAM_API_TOKEN=abc")
    text = format_summary(summarise("/run", stream, [StageTiming("http", 1.0)], {}, curl=kept))
    assert "still running" in text and "export RELSTREAM_API_TOKEN=abc" in text
    assert "abc" not in json.dumps(summarise("/run", stream, [], {}, curl=kept).to_dict())
    stopped = CurlCall("curl X", 200, "{}")
    assert "still running" not in format_summary(summarise("/run", stream, [], {}, curl=stopped))


def test_curl_command_refuses_a_token_variable_the_shell_cannot_expand():
    with pytest.raises(ValueError):
        curl_command("http://x", "{}", token_env="MY-TOKEN")


def test_serve_prints_its_real_port_when_configured_with_port_0(tmp_path):
    cfg = tmp_path / "relstream.yaml"
    # nothing listens on these: serve starts (degraded) and answers /healthz without them
    cfg.write_text("run_dir: %s\nredis: {url: 'redis://127.0.0.1:1/0'}\n"
                   "triton: {url: 'http://127.0.0.1:2', model_name: relstream}\n"
                   "serve: {port: 0, triton_grpc_url: '127.0.0.1:3'}\n" % (tmp_path / "run"))
    proc = subprocess.Popen([sys.executable, "-m", "relstream", "--config", str(cfg), "serve"], cwd=REPO,
                            stderr=subprocess.PIPE, text=True, start_new_session=True,
                            env={**os.environ, "RELSTREAM_API_TOKEN": "t"})
    try:
        banner = proc.stderr.readline()
        found = SERVE_BANNER.search(banner)
        assert found, banner
        url = found.group(1)
        port = int(re.search(r":(\d+)$", url).group(1))
        assert port != 0
        deadline = time.monotonic() + 60
        while True:
            try:
                r = httpx.get(f"{url}/healthz", timeout=2)
                break
            except httpx.HTTPError:
                assert time.monotonic() < deadline and proc.poll() is None, "serve did not answer"
                time.sleep(0.1)
        assert r.status_code == 200 and r.json() == {"status": "ok"}
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(30)


def test_stack_down_stops_services_adopted_by_the_stack(tmp_path):
    stack = LocalStack(tmp_path / "run", components=())
    stack.run_dir.mkdir(parents=True)
    service = subprocess.Popen(["sleep", "300"], start_new_session=True)
    try:
        stack.adopt("serve", service.pid, ["sleep", "300"], tmp_path / "serve.log")
        assert stack.services() == {"serve": service.pid}
        again = LocalStack(tmp_path / "run", components=())  # another process: `relstream stack down`
        again.down()
        assert service.wait(10) == -signal.SIGTERM
        assert not is_alive(service.pid) and again.services() == {}
    finally:
        if service.poll() is None:
            service.kill()
    with pytest.raises(ValueError):
        stack.adopt("../x", os.getpid(), [], "log")


def test_stop_command_is_pasteable(tmp_path):
    line = stop_command(tmp_path / "my run" / "relstream.yaml", tmp_path)
    assert "'" in line and line.endswith("stack down")
    proc = _bash(line.replace(" stack down", " --help"))
    assert proc.returncode == 0, proc.stderr
