"""One settings object for every component.

Values come from the environment first, then from the file the local stack writes at `make up`
(`$CRYPTOPIPE_HOME/stack.env`, mode 0600, outside git), then from the defaults below, which point
at the live exchanges and at the local stack's ports.
"""
from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path

from pydantic import AliasChoices, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict
from typing import Annotated

REPO_ROOT = Path(__file__).resolve().parent.parent


def stack_home() -> Path:
    """Where the local stack keeps data, logs and generated secrets (git-ignored)."""
    return Path(os.environ.get("CRYPTOPIPE_HOME", REPO_ROOT / ".stack")).resolve()


def cache_home() -> Path:
    """Downloads (Maven artifacts, the venv) live here, outside the repository."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(os.environ.get("CRYPTOPIPE_CACHE", Path(base) / "cryptopipe")).resolve()


def port_offset() -> int:
    """CRYPTOPIPE_PORT_OFFSET moves every port of the stack (for a second stack on one machine,
    or when 5432/8080/9092 are taken), the daemons' metrics ports included. Remembered in
    $CRYPTOPIPE_HOME/port_offset by `stack up`, so later commands on the same stack need not
    repeat it."""
    raw = os.environ.get("CRYPTOPIPE_PORT_OFFSET")
    remembered = stack_home() / "port_offset"
    if raw is None and remembered.is_file():
        raw = remembered.read_text().strip()
    try:
        offset = int(raw or 0)
    except ValueError:
        raise SystemExit(f"CRYPTOPIPE_PORT_OFFSET must be a whole number, got {raw[:20]!r}") from None
    if not 0 <= offset <= 40000:
        raise SystemExit(f"CRYPTOPIPE_PORT_OFFSET must be between 0 and 40000, got {offset}")
    return offset


PROCESS_PORT_STRIDE = 100


def metrics_port(base: int) -> int:
    """A daemon's default /metrics port (9101-9105 on the default stack), moved with the stack;
    the Nth process of a daemon run several times (CRYPTOPIPE_PROCESS_NUM, supervisord's
    process_num) adds N * 100: load_01 serves on 9204."""
    raw = os.environ.get("CRYPTOPIPE_PROCESS_NUM") or "0"
    try:
        num = int(raw)
    except ValueError:
        raise SystemExit(f"CRYPTOPIPE_PROCESS_NUM must be a whole number, got {raw[:20]!r}") from None
    if not 0 <= num < 50:
        raise SystemExit(f"CRYPTOPIPE_PROCESS_NUM must be from 0 to 49, got {num}")
    return base + port_offset() + PROCESS_PORT_STRIDE * num


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_file=str(stack_home() / "stack.env"),
        env_file_encoding="utf-8",
        extra="ignore",
        case_sensitive=False,
    )

    # exchanges (live by default; `make up SOURCE=sim` points these at the simulator)
    binance_ws_url: str = "wss://stream.binance.com:9443"
    binance_rest_url: str = "https://api.binance.com"
    kucoin_rest_url: str = "https://api.kucoin.com"
    symbols: Annotated[list[str], NoDecode] = Field(default_factory=list)

    # local stack
    kafka_bootstrap_servers: str = "127.0.0.1:9092"
    # Kafka client identity (`make up` writes the stack's admin identity to stack.env; each daemon
    # gets its own through its environment). librdkafka's own names (`sasl.username`, ...) also apply.
    kafka_security_protocol: str = Field("SASL_PLAINTEXT", validation_alias=AliasChoices(
        "kafka_security_protocol", "security.protocol"))
    kafka_sasl_mechanism: str = Field("SCRAM-SHA-512", validation_alias=AliasChoices(
        "kafka_sasl_mechanism", "sasl.mechanism", "sasl.mechanisms"))
    kafka_sasl_username: str = Field("", validation_alias=AliasChoices("kafka_sasl_username", "sasl.username"))
    kafka_sasl_password: SecretStr = Field(SecretStr(""), validation_alias=AliasChoices(
        "kafka_sasl_password", "sasl.password"))
    postgres_dsn: str = "postgresql://cryptopipe@127.0.0.1:5432/cryptopipe"
    s3_endpoint_url: str = "http://127.0.0.1:9000"
    s3_bucket: str = "cryptopipe"
    s3_region: str = "us-east-1"
    aws_access_key_id: str = ""
    aws_secret_access_key: str = ""

    # Kafka layout
    topic_partitions: int = 3
    raw_retention_ms: int = 7 * 24 * 3600 * 1000

    # archiver: seconds an S3 object may stay open before it is uploaded (and its offsets committed)
    archive_max_age_seconds: float = Field(60.0, gt=0, le=3600)

    # ticks table retention (days of daily partitions kept)
    ticks_retention_days: int = 30

    # supervisord control socket
    supervisor_socket: str = str(stack_home() / "run" / "supervisor.sock")

    # backfill limits
    backfill_max_window_hours: int = 24 * 7

    # reconciliation (backfill/reconcile.py, DAG crypto_reconcile, `cryptopipe reconcile`): every
    # minute closed at least `reconcile_settle_seconds` ago gets the exchange's own candle
    reconcile: bool = True                      # RECONCILE=off: live prices only, no reconciliation
    reconcile_settle_seconds: int = Field(120, ge=0, le=24 * 3600)
    reconcile_interval_minutes: int = Field(5, ge=1, le=24 * 60)   # crypto_reconcile's schedule
    # where the first run of an exchange starts: its first stream session's minute, at most this far back
    reconcile_lookback_hours: float = Field(6.0, gt=0, le=24 * 31)
    # the most minutes one run reconciles per exchange (a run costs one request per symbol per
    # 1,000 (Binance) / 1,500 (KuCoin) minutes, so catching up after downtime is cheap)
    reconcile_max_minutes: int = Field(360, ge=1, le=24 * 60)
    # the prices server (`cryptopipe serve`, supervisord program `api`)
    api_host: str = "127.0.0.1"
    api_port: int = Field(8000, ge=1, le=65535)
    api_db_pool_size: int = Field(4, ge=1, le=64)
    api_max_connections: int = Field(1000, ge=1)          # open websockets
    api_max_symbols: int = Field(200, ge=1)               # symbols per request / per websocket subscription
    api_max_candle_window_hours: int = Field(24 * 7, ge=1)
    api_candles_page_size: int = Field(1000, ge=1, le=10_000)
    api_client_queue: int = Field(5000, ge=10)            # ticks waiting per websocket before it is conflated
    api_slow_client_seconds: float = Field(10.0, gt=0)    # conflated and still behind this long: disconnected
    api_health_cache_seconds: float = Field(5.0, ge=0)

    # cross-exchange validation (DAG crypto_cross_check)
    cross_check_threshold_bps: float = Field(50.0, gt=0)
    cross_check_min_minutes: int = Field(3, ge=1)

    @field_validator("*")
    @classmethod
    def _check_url(cls, value, info):
        # every exchange endpoint (`<exchange>_ws_url`, `<exchange>_rest_url`) is a URL of its kind
        if info.field_name.endswith("_ws_url"):
            schemes = ("ws://", "wss://")
        elif info.field_name.endswith("_rest_url"):
            schemes = ("http://", "https://")
        else:
            return value
        if not str(value).startswith(schemes):
            raise ValueError(f"{info.field_name.upper()} must start with {' or '.join(schemes)}, got {value[:80]!r}")
        return value

    @field_validator("symbols", mode="before")
    @classmethod
    def _split_symbols(cls, value):
        if value is None or value == "":
            return []
        if isinstance(value, str):
            return [s.strip() for s in value.split(",") if s.strip()]
        return list(value)


# Settings the local stack sets itself on every `make up` (its ports, the generated logins, the
# loopback address it binds): `make up` never takes them from its caller's environment (README,
# "Configuration"). Every other field is a variable `make up` passes on to the stack.
STACK_OWNED: frozenset[str] = frozenset({
    "kafka_bootstrap_servers", "kafka_security_protocol", "kafka_sasl_mechanism", "kafka_sasl_username",
    "kafka_sasl_password", "postgres_dsn", "s3_endpoint_url", "aws_access_key_id", "aws_secret_access_key",
    "supervisor_socket", "api_host", "api_port",
})


def variable(field: str) -> str:
    """The environment variable (and stack.env key) of a settings field."""
    return field.upper()


def stack_variables() -> tuple[str, ...]:
    """The variables `make up` takes from its environment and remembers in stack.env."""
    return tuple(variable(f) for f in Settings.model_fields if f not in STACK_OWNED)


def owned_variables() -> tuple[str, ...]:
    """The variables of the settings the local stack sets itself (plus librdkafka's names for them)."""
    names = []
    for f in sorted(STACK_OWNED):
        names.append(variable(f))
        alias = Settings.model_fields[f].validation_alias
        names += [a.upper() for a in getattr(alias, "choices", ()) if isinstance(a, str) and a != f]
    return tuple(names)


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
