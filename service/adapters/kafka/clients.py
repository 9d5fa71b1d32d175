"""Kafka clients as the service configures them: security, producers, the FastStream broker."""

from __future__ import annotations

import logging
from typing import Any

from aiokafka import (
    AIOKafkaProducer,
)
from faststream.kafka import KafkaBroker
from faststream.security import BaseSecurity, SASLPlaintext, SASLScram256, SASLScram512

from service.adapters.kafka.batches import PARTITIONER
from service.config import Settings

log = logging.getLogger(__name__)


def _password(settings: Settings) -> str | None:
    secret = settings.kafka_sasl_password
    return secret.get_secret_value() if secret else None


def security(settings: Settings) -> BaseSecurity | None:
    context = settings.kafka_ssl_context()
    if not settings.kafka_security_protocol.startswith("SASL"):
        return BaseSecurity(ssl_context=context) if context else None
    username = settings.kafka_sasl_username or ""
    password = _password(settings) or ""
    sasl = {"PLAIN": SASLPlaintext, "SCRAM-SHA-256": SASLScram256, "SCRAM-SHA-512": SASLScram512}
    return sasl[settings.kafka_sasl_mechanism](
        username, password, ssl_context=context, use_ssl=context is not None
    )


def client_options(settings: Settings) -> dict[str, Any]:
    """Connection options for plain aiokafka clients (admin, ops tools, tests)."""
    options: dict[str, Any] = {
        "bootstrap_servers": settings.kafka_bootstrap_servers,
        "security_protocol": settings.kafka_security_protocol,
        "ssl_context": settings.kafka_ssl_context(),
    }
    if settings.kafka_security_protocol.startswith("SASL"):
        options["sasl_mechanism"] = settings.kafka_sasl_mechanism
        options["sasl_plain_username"] = settings.kafka_sasl_username
        options["sasl_plain_password"] = _password(settings)
    return options


def create_producer(settings: Settings) -> AIOKafkaProducer:
    """The producer of results, dead letters and events.

    Idempotence with acks=all keeps each partition's order through retries. A plain
    aiokafka producer rather than FastStream's publish: on the hot path FastStream's
    per-message wrapping (a correlation id, a command object) was a large part of the CPU."""
    return AIOKafkaProducer(
        **client_options(settings),
        client_id=settings.kafka_client_id,
        enable_idempotence=True,
        acks="all",
        linger_ms=1,
        max_batch_size=512 * 1024,
        partitioner=PARTITIONER,
    )


def create_relay_producer(settings: Settings) -> AIOKafkaProducer:
    """The relay's own producer of events and state records.

    Not idempotent, so that it gives up on a record once its request timeout has passed
    twice (an idempotent one never does): the relay's fencing rests on that bound. Order
    holds all the same, as aiokafka sends one request at a time per partition; a retry may
    write an event twice, with the same ce_id, which consumers accept anyway."""
    return AIOKafkaProducer(
        **client_options(settings),
        client_id=f"{settings.kafka_client_id}-relay",
        enable_idempotence=False,
        acks="all",
        linger_ms=1,
        max_batch_size=512 * 1024,
        request_timeout_ms=int(settings.relay_delivery_timeout_s * 1000 / 2),
        partitioner=PARTITIONER,
    )


def create_broker(settings: Settings) -> KafkaBroker:
    # Idempotence with acks=all keeps each partition's order through producer retries.
    return KafkaBroker(
        settings.kafka_bootstrap_servers,
        security=security(settings),
        client_id=settings.kafka_client_id,
        enable_idempotence=True,
        acks="all",
        linger_ms=2,
        max_batch_size=512 * 1024,
        logger=logging.getLogger("service.kafka"),
        log_level=logging.DEBUG,
    )
