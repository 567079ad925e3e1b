"""Kafka client identity settings and the connection config every client is built from."""
import pytest

from common.kafka import KafkaCredentialsMissing, connection_config
from common.settings import Settings


def settings(**kw) -> Settings:
    return Settings(_env_file=None, **kw)


def test_sasl_identity_becomes_librdkafka_settings():
    conf = connection_config(settings(kafka_bootstrap_servers="127.0.0.1:1", kafka_sasl_username="load",
                                      kafka_sasl_password="pw"))
    assert conf == {"bootstrap.servers": "127.0.0.1:1", "security.protocol": "SASL_PLAINTEXT",
                    "sasl.mechanism": "SCRAM-SHA-512", "sasl.username": "load", "sasl.password": "pw"}


def test_plaintext_has_no_credentials():
    conf = connection_config(settings(kafka_security_protocol="PLAINTEXT", kafka_sasl_username="x",
                                      kafka_sasl_password="y"))
    assert not [k for k in conf if k.startswith("sasl.")]


def test_sasl_without_credentials_is_a_clear_error():
    with pytest.raises(KafkaCredentialsMissing, match="KAFKA_SASL_USERNAME and KAFKA_SASL_PASSWORD"):
        connection_config(settings(kafka_sasl_username="load"))


def test_librdkafka_names_apply(monkeypatch):
    monkeypatch.setenv("security.protocol", "SASL_SSL")
    monkeypatch.setenv("sasl.mechanism", "PLAIN")
    monkeypatch.setenv("sasl.username", "bob")
    monkeypatch.setenv("sasl.password", "hunter2")
    s = settings()
    assert (s.kafka_security_protocol, s.kafka_sasl_mechanism, s.kafka_sasl_username) == ("SASL_SSL", "PLAIN", "bob")
    assert s.kafka_sasl_password.get_secret_value() == "hunter2"


def test_the_project_names_apply_and_the_password_is_not_printed(monkeypatch):
    monkeypatch.setenv("KAFKA_SASL_USERNAME", "transform")
    monkeypatch.setenv("KAFKA_SASL_PASSWORD", "s3cr3t-value")
    s = settings()
    assert s.kafka_sasl_username == "transform"
    assert "s3cr3t-value" not in repr(s) and "s3cr3t-value" not in str(s.model_dump())
