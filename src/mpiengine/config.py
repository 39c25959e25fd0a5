"""A block config: how an endpoint gets and shapes its blocks (provider, nodes, cores, GPUs,
launcher, walltime, ...), a YAML document validated by ``site-configs/block.schema.json``.

Not to be confused with the endpoint *service* config (``mpiengine.service.config``, saved as
``endpoint.yaml``), which names the relay, the backend and, for a batch backend, a block config.

Every key has a default in the schema; a document may set any subset. What is refused, at load,
with a :class:`ConfigError` naming the key, the problem and the allowed values:

- an unknown key (the error lists every valid key with its default);
- a value of the wrong type or out of range (the error gives the schema's description);
- combinations the schema cannot express (``min_blocks > max_blocks``, no ``cores_per_node``
  for a batch provider, a walltime under one minute).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonschema
import yaml
from jsonschema.exceptions import ValidationError, best_match

from mpiengine.binding import Binding
from mpiengine.data import data_dir
from mpiengine_sdk.errors import ConfigError

__all__ = ["BlockConfig", "load_config", "parse_walltime", "schema"]


@functools.lru_cache(maxsize=1)
def schema() -> dict[str, Any]:
    """The block config's JSON schema (checked against its metaschema once)."""
    path = data_dir("site-configs") / "block.schema.json"
    doc: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    jsonschema.validators.validator_for(doc).check_schema(doc)
    return doc


def parse_walltime(text: str) -> int:
    """Seconds in an ``HH:MM:SS`` walltime.

    Raises:
        ConfigError: not ``HH:MM:SS``.
    """
    parts = text.split(":")
    if len(parts) != 3 or not all(p.isdigit() for p in parts):
        raise ConfigError("walltime", f"{text!r} is not HH:MM:SS", "e.g. 00:30:00")
    hours, minutes, seconds = (int(p) for p in parts)
    return hours * 3600 + minutes * 60 + seconds


@dataclass(frozen=True)
class BlockConfig:
    """A validated block config; see the schema for each field's meaning.

    Called ``EndpointConfig`` before; that name still imports, with a DeprecationWarning.
    """

    provider: str = "slurm"
    nodes_per_block: int = 1
    cores_per_node: int | None = None
    gpus_per_node: int = 0
    gpu_vendor: str | None = None
    gpu_tiles: int = 1
    init_blocks: int = 0
    min_blocks: int = 0
    max_blocks: int = 1
    walltime: str = "00:30:00"
    partition: str | None = None
    queue: str | None = None
    account: str | None = None
    scheduler_options: str = ""
    worker_init: str = ""
    max_idle_time: float = 120
    launcher: str | None = None
    launcher_executable: str | None = None
    launcher_options: list[str] = dataclasses.field(default_factory=list)
    cpu_ids: list[int] | None = None
    max_concurrent_launches: int = 64
    heartbeat_period: float = 2
    heartbeat_threshold: float = 20
    agent_grace: float = 30
    agent_connect_timeout: float = 300
    poll_interval: float = 10
    cmd_timeout: int = 10
    max_backoff: float = 60
    walltime_margin: float = 10
    kill_grace: float = 2
    node_check_interval: float = 5
    address: str = "127.0.0.1"
    port: int = 0
    agent_command: str | None = None
    workdir: str | None = None

    @property
    def walltime_seconds(self) -> int:
        """The block walltime in seconds."""
        return parse_walltime(self.walltime)

    @property
    def cores(self) -> int:
        """Cores per node, with the local provider's default (this host's count) applied."""
        if self.cores_per_node is not None:
            return self.cores_per_node
        return os.cpu_count() or 1

    @property
    def gpu_slots(self) -> int:
        """GPU slots per node the scheduler hands out: GPUs, or tiles when GPUs have tiles."""
        return self.gpus_per_node * self.gpu_tiles

    @property
    def binding(self) -> Binding:
        """The blocks' GPU vendor (nvidia when GPUs are configured without one) and tiles."""
        vendor = self.gpu_vendor
        if vendor is None and self.gpus_per_node > 0:
            vendor = "nvidia"
        return Binding(
            gpu_vendor=vendor, gpu_tiles=self.gpu_tiles, cpu_ids=tuple(self.cpu_ids or ())
        )

    @property
    def launcher_name(self) -> str:
        """The launcher file for MPI tasks."""
        if self.launcher is not None:
            return self.launcher
        return "srun" if self.provider == "slurm" else "mpich"

    def replace(self, **changes: Any) -> BlockConfig:
        """A copy with some fields changed, validated again."""
        return load_config({**self.as_dict(), **changes})

    def as_dict(self) -> dict[str, Any]:
        """Plain JSON types, every key."""
        return dataclasses.asdict(self)


def _defaults() -> str:
    props = schema()["properties"]
    return ", ".join(f"{k} (default {json.dumps(v.get('default'))})" for k, v in props.items())


