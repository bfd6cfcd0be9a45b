"""What a Kafka client needs to reach the production cluster (SCRAM over TLS), checked on the
client object itself, as aiokafka or faust would connect with it."""

from __future__ import annotations

import datetime
import ssl
from pathlib import Path
from typing import Any

import faust
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from faust.transport.drivers.aiokafka import credentials_to_aiokafka_auth


def write_test_ca(path: Path) -> Path:
    """A self-signed CA certificate, standing in for Strimzi's cluster CA."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "cluster-ca")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path


def connection_of(client: Any) -> dict[str, Any]:
    """The connection options a client will really use."""
    if isinstance(client, faust.App):
        return dict(credentials_to_aiokafka_auth(client.conf.broker_credentials))
    if isinstance(client, AIOKafkaProducer):
        inner = client.client
    elif isinstance(client, AIOKafkaConsumer | AIOKafkaAdminClient):
        inner = client._client
    else:
        raise TypeError(f"not a Kafka client: {client!r}")
    return {
        "security_protocol": inner._security_protocol,
        "ssl_context": inner._ssl_context,
        "sasl_mechanism": inner._sasl_mechanism,
        "sasl_plain_username": inner._sasl_plain_username,
        "sasl_plain_password": inner._sasl_plain_password,
    }


def problems(client: Any, username: str, password: str) -> list[str]:
    """Why `client` could not log in to a SCRAM-SHA-512-over-TLS listener as `username`."""
    found = connection_of(client)
    wrong = []
    if found["security_protocol"] != "SASL_SSL":
        wrong.append(f"security_protocol={found['security_protocol']}")
    context = found["ssl_context"]
    if not isinstance(context, ssl.SSLContext) or context.verify_mode != ssl.CERT_REQUIRED:
        wrong.append("no TLS context that verifies the broker")
    elif not context.get_ca_certs():
        wrong.append("TLS context without the cluster CA")
    if found["sasl_mechanism"] != "SCRAM-SHA-512":
        wrong.append(f"sasl_mechanism={found['sasl_mechanism']}")
    if (found["sasl_plain_username"], found["sasl_plain_password"]) != (username, password):
        wrong.append(f"credentials of {found['sasl_plain_username']!r}")
    return wrong
