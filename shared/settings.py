"""Settings base: every service reads its configuration from `TASLEEM_*` environment variables."""

from __future__ import annotations

from typing import Literal

from pydantic import SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class KafkaSettings(BaseSettings):
    """How to reach the broker, and how every client behaves there: one set for services and
    tools alike, so no client can be built without the cluster's TLS and SASL."""

    model_config = SettingsConfigDict(env_prefix="TASLEEM_", extra="ignore")

    kafka_bootstrap: str = "127.0.0.1:9092"
    # A stale consumer-group member blocks a rebalance for this long: short, so a killed
    # process's partitions move to its peers quickly.
    kafka_session_timeout_ms: int = 6000
    kafka_heartbeat_interval_ms: int = 1000
    # The embedded broker does not wake a waiting fetch when data arrives, so a long
    # fetch wait is pure latency; 10 ms costs little CPU and keeps a hop under ~10 ms.
    kafka_fetch_max_wait_ms: int = 10
    # ...but 10 ms polls cost a quarter of a core when nothing happens (ADR 0003). After a
    # second without records a consumer sends fetches that do not wait and pauses this long
    # after each empty one, and fetches with the short wait again as soon as records come.
    # 0: always the short wait, for a broker that answers a waiting fetch when data arrives
    # (Apache Kafka long-polls, so it needs no pacing).
    kafka_idle_fetch_wait_ms: int = 0
    kafka_max_batch: int = 500
    # How to reach a secured cluster (Strimzi's SCRAM-over-TLS listener); plain by default,
    # which is what the embedded broker speaks.
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    kafka_sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] = "SCRAM-SHA-512"
    kafka_sasl_username: str = ""
    kafka_sasl_password: SecretStr = SecretStr("")
    kafka_ssl_cafile: str = ""  # the cluster CA; empty = the system's trust store
    # Kafka's idempotent producer: a retried send is never written twice. Real Kafka has it;
    # the embedded broker cannot answer InitProducerId, so the embedded stack turns it off
    # (consumers deduplicate by event id either way).
    kafka_idempotence: bool = True


class ServiceSettings(KafkaSettings):
    """What every service needs: the broker, the database, and its admin server."""

    database_url: str = "postgresql://postgres@127.0.0.1:5432/tasleem"
    db_pool_min: int = 1
    db_pool_max: int = 8
    admin_host: str = "127.0.0.1"
    admin_port: int = 9100
    log_format: Literal["text", "json"] = "text"
    log_level: str = "INFO"
    shutdown_grace_s: float = 10.0
    # Objects allocated before the cyclic garbage collector runs (Python's default: 700). A
    # batch of 2,000 events allocates far more than that, and the collections cost the
    # allocator a fifth of its throughput (bench_allocator: 12.9-14.0k → 15.8-17.1k/s).
    gc_threshold: int = 50_000


class VaultKeySettings(BaseSettings):
    """Keys for codes: AES-256-GCM keys by id (the first encrypts), and the fingerprint key."""

    model_config = SettingsConfigDict(env_prefix="TASLEEM_", extra="ignore")

    # "kid1:base64key,kid2:base64key" — the first entry encrypts, every entry decrypts,
    # so a key is rotated by putting a new one in front and keeping the old one behind it.
    vault_keys: SecretStr = SecretStr("")
    # HMAC key for the code fingerprint that the unique index is built on. It never rotates:
    # a new one would make old and new fingerprints of the same code differ.
    vault_fingerprint_key: SecretStr = SecretStr("")
