"""The rules of what `make up` remembers in stack.env (cryptopipe/stack/config.py, README
"Configuration"), on the pure merge and through the manager's own steps on a scratch stack folder."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from common.settings import STACK_OWNED, Settings, owned_variables, stack_variables
from cryptopipe.stack import config

ROOT = Path(__file__).resolve().parents[3]
SIM = {"BINANCE_WS_URL": "ws://127.0.0.1:8765/binance-ws", "BINANCE_REST_URL": "http://127.0.0.1:8765/binance",
       "KUCOIN_REST_URL": "http://127.0.0.1:8765/kucoin"}
OTHER = {"BINANCE_WS_URL": "ws://127.0.0.1:9999/binance-ws", "BINANCE_REST_URL": "http://127.0.0.1:9999/binance",
         "KUCOIN_REST_URL": "http://127.0.0.1:9999/kucoin"}


# -- which variables pass ---------------------------------------------------------------------

def test_the_passable_variables_are_the_settings_fields_the_stack_does_not_own():
    fields = {f.upper() for f in Settings.model_fields}
    assert set(stack_variables()) == fields - {f.upper() for f in STACK_OWNED}
    assert {"BINANCE_WS_URL", "BINANCE_REST_URL", "KUCOIN_REST_URL", "SYMBOLS", "ARCHIVE_MAX_AGE_SECONDS",
            "RECONCILE"} <= set(stack_variables())
    assert {"POSTGRES_DSN", "KAFKA_BOOTSTRAP_SERVERS", "KAFKA_SASL_PASSWORD", "AWS_SECRET_ACCESS_KEY",
            "S3_ENDPOINT_URL"} <= set(owned_variables())
    assert not set(stack_variables()) & set(owned_variables())


def test_every_variable_of_the_readme_table_passes_or_is_owned():
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Configuration", 1)[1].split("\n## ", 1)[0]
    named = {v for row in re.findall(r"^\| (.+?) \|", section, re.M) for v in re.findall(r"`([A-Z][A-Z0-9_]+)`", row)}
    assert "SYMBOLS" in named and "BINANCE_WS_URL" in named
    unknown = named - set(config.passable_variables()) - set(owned_variables()) - {"CRYPTOPIPE_HOME", "CRYPTOPIPE_PORT_OFFSET"}
    assert not unknown, f"README's Configuration table names variables that are no setting: {sorted(unknown)}"


def test_endpoint_variables_come_from_the_plugs():
    assert set(config.endpoint_variables()) == set(SIM)


def test_from_environment_takes_settings_in_any_case_and_nothing_else():
    environ = {"BINANCE_WS_URL": "ws://a", "symbols": "BTC-USDT", "POSTGRES_DSN": "postgresql://x",
               "KAFKA_BOOTSTRAP_SERVERS": "elsewhere:9092", "PATH": "/bin", "HOME": "/root",
               "SIM_CONTROL_URL": "http://x/_sim"}
    assert config.from_environment(environ) == {"BINANCE_WS_URL": "ws://a", "SYMBOLS": "BTC-USDT"}


def test_the_scale_settings_pass_and_are_remembered_like_the_others():
    given = config.from_environment({"KAFKA_BROKERS": "3", "load_workers": "2", "PATH": "/bin"})
    assert given == {"KAFKA_BROKERS": "3", "LOAD_WORKERS": "2"}
    later = config.merge(config.merge({}, given, source_given=True, source_endpoints={}), {},
                         source_given=False, source_endpoints={})
    assert later["KAFKA_BROKERS"] == "3" and later["LOAD_WORKERS"] == "2"


def test_owned_in_environment_names_the_stacks_own_values_and_librdkafkas_spelling():
    environ = {"POSTGRES_DSN": "x", "sasl.password": "y", "KAFKA_BOOTSTRAP_SERVERS": "z", "SYMBOLS": "A-B"}
    assert config.owned_in_environment(environ) == ["KAFKA_BOOTSTRAP_SERVERS", "POSTGRES_DSN", "sasl.password"]


# -- the merge rules ----------------------------------------------------------------------------

def merge(remembered, given, source, source_given):
    return config.merge(remembered, given, source_given=source_given,
                        source_endpoints=SIM if source == "sim" else {})


def test_a_given_variable_wins_and_is_remembered():
    remembered = {"SYMBOLS": "BTC-USDT", "CRYPTOPIPE_PG_PASSWORD": "secret", **SIM}
    out = merge(remembered, {"SYMBOLS": "ETH-USDT", "KUCOIN_REST_URL": OTHER["KUCOIN_REST_URL"]}, "sim", False)
    assert out["SYMBOLS"] == "ETH-USDT"
    assert out["KUCOIN_REST_URL"] == OTHER["KUCOIN_REST_URL"]
    assert out["BINANCE_WS_URL"] == SIM["BINANCE_WS_URL"]
    assert out["CRYPTOPIPE_PG_PASSWORD"] == "secret"


def test_an_up_given_nothing_keeps_every_remembered_value():
    remembered = {"SYMBOLS": "BTC-USDT", "ARCHIVE_MAX_AGE_SECONDS": "10", **OTHER}
    assert merge(remembered, {}, "sim", False) == remembered
    assert merge(remembered, {}, "live", False) == remembered


def test_source_sim_sets_the_simulators_endpoints_for_those_not_given():
    remembered = {"SYMBOLS": "BTC-USDT", **OTHER}
    out = merge(remembered, {"BINANCE_REST_URL": OTHER["BINANCE_REST_URL"]}, "sim", True)
    assert out == {"SYMBOLS": "BTC-USDT", "BINANCE_WS_URL": SIM["BINANCE_WS_URL"],
                   "BINANCE_REST_URL": OTHER["BINANCE_REST_URL"], "KUCOIN_REST_URL": SIM["KUCOIN_REST_URL"]}


def test_source_live_leaves_the_exchanges_defaults_for_those_not_given():
    out = merge({"SYMBOLS": "BTC-USDT", **SIM}, {"KUCOIN_REST_URL": "https://proxy.example/kucoin"}, "live", True)
    assert out == {"SYMBOLS": "BTC-USDT", "KUCOIN_REST_URL": "https://proxy.example/kucoin"}
    settings = config.settings_from(out)
    assert settings.binance_ws_url == Settings.model_fields["binance_ws_url"].default
    assert settings.binance_rest_url == Settings.model_fields["binance_rest_url"].default


def test_an_empty_value_forgets_the_remembered_one():
    remembered = {"SYMBOLS": "BTC-USDT", **OTHER}
    out = merge(remembered, {"SYMBOLS": "", "BINANCE_WS_URL": ""}, "sim", False)
    assert "SYMBOLS" not in out
    assert out["BINANCE_WS_URL"] == SIM["BINANCE_WS_URL"]            # back to the source's endpoint
    assert out["KUCOIN_REST_URL"] == OTHER["KUCOIN_REST_URL"]
    assert "BINANCE_WS_URL" not in merge(remembered, {"BINANCE_WS_URL": None}, "live", False)


# -- checks and the daemons' view -----------------------------------------------------------------

@pytest.mark.parametrize("values, named", [
    ({"BINANCE_WS_URL": "127.0.0.1:9999/binance-ws"}, "BINANCE_WS_URL"),
    ({"KUCOIN_REST_URL": "ws://127.0.0.1:9999/kucoin"}, "KUCOIN_REST_URL"),
    ({"RECONCILE_SETTLE_SECONDS": "soon"}, "RECONCILE_SETTLE_SECONDS"),
    ({"ARCHIVE_MAX_AGE_SECONDS": "0"}, "ARCHIVE_MAX_AGE_SECONDS"),
])
def test_a_value_the_daemons_would_refuse_is_a_clear_error(values, named):
    with pytest.raises(config.ConfigError, match=named):
        config.check(values)


def test_the_daemons_view_ignores_the_callers_environment(monkeypatch):
    monkeypatch.setenv("BINANCE_WS_URL", "ws://from-the-shell")
    monkeypatch.setenv("SYMBOLS", "XRP-USDT")
    s = config.settings_from({"BINANCE_WS_URL": "ws://from-stack-env", "SYMBOLS": "BTC-USDT,ETH-USDT"})
    assert s.binance_ws_url == "ws://from-stack-env"
    assert s.symbols == ["BTC-USDT", "ETH-USDT"]
    assert config.settings_from({}).symbols == []


# -- through the manager's steps, on a scratch stack folder (nothing is started) ----------------------

@pytest.fixture
def scratch_home(tmp_path, monkeypatch):
    monkeypatch.setenv("CRYPTOPIPE_HOME", str(tmp_path / ".stack"))
    from common.settings import get_settings

    yield tmp_path / ".stack"
    get_settings.cache_clear()


def configured(source, env=None):
    """What `up` writes before it starts anything: stack.env and the remembered source."""
    from cryptopipe.stack import manager
    from cryptopipe.stack.secrets import read_env_file

    ctx = manager.make_context(source)
    manager.configure(ctx, dict(env or {}), source_given=source is not None)
    changed = manager.write_stack_env(ctx)
    return read_env_file(ctx.paths.env_file), ctx.paths.source_file.read_text(), changed


def test_up_remembers_the_source_and_the_settings_across_ups(scratch_home):
    from cryptopipe.stack.sim import sim_endpoints

    sim = sim_endpoints()
    env, source, _ = configured(None)
    assert source == "live"                                  # the first up defaults to live
    assert not set(SIM) & set(env) and "SIM_CONTROL_URL" not in env

    env, source, changed = configured("sim", {**OTHER, "SYMBOLS": "BTC-USDT,ETH-USDT"})
    assert changed and source == "sim"
    assert {k: env[k] for k in OTHER} == OTHER and env["SYMBOLS"] == "BTC-USDT,ETH-USDT"
    assert env["SIM_CONTROL_URL"] == sim["SIM_CONTROL_URL"]
    secret = env["CRYPTOPIPE_PG_PASSWORD"]

    again, source, changed = configured(None)                # `make up`: nothing given
    assert source == "sim" and not changed and again == env

    env, source, _ = configured("sim")                       # SOURCE=sim again: the simulator's endpoints
    assert {k: env[k] for k in SIM} == {k: sim[k] for k in SIM}
    assert env["SYMBOLS"] == "BTC-USDT,ETH-USDT" and env["CRYPTOPIPE_PG_PASSWORD"] == secret

    env, source, _ = configured("live", {"SYMBOLS": ""})
    assert source == "live" and "SYMBOLS" not in env
    assert not set(SIM) & set(env) and "SIM_CONTROL_URL" not in env


def test_up_writes_the_stacks_own_values_whatever_it_is_given(scratch_home):
    from cryptopipe.stack.paths import KAFKA_PORT

    env, _, _ = configured("sim", {"KAFKA_BOOTSTRAP_SERVERS": "stale:9092", "POSTGRES_DSN": "postgresql://stale/x"})
    assert env["KAFKA_BOOTSTRAP_SERVERS"] == f"127.0.0.1:{KAFKA_PORT}"
    assert "stale" not in env["POSTGRES_DSN"] and env["POSTGRES_DSN"].startswith("postgresql://cryptopipe:")


def test_up_refuses_a_bad_value_and_keeps_stack_env(scratch_home):
    from cryptopipe.stack.progress import StepFailed

    before, _, _ = configured("sim", {"SYMBOLS": "BTC-USDT"})
    with pytest.raises(StepFailed, match="BINANCE_REST_URL"):
        configured(None, {"BINANCE_REST_URL": "127.0.0.1:9999"})
    after, _, _ = configured(None)
    assert after == before


def test_the_stack_up_command_passes_settings_and_drops_the_stacks_own(monkeypatch, capsys):
    from cryptopipe.stack.cli import settings_from_caller

    monkeypatch.setenv("SYMBOLS", "BTC-USDT")
    monkeypatch.setenv("KUCOIN_REST_URL", "http://127.0.0.1:9999/kucoin")
    monkeypatch.setenv("POSTGRES_DSN", "postgresql://stale/x")
    assert settings_from_caller() == {"SYMBOLS": "BTC-USDT", "KUCOIN_REST_URL": "http://127.0.0.1:9999/kucoin"}
    assert "POSTGRES_DSN" not in os.environ                  # the manager's own steps reach its own stack
    assert "ignoring POSTGRES_DSN" in capsys.readouterr().err


@pytest.mark.parametrize("make_args, source_args", [([], []), (["SOURCE=sim"], ["--source", "sim"])])
def test_make_up_passes_source_only_when_given_and_its_variables_reach_the_command(make_args, source_args, tmp_path):
    probe = tmp_path / "probe.py"
    probe.write_text("import os, sys\nprint(sys.argv[1:])\nprint(os.environ.get('SYMBOLS'), os.environ.get('BINANCE_WS_URL'))\n")
    env = {k: v for k, v in os.environ.items() if k != "SOURCE"}
    env["BINANCE_WS_URL"] = "ws://from-env"
    out = subprocess.run(["make", "-s", "-o", "venv", "up", f"PY={sys.executable} {probe}", "SYMBOLS=BTC-USDT",
                          *make_args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    argv, seen = out.stdout.splitlines()
    assert eval(argv) == ["-m", "cryptopipe", "stack", "up", *source_args]
    assert seen == "BTC-USDT ws://from-env"
