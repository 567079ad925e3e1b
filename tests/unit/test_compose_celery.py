"""docker-compose.celery.yaml (Airflow on Celery workers) laid over docker-compose.yaml, held to the
base file and to the native stack. No Docker engine here: the files are resolved as Compose resolves
them (a later file merged onto an earlier one, `extends` taken from the file it names) for the keys
they use, and a key this resolver does not know fails the test instead of being merged wrongly."""
import copy
import importlib.metadata
import importlib.resources
import re
from pathlib import Path

import pytest
import yaml

from cryptopipe.stack import paths
from cryptopipe.stack.component import StackContext

ROOT = Path(__file__).resolve().parents[2]
BASE_FILE, CELERY_FILE = "docker-compose.yaml", "docker-compose.celery.yaml"

# how Compose merges a service's key from a later definition onto an earlier one (compose-spec merge rules)
MAPPINGS = {"environment", "depends_on", "healthcheck", "build"}   # merged key by key, the later wins
SEQUENCES = {"ports", "profiles"}                                  # the later's items appended
VOLUMES = "volumes"                                                # merged by mount target, the later wins
REPLACED = {"command", "image", "entrypoint"}                      # the later replaces
# `extends` does not bring depends_on, say Compose's docs (compose-go 2.x brings it all the same): the
# celery file spells out every dependency of a service it extends, so both readings give the same graph
NOT_EXTENDED = {"depends_on"}


def _load(name: str) -> dict:
    return yaml.safe_load((ROOT / name).read_text())


def _merge(earlier: dict, later: dict, where: str) -> dict:
    out = copy.deepcopy(earlier)
    for key, value in later.items():
        if key in MAPPINGS:
            out[key] = {**out.get(key, {}), **value}
        elif key in SEQUENCES:
            out[key] = out.get(key, []) + [v for v in value if v not in out.get(key, [])]
        elif key == VOLUMES:
            mounts = {v.split(":")[1]: v for v in out.get(key, []) + value}
            out[key] = list(mounts.values())
        elif key in REPLACED:
            out[key] = value
        else:
            raise AssertionError(f"{where}: key {key!r} has no merge rule here: add Compose's rule for it")
    return out


def resolve(*files: str) -> dict[str, dict]:
    """The services of `files` laid one over another, as `docker compose -f a -f b` would see them."""
    services: dict[str, dict] = {}
    for name in files:
        for svc_name, svc in _load(name)["services"].items():
            svc = dict(svc)
            ext = svc.pop("extends", None)
            if ext:
                source = _load(ext.get("file", name))["services"][ext["service"]]
                inherited = {k: v for k, v in source.items() if k not in NOT_EXTENDED}
                svc = _merge(inherited, svc, f"{name}:{svc_name}")
            services[svc_name] = _merge(services.get(svc_name, {}), svc, f"{name}:{svc_name}")
    return services


BASE = resolve(BASE_FILE)
CELERY = resolve(BASE_FILE, CELERY_FILE)
AIRFLOW_DOCKERFILE = "docker/Dockerfile.airflow"


def airflow_services(services: dict[str, dict]) -> dict[str, dict]:
    return {n: s for n, s in services.items() if s.get("build", {}).get("dockerfile") == AIRFLOW_DOCKERFILE}


def native_airflow_env(tmp_path) -> dict[str, str]:
    from cryptopipe.stack.airflow import airflow_env

    env = {k: f"test-{k}" for k in ("CRYPTOPIPE_AIRFLOW_FERNET_KEY", "CRYPTOPIPE_AIRFLOW_JWT_SECRET",
                                     "CRYPTOPIPE_PG_PASSWORD", "CRYPTOPIPE_AIRFLOW_DB_PASSWORD",
                                     "CRYPTOPIPE_KAFKA_PASSWORD_AIRFLOW")}
    return airflow_env(StackContext(paths=paths.Paths(home=tmp_path, cache=tmp_path), env=env))


def test_the_celery_file_switches_every_airflow_process_and_the_rest_keeps_the_local_executor(tmp_path):
    assert native_airflow_env(tmp_path)["AIRFLOW__CORE__EXECUTOR"] == "LocalExecutor"
    base = airflow_services(BASE)
    assert {"airflow-init", "airflow-api-server", "airflow-scheduler", "airflow-dag-processor",
            "airflow-triggerer"} == set(base)
    assert {s["environment"]["AIRFLOW__CORE__EXECUTOR"] for s in base.values()} == {"LocalExecutor"}
    celery = airflow_services(CELERY)
    assert set(celery) == set(base) | {"airflow-worker", "airflow-flower"}
    assert {s["environment"]["AIRFLOW__CORE__EXECUTOR"] for s in celery.values()} == {"CeleryExecutor"}
    # the celery file adds services and settings; everything that is not Airflow stays as it was
    for name in set(BASE) - set(base):
        assert CELERY[name] == BASE[name], name


