"""docker-compose.yaml cannot run here (no Docker engine): hold it to the native stack instead."""
import re
from pathlib import Path

import yaml

from common.settings import Settings
from cryptopipe.stack import paths

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yaml").read_text())


def test_compose_has_every_service_the_readme_names():
    services = set(COMPOSE["services"])
    assert {"kafka", "postgres", "s3proxy", "pipeline", "airflow-api-server", "airflow-scheduler",
            "airflow-dag-processor", "airflow-triggerer", "sim"} <= services
    readme = (ROOT / "README.md").read_text()
    for name in ("kafka", "postgres", "s3proxy", "airflow-api-server", "pipeline"):
        assert name in readme


def test_published_ports_bind_loopback_and_match_the_native_stack():
    published = {}
    for name, svc in COMPOSE["services"].items():
        for port in svc.get("ports", []):
            host, hport, cport = port.split(":")
            assert host == "127.0.0.1", f"{name} publishes {port} beyond loopback"
            published[name] = int(hport)
    # compose publishes the default ports (the native stack moves them by CRYPTOPIPE_PORT_OFFSET)
    assert published["kafka"] == paths.KAFKA_PORT - paths.PORT_OFFSET
    assert published["postgres"] == paths.POSTGRES_PORT - paths.PORT_OFFSET
    assert published["s3proxy"] == paths.S3_PORT - paths.PORT_OFFSET
    assert published["airflow-api-server"] == paths.AIRFLOW_PORT - paths.PORT_OFFSET
    assert published["sim"] == paths.SIM_PORT - paths.PORT_OFFSET
    assert published["pipeline"] == paths.API_PORT_BASE      # the prices server (CRYPTOPIPE_API_PORT aside)


def test_pipeline_env_names_are_settings_fields():
    env = COMPOSE["services"]["pipeline"]["environment"]
    fields = {f.upper() for f in Settings.model_fields}
    for name in ("KAFKA_BOOTSTRAP_SERVERS", "POSTGRES_DSN", "S3_ENDPOINT_URL", "S3_BUCKET", "AWS_ACCESS_KEY_ID",
                 "AWS_SECRET_ACCESS_KEY", "BINANCE_WS_URL", "BINANCE_REST_URL", "KUCOIN_REST_URL", "SYMBOLS",
                 "SUPERVISOR_SOCKET", "API_HOST", "API_PORT"):
        assert name in env and name in fields


def test_no_secret_literal_in_compose():
    text = (ROOT / "docker-compose.yaml").read_text()
    found = re.findall(r"^\s*([A-Z_]*(?:PASSWORD|SECRET|FERNET_KEY|CREDENTIAL)[A-Z_]*):\s*(\S+)", text, re.M)
    assert found, "expected the secret variables to be declared"
    for name, value in found:
        assert value.startswith("${"), f"literal secret in compose: {name}: {value}"


def test_airflow_connections_match_the_native_names():
    env = COMPOSE["services"]["airflow-scheduler"]["environment"]
    assert {"AIRFLOW_CONN_CRYPTO_POSTGRES", "AIRFLOW_CONN_CRYPTO_S3", "AIRFLOW_CONN_CRYPTO_KAFKA"} <= set(env)


def test_pipeline_programs_are_the_design_names():
    conf = (ROOT / "streaming" / "supervisord.conf").read_text()
    programs = re.findall(r"^\[program:([\w-]+)\]", conf, re.M)
    assert programs == ["extract-binance", "extract-kucoin", "transform", "load", "archive", "api"]
    group = re.search(r"^\[group:pipeline\]\nprograms=(.*)$", conf, re.M).group(1).split(",")
    assert group == programs


def test_the_prices_server_is_in_the_pipeline_image_and_the_native_stack():
    from cryptopipe.stack.supervisor import PIPELINE_PROGRAMS

    assert "api" in PIPELINE_PROGRAMS
    conf = (ROOT / "streaming" / "supervisord.conf").read_text()
    assert "command=%(ENV_CRYPTOPIPE_PYTHON)s -m cryptopipe serve" in conf
    env = COMPOSE["services"]["pipeline"]["environment"]
    assert env["API_PORT"] == str(paths.API_PORT_BASE)


def test_kafka_asks_who_is_writing_as_natively():
    env = COMPOSE["services"]["kafka"]["environment"]
    protocols = dict(item.split(":") for item in env["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"].split(","))
    assert set(protocols.values()) == {"SASL_PLAINTEXT"}
    assert env["KAFKA_SASL_ENABLED_MECHANISMS"] == "SCRAM-SHA-512"
    assert env["KAFKA_LISTENER_NAME_INTERNAL_SASL_ENABLED_MECHANISMS"] == "PLAIN"
    assert env["KAFKA_LISTENER_NAME_CONTROLLER_SASL_ENABLED_MECHANISMS"] == "PLAIN"
    assert env["KAFKA_AUTHORIZER_CLASS_NAME"].endswith("StandardAuthorizer")
    assert env["KAFKA_SUPER_USERS"] == "User:broker;User:admin"
    assert str(env["KAFKA_ALLOW_EVERYONE_IF_NO_ACL_FOUND"]).lower() == "false"
    fields = {f.upper() for f in Settings.model_fields}
    for name in ("KAFKA_SECURITY_PROTOCOL", "KAFKA_SASL_MECHANISM", "KAFKA_SASL_USERNAME", "KAFKA_SASL_PASSWORD"):
        assert name in fields


def test_compose_gives_every_identity_its_password():
    from cryptopipe.stack.kafka_auth import password_keys

    pipeline_conf = (ROOT / "streaming" / "supervisord.conf").read_text()
    wanted = set(re.findall(r"%\(ENV_(CRYPTOPIPE_KAFKA_PASSWORD_\w+)\)s", pipeline_conf))
    assert wanted and wanted <= set(COMPOSE["services"]["pipeline"]["environment"])
    init = COMPOSE["services"]["init"]
    assert set(password_keys()) <= set(init["environment"])          # it creates every user
    assert "cryptopipe.stack.kafka_auth" in " ".join(init["command"])
    airflow = COMPOSE["services"]["airflow-scheduler"]["environment"]
    assert airflow["KAFKA_SASL_USERNAME"] == "airflow"
    assert '"sasl.username": "airflow"' in airflow["AIRFLOW_CONN_CRYPTO_KAFKA"]
