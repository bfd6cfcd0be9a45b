"""The operator commands of a local stack use the admin token its services are given."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import ClassVar

from typer.testing import CliRunner

from deploy.cli import app
from deploy.embedded.stack import Stack, StackOptions


class _Notifier(BaseHTTPRequestHandler):
    """Stands in for the notifier's admin API: records what the CLI sent."""

    seen: ClassVar[list[str]] = []

    def do_POST(self) -> None:
        self.seen.append(self.headers.get("Authorization", ""))
        body = json.dumps({"resent": True}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


def test_notify_resend_sends_the_token_tasleem_up_gives_the_notifier(tmp_path, monkeypatch):
    monkeypatch.delenv("TASLEEM_NOTIFIER_ADMIN_TOKEN", raising=False)
    stack = Stack(StackOptions(home=tmp_path, database_url="unused", kafka_bootstrap="unused"))
    stack.ports["notifier"] = 1
    given = stack.service_env("http://127.0.0.1:1")["notifier"]["TASLEEM_NOTIFIER_ADMIN_TOKEN"]
    # the README's token: `Authorization: Bearer $(cat .tasleem/admin_token)`
    assert (tmp_path / "admin_token").read_text().strip() == given
    server = HTTPServer(("127.0.0.1", 0), _Notifier)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        notifier = f"http://127.0.0.1:{server.server_port}"
        (tmp_path / "stack.json").write_text(json.dumps({"notifier": notifier}))
        result = CliRunner().invoke(
            app,
            [
                "notify",
                "resend",
                "standard:s:1",
                "--phone",
                "+966500000001",
                "--home",
                str(tmp_path),
            ],
        )
    finally:
        server.shutdown()
        server.server_close()
    assert result.exit_code == 0, result.output
    assert _Notifier.seen == [f"Bearer {given}"]