def test_a_worker_runs_tasks_with_the_scheduler_image_mounts_and_environment():
    scheduler, worker = CELERY["airflow-scheduler"], CELERY["airflow-worker"]
    assert worker["build"] == scheduler["build"] and worker["image"] == scheduler["image"]
    assert worker["volumes"] == scheduler["volumes"]          # the repo (DAGs, plugins) and the supervisor socket
    extra = {k: v for k, v in worker["environment"].items() if scheduler["environment"].get(k) != v}
    assert extra == {"DUMB_INIT_SETSID": "0"}                 # the image's init, not a setting tasks read
    assert set(scheduler["environment"]) <= set(worker["environment"])
    env = worker["environment"]
    # the DAGs and plugins the native stack serves from the repo, under the repo's mount
    repo_mount = next(v.split(":")[1] for v in worker["volumes"] if v.startswith("./:"))
    assert env["PYTHONPATH"] == repo_mount
    assert env["AIRFLOW__CORE__DAGS_FOLDER"] == f"{repo_mount}/dags"
    assert env["AIRFLOW__CORE__PLUGINS_FOLDER"] == f"{repo_mount}/plugins"
    assert (ROOT / "dags").is_dir() and (ROOT / "plugins").is_dir()
    # the connections and the Kafka identity the tasks use, as in the scheduler of the local stack
    assert {"AIRFLOW_CONN_CRYPTO_POSTGRES", "AIRFLOW_CONN_CRYPTO_S3", "AIRFLOW_CONN_CRYPTO_KAFKA"} <= set(env)
    assert env["KAFKA_SASL_USERNAME"] == "airflow"
    # a worker's task reports to the api-server's execution API, the one the base file's scheduler uses
    assert env["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"].startswith("http://airflow-api-server:")


def test_native_settings_reach_a_worker_under_the_same_names(tmp_path):
    native = native_airflow_env(tmp_path)
    worker = CELERY["airflow-worker"]["environment"]
    for name in ("PYTHONPATH", "AIRFLOW__CORE__DAGS_FOLDER", "AIRFLOW__CORE__PLUGINS_FOLDER",
                 "AIRFLOW__CORE__FERNET_KEY", "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", "AIRFLOW__API_AUTH__JWT_SECRET",
                 "AIRFLOW__CORE__EXECUTION_API_SERVER_URL", "KAFKA_SECURITY_PROTOCOL", "KAFKA_SASL_MECHANISM",
                 "KAFKA_SASL_USERNAME", "KAFKA_SASL_PASSWORD"):
        assert name in native and name in worker, name
    assert Path(native["AIRFLOW__CORE__DAGS_FOLDER"]).name == Path(worker["AIRFLOW__CORE__DAGS_FOLDER"]).name
    assert Path(native["AIRFLOW__CORE__PLUGINS_FOLDER"]).name == Path(worker["AIRFLOW__CORE__PLUGINS_FOLDER"]).name
    assert native["KAFKA_SASL_USERNAME"] == worker["KAFKA_SASL_USERNAME"]


def test_workers_scale_and_serve_every_queue_a_task_can_name():
    worker = CELERY["airflow-worker"]
    assert "container_name" not in worker and "ports" not in worker       # `--scale airflow-worker=N`
    command = worker["command"]
    assert command[:2] == ["celery", "worker"]
    served = set(command[command.index("--queues") + 1].split(","))
    default = worker["environment"]["AIRFLOW__OPERATORS__DEFAULT_QUEUE"]
    named = set()
    for folder in ("dags", "plugins"):
        for py in (ROOT / folder).rglob("*.py"):
            named |= set(re.findall(r"\bqueue[\"']?\s*[=:]\s*[\"']([^\"']+)[\"']", py.read_text()))
    assert {default} | named <= served, f"queues no worker serves: {({default} | named) - served}"
    # every Airflow process agrees on the default queue (the scheduler routes, the worker consumes)
    assert {s["environment"]["AIRFLOW__OPERATORS__DEFAULT_QUEUE"] for s in airflow_services(CELERY).values()} == {default}


def test_the_broker_is_the_compose_redis_behind_a_password_from_the_env():
    redis = CELERY["redis"]
    assert "ports" not in redis                                             # only the compose network reaches it
    assert redis["environment"]["REDIS_PASSWORD"].startswith("${REDIS_PASSWORD:?")
    assert "--requirepass" in " ".join(redis["command"]) and "$$REDIS_PASSWORD" in " ".join(redis["command"])
    assert "REDIS_PASSWORD" in " ".join(redis["healthcheck"]["test"])
    for name, svc in airflow_services(CELERY).items():
        url = svc["environment"]["AIRFLOW__CELERY__BROKER_URL"]
        assert re.fullmatch(r"redis://:\$\{REDIS_PASSWORD:\?[^}]*\}@redis:6379/\d+", url), f"{name}: {url}"
    for name in ("airflow-scheduler", "airflow-api-server", "airflow-triggerer", "airflow-worker", "airflow-flower"):
        assert CELERY[name]["depends_on"]["redis"] == {"condition": "service_healthy"}, name
    for name in ("airflow-worker", "airflow-flower"):
        assert CELERY[name]["depends_on"]["airflow-init"] == {"condition": "service_completed_successfully"}, name