def _refusal(error: ValidationError) -> ConfigError:
    key = ".".join(str(p) for p in error.absolute_path)
    if error.validator == "additionalProperties" and isinstance(error.instance, dict):
        unknown = sorted(set(error.instance) - set(schema()["properties"]))
        return ConfigError(key, f"unknown key(s) {unknown}", _defaults())
    if error.validator == "type" and not key:
        return ConfigError("", "the config must be a mapping of keys to values", _defaults())
    prop = schema()["properties"].get(key, {})
    allowed = prop.get("description", "")
    if "enum" in prop:
        allowed = f"one of {prop['enum']}"
    elif "pattern" in prop:
        allowed = f"{allowed}; pattern {prop['pattern']}"
    return ConfigError(key, error.message, allowed)


def _check(doc: Mapping[str, Any]) -> None:
    validator = jsonschema.validators.validator_for(schema())(schema())
    error = best_match(validator.iter_errors(doc))
    if error is not None:
        raise _refusal(error)


def _check_combinations(cfg: BlockConfig) -> None:
    if cfg.min_blocks > cfg.max_blocks:
        raise ConfigError(
            "min_blocks", f"{cfg.min_blocks} is above max_blocks={cfg.max_blocks}", "<= max_blocks"
        )
    if cfg.init_blocks > cfg.max_blocks:
        raise ConfigError(
            "init_blocks",
            f"{cfg.init_blocks} is above max_blocks={cfg.max_blocks}",
            "<= max_blocks",
        )
    if cfg.walltime_seconds < 60:
        raise ConfigError(
            "walltime", f"{cfg.walltime!r} is under one minute", "HH:MM:SS of at least 00:01:00"
        )
    if cfg.provider != "local" and cfg.cores_per_node is None:
        raise ConfigError(
            "cores_per_node",
            f"is required for provider {cfg.provider!r} (the nodes' core count)",
            "an integer >= 1",
        )
    if cfg.provider == "local" and cfg.nodes_per_block != 1:
        raise ConfigError(
            "nodes_per_block",
            f"{cfg.nodes_per_block}: the local provider's block is this one host",
            "1",
        )
    if cfg.gpu_tiles > 1 and cfg.gpu_vendor != "intel":
        raise ConfigError(
            "gpu_tiles",
            f"{cfg.gpu_tiles} tiles per GPU with gpu_vendor={cfg.gpu_vendor!r}",
            "1, or gpu_vendor: intel (Level Zero tiles)",
        )
    if cfg.gpu_tiles > 1 and cfg.launcher_name == "srun":
        raise ConfigError(
            "gpu_tiles",
            f"{cfg.gpu_tiles} tiles per GPU with launcher srun (Slurm's GRES counts whole GPUs)",
            "1 with srun; tiles with an mpiexec-family launcher (pals, mpich)",
        )
    if cfg.cpu_ids is not None and len(cfg.cpu_ids) != cfg.cores_per_node:
        raise ConfigError(
            "cpu_ids",
            f"{len(cfg.cpu_ids)} CPU ids for cores_per_node={cfg.cores_per_node}",
            "one CPU number per usable core, or null",
        )
    if cfg.heartbeat_threshold <= cfg.heartbeat_period:
        raise ConfigError(
            "heartbeat_threshold",
            f"{cfg.heartbeat_threshold} is not above heartbeat_period={cfg.heartbeat_period}",
            "a few heartbeat periods",
        )


def load_config(source: str | Path | Mapping[str, Any] | None) -> BlockConfig:
    """Load and validate an endpoint config.

    Args:
        source: a path to a YAML file, an already parsed mapping, or None (all defaults).

    Returns:
        The config, every default filled in.

    Raises:
        ConfigError: the file cannot be read or parsed, or a key or value is refused.
    """
    if source is None:
        doc: Any = {}
    elif isinstance(source, Mapping):
        doc = dict(source)
    elif not isinstance(source, str | Path):
        raise ConfigError(
            "", f"cannot load a config from {type(source).__name__}", "a path or a mapping"
        )
    else:
        try:
            doc = yaml.safe_load(Path(source).read_text(encoding="utf-8"))
        except (OSError, yaml.YAMLError) as exc:
            raise ConfigError(str(source), f"cannot read the endpoint config: {exc}") from exc
        doc = {} if doc is None else doc
    _check(doc)
    cfg = BlockConfig(**doc)
    _check_combinations(cfg)
    return cfg


def __getattr__(name: str) -> Any:
    """``EndpointConfig``, the old name of :class:`BlockConfig` (deprecated)."""
    if name == "EndpointConfig":
        warnings.warn(
            "mpiengine.config.EndpointConfig is now BlockConfig (a block config, not the "
            "endpoint service's config); the old name will go",
            DeprecationWarning,
            stacklevel=2,
        )
        return BlockConfig
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
