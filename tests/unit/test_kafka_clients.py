"""Every Kafka client is built by `shared.kafka_clients`, and each one a service's wiring makes
carries the production cluster's TLS and SASL."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from pydantic import SecretStr

from services.allocator import main as allocator
from services.allocator.settings import AllocatorSettings
from services.ingest import main as ingest
from services.ingest.settings import IngestSettings
from services.notifier import main as notifier
from services.notifier.settings import NotifierSettings
from services.restocker.main import create_app
from services.restocker.settings import RestockerSettings
from shared import kafka_clients
from shared.codecrypt import generate_key_settings
from shared.settings import KafkaSettings
from tests.kafka_security import problems, write_test_ca

ROOT = Path(__file__).resolve().parents[2]
CLIENT_CLASSES = {"AIOKafkaConsumer", "AIOKafkaProducer", "AIOKafkaAdminClient"}
BUILDERS = {"producer", "group_consumer", "reader", "admin", "faust_broker"}
PASSWORD = "s3cret-from-the-user-operator"


@pytest.fixture(autouse=True)
def production_environment(monkeypatch):
    """No TASLEEM_* of the test run (the embedded broker's idempotence switch, say)."""
    import os

    for name in [n for n in os.environ if n.startswith("TASLEEM_")]:
        monkeypatch.delenv(name)


def python_files() -> list[Path]:
    folders = ("shared", "services", "deploy", "bench", "chaos", "tests")
    return [p for folder in folders for p in (ROOT / folder).rglob("*.py")]


def called_name(call: ast.Call) -> str:
    func = call.func
    if isinstance(func, ast.Attribute):
        return func.attr
    return func.id if isinstance(func, ast.Name) else ""


def test_no_module_but_the_factory_constructs_a_kafka_client():
    factory = ROOT / "shared" / "kafka_clients.py"
    offenders = []
    for path in python_files():
        if path == factory:
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if not isinstance(node, ast.Call):
                continue
            name = called_name(node)
            where = f"{path.relative_to(ROOT)}:{node.lineno}"
            if name in CLIENT_CLASSES:
                offenders.append(f"{where}: {name}(...)")
            elif name == "App" and ast.unparse(node.func) == "faust.App":
                # faust builds its own clients, from the broker settings it is given
                keywords = {k.arg for k in node.keywords}
                spread = [ast.unparse(k.value) for k in node.keywords if k.arg is None]
                if keywords & {"broker", "broker_credentials"} or not any(
                    s.startswith("kafka_clients.faust_broker(") for s in spread
                ):
                    offenders.append(f"{where}: faust.App without kafka_clients.faust_broker")
    assert not offenders, "build Kafka clients with shared.kafka_clients:\n" + "\n".join(offenders)


def test_a_service_builds_its_clients_only_in_its_wiring():
    """Inside a service, the factory is called from one function, `kafka(settings)` (the faust
    app's settings from `create_app`): so the test below sees every client the service makes.
    Operator commands (cli.py) are tools, not the service."""
    offenders = []
    for path in (ROOT / "services").rglob("*.py"):
        if path.name == "cli.py":
            continue
        tree = ast.parse(path.read_text(), str(path))
        for function in ast.walk(tree):
            if not isinstance(function, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            for node in ast.walk(function):
                if (
                    isinstance(node, ast.Call)
                    and isinstance(node.func, ast.Attribute)
                    and ast.unparse(node.func.value) == "kafka_clients"
                    and node.func.attr in BUILDERS
                    and function.name not in ("kafka", "create_app")
                ):
                    offenders.append(f"{path.relative_to(ROOT)}:{node.lineno} in {function.name}")
    assert not offenders, offenders


def sasl_ssl(cafile: Path, username: str) -> dict[str, object]:
    return {
        "kafka_bootstrap": "tasleem-kafka-bootstrap:9093",
        "kafka_security_protocol": "SASL_SSL",
        "kafka_sasl_mechanism": "SCRAM-SHA-512",
        "kafka_sasl_username": username,
        "kafka_sasl_password": SecretStr(PASSWORD),
        "kafka_ssl_cafile": str(cafile),
    }


@pytest.mark.parametrize(
    ("service", "wiring", "settings_class"),
    [
        ("ingest", ingest.kafka, IngestSettings),
        ("allocator", allocator.kafka, AllocatorSettings),
        ("notifier", notifier.kafka, NotifierSettings),
    ],
)
async def test_every_client_a_service_wires_carries_tls_and_sasl(
    tmp_path, service, wiring, settings_class
):
    settings = settings_class(**sasl_ssl(write_test_ca(tmp_path / "ca.crt"), f"tasleem-{service}"))
    clients = wiring(settings)
    try:
        assert clients.clients(), service
        for client in clients.clients():
            assert problems(client, f"tasleem-{service}", PASSWORD) == [], (service, client)
        # the idempotent producer: aiokafka gives it a transaction manager for its sequences
        assert clients.producer._txn_manager is not None, "production producers are idempotent"
    finally:
        await clients.close()


def test_the_restocker_faust_app_carries_tls_and_sasl(tmp_path, monkeypatch):
    for name, value in generate_key_settings().items():
        monkeypatch.setenv(name, value)
    settings = RestockerSettings(
        **sasl_ssl(write_test_ca(tmp_path / "ca.crt"), "tasleem-restocker")
    )
    app = create_app(settings)
    assert problems(app, "tasleem-restocker", PASSWORD) == []
    assert [str(url) for url in app.conf.broker] == ["kafka://tasleem-kafka-bootstrap:9093"]


async def test_a_plain_client_fails_the_check_so_the_check_can_fail(tmp_path):
    clients = ingest.kafka(IngestSettings(kafka_bootstrap="127.0.0.1:9092"))
    try:
        assert "security_protocol=PLAINTEXT" in problems(clients.producer, "tasleem-ingest", "x")
    finally:
        await clients.close()


async def test_a_caller_may_tune_a_client_but_not_its_connection(tmp_path):
    settings = KafkaSettings(**sasl_ssl(write_test_ca(tmp_path / "ca.crt"), "tool"))
    with pytest.raises(ValueError, match="security_protocol"):
        kafka_clients.reader(settings, security_protocol="PLAINTEXT")
    tuned = kafka_clients.reader(settings, "store.config", fetch_max_wait_ms=200)
    try:
        assert tuned._fetch_max_wait_ms == 200
        assert problems(tuned, "tool", PASSWORD) == []
    finally:
        await tuned.stop()


def test_the_embedded_broker_settings_turn_idempotence_off():
    from deploy.embedded.broker import client_settings

    assert KafkaSettings(kafka_bootstrap="x:1").kafka_idempotence is True
    assert client_settings("127.0.0.1:1").kafka_idempotence is False