def test_task_results_go_to_the_airflow_metadata_database():
    for name, svc in airflow_services(CELERY).items():
        env = svc["environment"]
        assert env["AIRFLOW__CELERY__RESULT_BACKEND"] == "db+" + env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"], name
        assert "@postgres:5432/airflow" in env["AIRFLOW__CELERY__RESULT_BACKEND"]


@pytest.mark.parametrize("name", [BASE_FILE, CELERY_FILE])
def test_no_password_literal_in_a_url(name):
    text = (ROOT / name).read_text()
    credentials = re.findall(r"://[^:/@\s\"']*:(\$\{[^}]*\}|[^@\s]+)@", text)
    assert credentials, "expected URLs with credentials"
    for secret in credentials:
        assert secret.startswith("${"), f"literal password in a URL of {name}: {secret}"


def test_no_secret_literal_in_the_celery_file():
    text = (ROOT / CELERY_FILE).read_text()
    found = re.findall(r"^\s*([A-Z_]*(?:PASSWORD|SECRET|FERNET_KEY|CREDENTIAL|BASIC_AUTH)[A-Z_]*):\s*(\S+)", text, re.M)
    assert {"REDIS_PASSWORD", "FLOWER_PASSWORD"} <= {n for n, _ in found}
    for name, value in found:
        assert value.startswith("${"), f"literal secret in {CELERY_FILE}: {name}: {value}"
    # flower's basic auth is built from the env when flower starts, never written here
    assert "admin:$${FLOWER_PASSWORD:?" in " ".join(CELERY["airflow-flower"]["command"])


def test_flower_is_opt_in_and_binds_loopback():
    flower = CELERY["airflow-flower"]
    assert flower["profiles"] == ["flower"]
    assert flower["ports"] == ["127.0.0.1:5555:5555"]
    for name, svc in CELERY.items():
        for port in svc.get("ports", []):
            assert port.startswith("127.0.0.1:"), f"{name} publishes {port} beyond loopback"


def _airflow_options() -> dict[str, set[str]]:
    """Every [section] option Airflow core and the installed providers declare."""
    core = yaml.safe_load((importlib.resources.files("airflow") / "config_templates" / "config.yml").read_text())
    options = {s: set(v.get("options", {})) for s, v in core.items()}
    for ep in importlib.metadata.entry_points(group="apache_airflow_provider"):
        for section, v in ep.load()().get("config", {}).items():
            options.setdefault(section, set()).update(v.get("options", {}))
    return options


def test_every_airflow_setting_the_compose_files_give_is_an_option_airflow_knows():
    options = _airflow_options()
    assert "broker_url" in options.get("celery", ()), "the Celery provider (requirements.txt) is not installed"
    for name, svc in airflow_services(CELERY).items():
        for var in svc["environment"]:
            m = re.fullmatch(r"AIRFLOW__([A-Z_]+?)__([A-Z_]+)", var)
            if m:
                section, option = m.group(1).lower(), m.group(2).lower()
                assert option in options.get(section, ()), f"{name}: {var} is no Airflow option"


def test_the_celery_executor_comes_from_the_pinned_provider():
    from airflow.executors.executor_constants import CELERY_EXECUTOR, CORE_EXECUTOR_NAMES

    assert CELERY_EXECUTOR == "CeleryExecutor" and CELERY_EXECUTOR in CORE_EXECUTOR_NAMES
    pins = dict(re.findall(r"^([\w.-]+)==(\S+)$", (ROOT / "requirements.txt").read_text(), re.M))
    assert importlib.metadata.version("apache-airflow-providers-celery") == pins["apache-airflow-providers-celery"]
    from airflow.providers.celery.get_provider_info import get_provider_info

    assert "airflow.providers.celery.executors.celery_executor.CeleryExecutor" in get_provider_info()["executors"]


def test_the_airflow_image_is_the_pinned_airflow_with_the_requirements():
    dockerfile = (ROOT / AIRFLOW_DOCKERFILE).read_text()
    pins = dict(re.findall(r"^([\w.-]+)==(\S+)$", (ROOT / "requirements.txt").read_text(), re.M))
    base = re.search(r"^FROM apache/airflow:(\S+?)-python(\S+)$", dockerfile, re.M)
    assert base and base.group(1) == pins["apache-airflow"]
    assert re.search(r"^COPY requirements\.txt (\S+)$", dockerfile, re.M)
    installed = re.search(r"^COPY requirements\.txt (\S+)$", dockerfile, re.M).group(1)
    assert re.search(rf"^RUN pip install .*-r {re.escape(installed)}$", dockerfile, re.M)
    for services in (BASE, CELERY):
        tags = {s["image"] for s in airflow_services(services).values()}
        assert tags == {f"cryptopipe-airflow:{pins['apache-airflow']}"}
    assert ".stack/" in (ROOT / ".dockerignore").read_text().split()     # the stack's data stays out of the context
