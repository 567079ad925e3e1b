"""What `make up` remembers in stack.env: the caller's settings, the remembered ones and the
source's exchange endpoints (README, "Configuration"). Pure functions; the manager writes the file.

- a settings variable (common.settings.stack_variables()) given to `stack up` wins and is
  remembered; given empty, the remembered value is forgotten (back to the default);
- `--source sim|live` given: every endpoint variable not given is set to the simulator's
  endpoints (sim) or removed, so the exchanges' defaults apply (live);
- no source given: the remembered source and the remembered endpoints stay;
- the variables of the settings the stack owns (common.settings.STACK_OWNED: its ports and
  generated logins) are never taken from the caller's environment: the manager writes them.
"""
from __future__ import annotations

from typing import Mapping

from common.exchanges import PLUGS
from common.settings import Settings, owned_variables, stack_variables, variable


class ConfigError(ValueError):
    """A variable given to `make up` has a value the daemons would refuse."""


def endpoint_variables() -> tuple[str, ...]:
    """Every exchange endpoint variable (the settings fields the plugs read their URLs from)."""
    return tuple(variable(f) for p in PLUGS.values() for f in p.url_settings())


def passable_variables() -> tuple[str, ...]:
    """What `make up` takes from its environment and remembers: the daemons' settings and how many
    of each the stack runs (cryptopipe/stack/scale.py)."""
    from cryptopipe.stack.scale import SCALE_KEYS

    return (*stack_variables(), *SCALE_KEYS)


def from_environment(environ: Mapping[str, str]) -> dict[str, str]:
    """The passable variables `environ` gives (names matched as pydantic-settings does, any case)."""
    wanted = set(passable_variables())
    return {key.upper(): value for key, value in environ.items() if key.upper() in wanted}


def owned_in_environment(environ: Mapping[str, str]) -> list[str]:
    """The stack-owned variables `environ` sets (`stack up` ignores them: worth a note)."""
    owned = set(owned_variables())
    return sorted(key for key in environ if key.upper() in owned)


def merge(remembered: Mapping[str, str], given: Mapping[str, str | None], *, source_given: bool,
          source_endpoints: Mapping[str, str]) -> dict[str, str]:
    """The stack.env values after an `up`.

    remembered        stack.env as it is (settings, secrets, endpoints)
    given             what this `up` was given: settings variables from the caller's environment
                      ("" or None: forget the remembered value), or any key from a program
    source_given      whether this `up` was given a source (else the remembered one stays)
    source_endpoints  that source's endpoint values ({} for live: the settings' defaults apply)
    """
    out = dict(remembered)
    endpoints = set(endpoint_variables())
    if source_given:
        for key in endpoints - set(given):
            out.pop(key, None)
            if key in source_endpoints:
                out[key] = source_endpoints[key]
    for key, value in given.items():
        if value is None or value == "":
            out.pop(key, None)
            if key in endpoints and key in source_endpoints:
                out[key] = source_endpoints[key]
        else:
            out[key] = value
    return out


def check(values: Mapping[str, str]) -> Settings:
    """The settings the daemons will read from `values` (and nothing else); ConfigError naming the
    variables the daemons would refuse."""
    from pydantic import ValidationError

    try:
        return settings_from(values)
    except ValidationError as exc:
        problems = "; ".join(f"{variable(str(e['loc'][0])) if e['loc'] else '?'}: {e['msg']}"
                             for e in exc.errors())
        raise ConfigError(problems) from None


def settings_from(values: Mapping[str, str]) -> Settings:
    """Settings from stack.env values alone, as a daemon with a clean environment reads them (the
    caller's own environment, which pydantic-settings would otherwise prefer, plays no part)."""
    kwargs = {}
    for name, field in Settings.model_fields.items():
        key = variable(name)
        kwargs[name] = values[key] if key in values else field.get_default(call_default_factory=True)
    return Settings(_env_file=None, **kwargs)
