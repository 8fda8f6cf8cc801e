"""A config read back from a store is data, never code (docs/faults-and-resume.md).

Whoever can write a run's artifacts can write its `config.yaml`; resume and a sweep's
continuation build the model, data and trainer from it. So the stored text is parsed with
YAML's safe loader (no Python tags) and checked whole before any of it is used:

- every Hydra instantiation key (`_target_`, `_args_`, `_partial_`, `_recursive_`, `_convert_`),
  at any depth, lists included, must hold what the current composition (conf/ and this command
  line) holds at the same place, or, at the top of a config group (`optimizer._target_`), what
  one of the group's presets in conf/ holds. A class given on the command line is the user's
  own input; one only the store names is refused.
- no key or value holds an interpolation (`${...}`): the config was stored resolved, so one found
  there was written later (`${oc.env:...}` would copy a secret into the run's params).
- it is a mapping of bounded size (a YAML alias bomb is refused, not expanded).

Anything else raises UntrustedConfig (a ConfigError: one `error:` line, exit 2) before any run
is touched.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from typing import Any

import yaml
from omegaconf import DictConfig, OmegaConf

from pipeline import CONFIG_DIR
from pipeline.errors import UntrustedConfig

# The keys that make hydra.utils.instantiate call something or change how it calls.
HYDRA_KEYS = frozenset({"_target_", "_args_", "_partial_", "_recursive_", "_convert_"})
MAX_BYTES = 1 << 20  # a run's config.yaml is a few kB
MAX_NODES = 20_000

Where = tuple[str | int, ...]  # keys and list indices from the top


def parse(text: bytes, cfg: DictConfig, what: str) -> DictConfig:
    """The stored config `text`, checked against the current composition `cfg`."""
    if len(text) > MAX_BYTES:
        raise UntrustedConfig(f"{what}: {_refused} is {len(text)} bytes (at most {MAX_BYTES})")
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as error:
        first = str(error).strip().splitlines()[0][:120]
        raise UntrustedConfig(f"{what}: {_refused} is not plain YAML ({first})") from None
    if not isinstance(data, dict):
        raise UntrustedConfig(f"{what}: {_refused} is not a mapping of config keys")
    current = OmegaConf.to_container(cfg, resolve=False)
    for count, (path, key, value) in enumerate(_walk(data, ())):
        if count > MAX_NODES:
            raise UntrustedConfig(f"{what}: {_refused} has more than {MAX_NODES} entries")
        where = _dotted((*path, key))
        if _interpolates(key) or _interpolates(value):
            raise UntrustedConfig(
                f"{what}: {_refused} holds an interpolation at {_show(where)} "
                f"({_show(value)}); configs are stored resolved, so it was written later"
            )
        if key in HYDRA_KEYS and not _allowed((*path, key), value, current):
            raise UntrustedConfig(
                f"{what}: {_refused} sets {_show(where)}={_show(value)}, which neither conf/ "
                f"nor this command line gives there; {_fix}"
            )
    return OmegaConf.create(data)


_refused = "its stored config.yaml (data, never code; docs/faults-and-resume.md)"
_fix = (
    "check who wrote the run's artifacts and start a new run, or give that value on this "
    "command line if it is your own class"
)


def _walk(node: Any, path: Where) -> Iterator[tuple[Where, str | int, Any]]:
    """(path of the parent, key or index, value) for every entry, depth first."""
    items = node.items() if isinstance(node, dict) else enumerate(node)
    for key, value in items:
        yield path, key, value
        if isinstance(value, dict | list):
            yield from _walk(value, (*path, key))


def _allowed(path: Where, value: Any, current: Any) -> bool:
    here = _at(current, path)
    if here is not _MISSING and here == value and type(here) is type(value):
        return True
    return len(path) == 2 and value in _presets().get(path[0], {}).get(path[1], ())


_MISSING = object()


def _at(node: Any, path: Where) -> Any:
    for key in path:
        if isinstance(node, dict) and key in node:
            node = node[key]
        elif isinstance(node, list) and isinstance(key, int) and 0 <= key < len(node):
            node = node[key]
        else:
            return _MISSING
    return node


@functools.cache
def _presets() -> dict[str, dict[str, tuple]]:
    """{group: {hydra key: values}} from the top of each preset in conf/<group>/*.yaml."""
    found: dict[str, dict[str, tuple]] = {}
    for file in sorted(CONFIG_DIR.glob("*/*.yaml")):
        preset = yaml.safe_load(file.read_text()) or {}
        for key in HYDRA_KEYS & set(preset if isinstance(preset, dict) else ()):
            group = found.setdefault(file.parent.name, {})
            group[key] = (*group.get(key, ()), preset[key])
    return found


def _interpolates(value: Any) -> bool:
    return isinstance(value, str) and "${" in value


def _dotted(path: Where) -> str:
    return "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in path).lstrip(".")


def _show(value: Any) -> str:
    """A stored value in one short line: an attacker's newlines are not printed as such."""
    text = ascii(value)[1:-1] if isinstance(value, str) else ascii(value)
    return text if len(text) <= 80 else text[:77] + "..."
