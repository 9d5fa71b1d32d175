"""Every knob of the service, read from the environment (and an optional `.env`)."""

from __future__ import annotations

import ssl
from functools import cached_property
from typing import Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from service.domain.commands import valid_organization_id

SslMode = Literal["disable", "prefer", "require", "verify-ca", "verify-full"]


# Where the JSON Schemas of docs/schemas/ say they live (their $id); users publish them.
SCHEMAS_BASE = "https://customer-groups.invalid/schemas/v1"


class Settings(BaseSettings):
    # A refused value is not echoed: API_TOKENS and DATABASE_URL hold secrets.
    model_config = SettingsConfigDict(env_file=".env", extra="ignore", hide_input_in_errors=True)

    database_url: SecretStr = SecretStr(
        "postgresql://customer_groups:customer_groups@127.0.0.1:55432/customer_groups?sslmode=disable"
    )
    database_pool_min: int = Field(default=2, ge=1)
    database_pool_max: int = Field(default=10, ge=1)
    database_ssl_mode: SslMode | None = None
    database_ssl_root_cert: str | None = None

    kafka_bootstrap_servers: str = "127.0.0.1:9092"
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    kafka_sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] = "PLAIN"
    kafka_sasl_username: str | None = None
    kafka_sasl_password: SecretStr | None = None
    kafka_ssl_cafile: str | None = None
    kafka_ssl_certfile: str | None = None
    kafka_ssl_keyfile: str | None = None
    kafka_client_id: str = "customer-groups"
    kafka_consumer_group: str = "customer-groups"

    topic_commands: str = "customer-groups.commands"
    topic_results: str = "customer-groups.command-results"
    topic_events: str = "customer-groups.events"
    topic_dlq: str = "customer-groups.commands.dlq"
    topic_state: str = "customer-groups.state"
    topic_partitions_commands: int = Field(default=6, ge=1)
    topic_partitions_events: int = Field(default=6, ge=1)
    topic_partitions_results: int = Field(default=6, ge=1)
    topic_replication_factor: int = Field(default=1, ge=1)
    topic_auto_create: bool = True

    ce_source: str = "customer-groups"
    # Events carry ce_dataschema = this + "/event.schema.json" (docs/schemas/); empty: none.
    ce_dataschema_base: str = Field(
        default=SCHEMAS_BASE, max_length=1000, pattern=r"^([a-z][a-z0-9+.-]*://[!-~]+)?$"
    )

    command_batch_max: int = Field(default=2000, ge=1)
    command_batch_timeout_ms: int = Field(default=20, ge=1)
    command_fetch_wait_ms: int = Field(default=5, ge=0)
    command_lanes: int = Field(default=2, ge=1)
    command_max_bytes: int = Field(default=1024 * 1024, ge=1024)
    processed_commands_retention_days: float = Field(default=7, gt=0)
    # Where a command partition with no committed offset starts. "retention": at its first
    # command within PROCESSED_COMMANDS_RETENTION_DAYS, as older ones may apply a second time;
    # "earliest": at its beginning, for when those were never applied (a restored database).
    command_start_without_offset: Literal["retention", "earliest"] = "retention"
    outbox_retention_days: float = Field(default=7, gt=0)
    prune_interval_s: float = Field(default=60, gt=0)
    prune_batch_size: int = Field(default=5000, ge=1)

    # Who publishes the outbox. "external" (Debezium, say) turns our relay off wherever it
    # would run, and the pruner there then ages rows out by occurred_at, as nothing marks
    # them published.
    outbox_publisher: Literal["relay", "external"] = "relay"
    relay_enabled: bool = True
    relay_batch_size: int = Field(default=2000, ge=1)
    relay_poll_min_s: float = Field(default=0.005, gt=0)
    # Unset: 0.2 s with a consumer in the same process (its commits wake the relay), 0.01 s
    # in a process of its own, where polls are the only way it hears of commits.
    relay_poll_max_s: float | None = Field(default=None, gt=0)
    relay_lock_retry_s: float = Field(default=1.0, gt=0)
    # Kafka slower than this to acknowledge a batch marks the relay degraded (it keeps waiting).
    relay_ack_timeout_s: float = Field(default=5.0, gt=0)
    relay_publish_state: bool = True
    # The longest an event the relay handed to Kafka may take to arrive; after it, the
    # relay's producer gives up on it. A relay that takes over from one that did not hand
    # over cleanly waits this long before it publishes, so no old event lands after a newer.
    relay_delivery_timeout_s: float = Field(default=10.0, ge=1.0)

    http_enabled: bool = True
    http_host: str = "0.0.0.0"  # noqa: S104 - a service listens on all interfaces by default
    http_port: int = Field(default=8080, ge=0, le=65535)
    http_command_timeout_s: float = Field(default=5.0, gt=0)
    api_tokens: SecretStr = SecretStr("")
    # OpenID Connect bearer tokens (JWTs), on when an issuer and its keys are set.
    oidc_issuer: str | None = None
    oidc_audience: str | None = None
    oidc_jwks: str | None = None  # a file, or an http(s) URL such as the issuer's jwks_uri
    oidc_organization_claim: str = "org_id"
    oidc_algorithms: str = "RS256,ES256,PS256,EdDSA"
    oidc_leeway_s: float = Field(default=30, ge=0, le=300)
    oidc_jwks_cache_s: float = Field(default=300, gt=0)

    shutdown_timeout_s: float = Field(default=10.0, gt=0)

    log_level: str = "INFO"
    log_json: bool = False

    @field_validator("kafka_bootstrap_servers")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must not be empty")
        return value.strip()

    @field_validator("api_tokens")
    @classmethod
    def _tokens_well_formed(cls, value: SecretStr) -> SecretStr:
        parse_api_tokens(value.get_secret_value())
        return value

    @model_validator(mode="after")
    def _oidc_complete(self) -> Settings:
        given = [self.oidc_issuer, self.oidc_audience, self.oidc_jwks]
        if any(given) and not all(given):
            raise ValueError("OIDC_ISSUER, OIDC_AUDIENCE and OIDC_JWKS go together")
        asymmetric = ("RS", "PS", "ES", "EdDSA")
        for algorithm in self.oidc_algorithm_list:
            if not algorithm.startswith(asymmetric):
                raise ValueError(f"OIDC_ALGORITHMS: {algorithm!r} is not a public-key algorithm")
        return self

    @property
    def oidc_enabled(self) -> bool:
        return bool(self.oidc_issuer and self.oidc_audience and self.oidc_jwks)

    @property
    def oidc_algorithm_list(self) -> list[str]:
        return [a.strip() for a in self.oidc_algorithms.split(",") if a.strip()]

    @property
    def topics(self) -> tuple[str, ...]:
        """Every topic the service reads or writes."""
        return (
            self.topic_commands,
            self.topic_results,
            self.topic_events,
            self.topic_dlq,
            self.topic_state,
        )

    def namespaced(self, prefix: str) -> Settings:
        """A copy whose topics and consumer group are `prefix`'s own (benchmarks, tests)."""
        return self.model_copy(
            update={
                "kafka_consumer_group": f"{prefix}-service",
                "topic_commands": f"{prefix}.commands",
                "topic_results": f"{prefix}.command-results",
                "topic_events": f"{prefix}.events",
                "topic_dlq": f"{prefix}.commands.dlq",
                "topic_state": f"{prefix}.state",
            }
        )

    def environment(self) -> dict[str, str]:
        """These settings as the environment variables a child process reads them from."""
        variables: dict[str, str] = {}
        for name in type(self).model_fields:
            value = getattr(self, name)
            if value is None:
                continue
            if isinstance(value, SecretStr):
                value = value.get_secret_value()
            variables[name.upper()] = str(value).lower() if isinstance(value, bool) else str(value)
        return variables

    @cached_property
    def token_organizations(self) -> dict[str, str]:
        return parse_api_tokens(self.api_tokens.get_secret_value())

    def kafka_ssl_context(self) -> ssl.SSLContext | None:
        if self.kafka_security_protocol not in ("SSL", "SASL_SSL"):
            return None
        context = ssl.create_default_context(cafile=self.kafka_ssl_cafile)
        if self.kafka_ssl_certfile:
            context.load_cert_chain(self.kafka_ssl_certfile, self.kafka_ssl_keyfile)
        return context

    def postgres_ssl(self) -> ssl.SSLContext | SslMode | None:
        mode = self.database_ssl_mode
        if mode is None or mode in ("disable", "prefer", "require"):
            return mode
        context = ssl.create_default_context(cafile=self.database_ssl_root_cert)
        context.check_hostname = mode == "verify-full"
        return context


def parse_api_tokens(text: str) -> dict[str, str]:
    """`token=organization_id,...` as {token: organization_id}; blank entries are skipped.

    Split at the last '=', since an organization id has none and a token (base64) may end
    in some. Errors name the entry by position, never by its token."""
    pairs: dict[str, str] = {}
    for position, item in enumerate(text.split(","), start=1):
        if not item.strip():
            continue
        token, sep, organization_id = (part.strip() for part in item.rpartition("="))
        where = f"API_TOKENS entry {position}"
        if not sep or not token:
            raise ValueError(f"{where} must be TOKEN=ORGANIZATION_ID")
        if not valid_organization_id(organization_id):
            raise ValueError(
                f"{where}: organization id {organization_id!r} must be 1-64 characters"
                " of [A-Za-z0-9_.:-]"
            )
        if token in pairs:
            raise ValueError(f"{where} repeats the token of an earlier entry")
        pairs[token] = organization_id
    return pairs
