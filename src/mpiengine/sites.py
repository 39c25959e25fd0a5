"""Named machines: one validated data file per supercomputer, turned into an endpoint config.

``site-configs/NAME.yaml`` holds what an endpoint needs to know about one machine (one node
type): batch system, launcher and its recommended options, cores, reserved cores and GPUs per
node, queues with their limits, how jobs are charged, the directives every job needs, typical
``worker_init``, the pages the facts come from and what stays unsure. Each file is checked
against ``site-configs/site.schema.json`` and a few rules the schema cannot state when it is
loaded; a bad file is refused with a :class:`ConfigError` naming the file and the key.

:func:`site_config` turns a site plus a user's overrides into an :class:`BlockConfig`
(``BatchEndpoint.from_site`` and ``mpiengine endpoint configure NAME --site ...`` use it):
a value the site requires (the account) is refused when missing, a queue the site does not have
is refused with the site's queues, and every override wins over the site's value, except that
``scheduler_options`` and ``worker_init`` given by the user follow the site's lines (a later
directive wins; the site's required ones stay).
"""

from __future__ import annotations

import functools
import json
import re
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import jsonschema
import yaml
from jsonschema.exceptions import best_match

from mpiengine.binding import Binding
from mpiengine.config import BlockConfig, load_config, parse_walltime, schema
from mpiengine.data import data_dir
from mpiengine.launchers import LauncherSpec, available_launchers, load_launcher
from mpiengine_sdk.errors import ConfigError

__all__ = [
    "Node",
    "Queue",
    "Site",
    "available_sites",
    "load_site",
    "site_config",
]

#: The batch systems blocks can come from (a Parsl provider each); the others have none yet.
PROVIDERS = {"slurm": "slurm", "pbspro": "pbspro"}
#: The directive prefix of each batch system's script lines.
DIRECTIVES = {"slurm": "#SBATCH", "pbspro": "#PBS", "lsf": "#BSUB", "flux": "#FLUX:"}
#: Endpoint keys a site decides through its own fields, never through ``endpoint:``.
_SITE_KEYS = frozenset(
    "provider cores_per_node cpu_ids gpus_per_node gpu_vendor gpu_tiles launcher"
    " launcher_executable launcher_options partition queue account scheduler_options"
    " worker_init".split()
)
_APPENDED = ("scheduler_options", "worker_init")


@dataclass(frozen=True)
class Node:
    """One compute node of a site (see the schema's ``node``)."""

    cores: int
    cpu: str = ""
    threads_per_core: int = 1
    reserved_cores: tuple[int, ...] = ()
    cpu_id_stride: int = 1
    gpus: int = 0
    gpu: str = ""
    gpu_vendor: str | None = None
    gpu_tiles: int = 1
    memory_gb: float | None = None

    @property
    def usable_cores(self) -> int:
        """Cores tasks may use: all but the reserved ones."""
        return self.cores - len(self.reserved_cores)

    @property
    def cpu_ids(self) -> tuple[int, ...]:
        """The operating system's CPU numbers of the usable cores, in order."""
        reserved = set(self.reserved_cores)
        return tuple(c * self.cpu_id_stride for c in range(self.cores) if c not in reserved)

    @property
    def gpu_slots(self) -> int:
        """GPU slots the scheduler hands out: GPUs, or tiles."""
        return self.gpus * self.gpu_tiles

    @property
    def binding(self) -> Binding:
        """How tasks on these nodes are bound (vendor, tiles, CPU numbers)."""
        ids = self.cpu_ids
        return Binding(
            gpu_vendor=self.gpu_vendor if self.gpus else None,
            gpu_tiles=self.gpu_tiles,
            cpu_ids=() if ids == tuple(range(len(ids))) else ids,
        )


@dataclass(frozen=True)
class Queue:
    """One partition, QOS or queue of a site (see the schema's ``queue``)."""

    name: str
    node: Node
    default: bool = False
    debug: bool = False
    min_nodes: int | None = None
    max_nodes: int | None = None
    max_walltime: str | None = None
    partition: str | None = None
    qos: str | None = None
    scheduler_options: str = ""
    launcher_options: tuple[str, ...] | None = None
    unsupported: str | None = None
    notes: str = ""

    def limits(self) -> str:
        """``nodes 1-2, walltime 01:00:00`` (what is known)."""
        parts = []
        if self.min_nodes or self.max_nodes:
            parts.append(f"nodes {self.min_nodes or 1}-{self.max_nodes or '?'}")
        if self.max_walltime:
            parts.append(f"walltime <= {self.max_walltime}")
        return ", ".join(parts)


@dataclass(frozen=True)
class Site:
    """A loaded and checked machine file. Build with :func:`load_site`."""

    name: str
    title: str
    facility: str
    description: str
    batch: str
    launcher_name: str
    launcher_options: tuple[str, ...]
    launcher_executable: str | None
    node: Node
    queue_kind: str
    queues: tuple[Queue, ...]
    account_required: bool
    account_pattern: str | None
    account_example: str
    account_note: str
    scheduler_options: str
    worker_init: str
    network_interface: str | None
    endpoint: Mapping[str, Any]
    sources: tuple[str, ...]
    checked: str
    unsure: tuple[str, ...]
    path: Path = field(compare=False)

    @property
    def provider(self) -> str | None:
        """The endpoint provider for this batch system, or None when there is none yet."""
        return PROVIDERS.get(self.batch)

    @property
    def default_queue(self) -> Queue | None:
        """The queue used when none is chosen (None: the batch system's default)."""
        return next((q for q in self.queues if q.default), None)

    def queue(self, name: str | None) -> Queue | None:
        """The site's queue ``name`` (None: the default queue).

        Raises:
            ConfigError: no such queue (the error lists the site's queues), or a queue blocks
                cannot come from (the error gives the reason).
        """
        if name is None:
            return self.default_queue
        for queue in self.queues:
            if queue.name == name:
                if queue.unsupported:
                    raise ConfigError("queue", f"{name!r} of {self.name}: {queue.unsupported}")
                return queue
        allowed = ", ".join(q.name for q in self.queues if not q.unsupported)
        raise ConfigError("queue", f"{name!r} is not a queue of {self.name}", allowed)

    def launcher(self, queue: Queue | None = None) -> LauncherSpec:
        """The site's launcher with its options (the queue's, when it has its own)."""
        options = self.launcher_options
        if queue is not None and queue.launcher_options is not None:
            options = queue.launcher_options
        return load_launcher(
            self.launcher_name, executable=self.launcher_executable, options=options
        )

    def config(self, **overrides: Any) -> BlockConfig:
        """This site as an endpoint config, with ``overrides`` (see :func:`site_config`)."""
        return _config(self, dict(overrides))


# --- loading ----------------------------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def _site_schema() -> dict[str, Any]:
    path = data_dir("site-configs") / "site.schema.json"
    doc: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    jsonschema.validators.validator_for(doc).check_schema(doc)
    return doc


@functools.lru_cache(maxsize=2)
def _validator(part: str = "") -> jsonschema.protocols.Validator:
    """The site schema's validator, or that of one of its ``$defs`` (``node``)."""
    doc = _site_schema()
    target = doc["$defs"][part] if part else doc
    return jsonschema.validators.validator_for(doc)(target)


def _schema_error(where: str, doc: Any, validator: jsonschema.protocols.Validator) -> None:
    error = best_match(validator.iter_errors(doc))
    if error is None:
        return
    path = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in error.absolute_path)
    key = f"{where}:{path.lstrip('.') or '(top)'}"
    if error.validator == "additionalProperties" and isinstance(error.instance, dict):
        known = error.schema.get("properties", {})
        unknown = sorted(set(error.instance) - set(known))
        raise ConfigError(key, f"unknown key(s) {unknown}", ", ".join(known))
    allowed = error.schema.get("description", "")
    if "enum" in error.schema:
        allowed = f"one of {error.schema['enum']}"
    raise ConfigError(key, error.message, allowed)


def _node(where: str, doc: Mapping[str, Any]) -> Node:
    _schema_error(where, dict(doc), _validator("node"))
    node = Node(
        cores=doc["cores"],
        cpu=doc.get("cpu", ""),
        threads_per_core=doc.get("threads_per_core", 1),
        reserved_cores=tuple(doc.get("reserved_cores", ())),
        cpu_id_stride=doc.get("cpu_id_stride", 1),
        gpus=doc.get("gpus", 0),
        gpu=doc.get("gpu", ""),
        gpu_vendor=doc.get("gpu_vendor"),
        gpu_tiles=doc.get("gpu_tiles", 1),
        memory_gb=doc.get("memory_gb"),
    )
    if any(c >= node.cores for c in node.reserved_cores) or node.usable_cores < 1:
        raise ConfigError(
            f"{where}.reserved_cores",
            f"{list(node.reserved_cores)}",
            f"core numbers below {node.cores}, not all",
        )
    if node.gpus and node.gpu_vendor is None:
        raise ConfigError(
            f"{where}.gpu_vendor", "missing for a node with GPUs", "nvidia, amd, intel"
        )
    if node.gpu_tiles > 1 and node.gpu_vendor != "intel":
        raise ConfigError(
            f"{where}.gpu_tiles", f"{node.gpu_tiles} with {node.gpu_vendor}", "1, or intel GPUs"
        )
    return node


def _queue(where: str, doc: Mapping[str, Any], site_node: Mapping[str, Any]) -> Queue:
    node = _node(f"{where}.node", {**site_node, **doc.get("node", {})})
    queue = Queue(
        name=doc["name"],
        node=node,
        default=doc.get("default", False),
        debug=doc.get("debug", False),
        min_nodes=doc.get("min_nodes"),
        max_nodes=doc.get("max_nodes"),
        max_walltime=doc.get("max_walltime"),
        partition=doc.get("partition"),
        qos=doc.get("qos"),
        scheduler_options=doc.get("scheduler_options", ""),
        launcher_options=(tuple(doc["launcher_options"]) if "launcher_options" in doc else None),
        unsupported=doc.get("unsupported"),
        notes=doc.get("notes", ""),
    )
    if queue.min_nodes and queue.max_nodes and queue.min_nodes > queue.max_nodes:
        raise ConfigError(f"{where}.min_nodes", f"{queue.min_nodes} > max_nodes", "<= max_nodes")
    if queue.default and queue.unsupported:
        raise ConfigError(f"{where}.default", "an unsupported queue cannot be the default")
    return queue


def _check_directives(where: str, text: str, batch: str) -> None:
    prefix = DIRECTIVES[batch]
    for line in text.splitlines():
        if line.strip() and not line.startswith(prefix + " "):
            raise ConfigError(
                where, f"{line!r} is not a {batch} directive", f"'{prefix} ...' lines"
            )


def _load(path: Path) -> Site:
    where = str(path)
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(where, f"cannot read the site file: {exc}") from exc
    _schema_error(where, doc, _validator())
    if doc["name"] != path.stem:
        raise ConfigError(f"{where}:name", f"{doc['name']!r} differs from the file name", path.stem)
    batch = doc["batch"]
    launcher = doc["launcher"]
    if launcher["name"] not in available_launchers():
        raise ConfigError(
            f"{where}:launcher.name",
            f"unknown launcher {launcher['name']!r}",
            ", ".join(available_launchers()),
        )
    node = _node(f"{where}:node", doc["node"])
    queues = tuple(
        _queue(f"{where}:queues[{i}]", q, doc["node"]) for i, q in enumerate(doc["queues"])
    )
    names = [q.name for q in queues]
    if len(set(names)) != len(names):
        raise ConfigError(f"{where}:queues", f"queue names repeat: {names}", "distinct names")
    if sum(q.default for q in queues) > 1:
        raise ConfigError(f"{where}:queues", "more than one default queue", "at most one")
    _check_directives(f"{where}:scheduler_options", doc.get("scheduler_options", ""), batch)
    for i, q in enumerate(queues):
        _check_directives(f"{where}:queues[{i}].scheduler_options", q.scheduler_options, batch)
    endpoint = dict(doc.get("endpoint", {}))
    bad = sorted(set(endpoint) - (set(schema()["properties"]) - _SITE_KEYS))
    if bad:
        raise ConfigError(
            f"{where}:endpoint",
            f"keys {bad} are not endpoint keys a site may suggest",
            ", ".join(sorted(set(schema()["properties"]) - _SITE_KEYS)),
        )
    account = doc["account"]
    site = Site(
        name=doc["name"],
        title=doc["title"],
        facility=doc["facility"],
        description=" ".join(doc["description"].split()),
        batch=batch,
        launcher_name=launcher["name"],
        launcher_options=tuple(launcher.get("options", ())),
        launcher_executable=launcher.get("executable"),
        node=node,
        queue_kind=doc.get("queue_kind", "partition" if batch == "slurm" else "queue"),
        queues=queues,
        account_required=account["required"],
        account_pattern=account.get("pattern"),
        account_example=account.get("example", ""),
        account_note=account.get("note", ""),
        scheduler_options=doc.get("scheduler_options", ""),
        worker_init=doc.get("worker_init", ""),
        network_interface=doc.get("network_interface"),
        endpoint=endpoint,
        sources=tuple(doc["sources"]),
        checked=doc["checked"],
        unsure=tuple(doc.get("unsure", ())),
        path=path,
    )
    if site.queue_kind == "qos" and batch != "slurm":
        raise ConfigError(
            f"{where}:queue_kind", "qos with a batch system other than slurm", "queue"
        )
    site.launcher()  # the options must suit the launcher (one with a command)
    return site


@functools.lru_cache(maxsize=128)
def _load_cached(path: Path) -> Site:
    return _load(path)


def available_sites() -> list[str]:
    """The names of the shipped machines, sorted."""
    return sorted(p.stem for p in data_dir("site-configs").glob("*.yaml"))


def load_site(name_or_path: str | Path) -> Site:
    """Load a machine by name (``"polaris"``) or by path to a site file.

    Raises:
        ConfigError: an unknown name (the error lists the shipped ones), an unreadable file,
            or a file the schema or the loader's rules refuse.
    """
    text = str(name_or_path)
    if isinstance(name_or_path, Path) or "/" in text or text.endswith((".yaml", ".yml")):
        return _load_cached(Path(name_or_path).resolve())
    path = data_dir("site-configs") / f"{text.lower()}.yaml"
    if not path.is_file():
        raise ConfigError("site", f"unknown machine {text!r}", ", ".join(available_sites()))
    return _load_cached(path.resolve())


# --- endpoint config --------------------------------------------------------------------------


def _lines(*parts: str) -> str:
    return "\n".join(p.strip("\n") for p in parts if p and p.strip())


def _interface_address(name: str) -> str | None:
    """The IPv4 address of this host's interface ``name``, if it has one."""
    import psutil

    for addr in psutil.net_if_addrs().get(name, ()):
        if addr.family == socket.AF_INET:
            return str(addr.address)
    return None


def _queue_directives(site: Site, queue: Queue | None) -> tuple[str | None, str | None, str]:
    """The queue as (Slurm partition, PBS queue, extra directive lines)."""
    if queue is None:
        return None, None, ""
    if site.batch != "slurm":
        return None, queue.name, queue.scheduler_options
    partition = queue.partition or (queue.name if site.queue_kind == "partition" else None)
    qos = queue.qos or (queue.name if site.queue_kind == "qos" else None)
    qos_line = f"#SBATCH --qos={qos}" if qos else ""
    return partition, None, _lines(qos_line, queue.scheduler_options)


def _choose_queue(site: Site, over: dict[str, Any]) -> Queue | None:
    names = {over.pop(k) for k in ("queue", "partition") if over.get(k) is not None}
    over.pop("queue", None), over.pop("partition", None)
    if len(names) > 1:
        raise ConfigError("queue", f"two queues given: {sorted(names)}", "one queue (or partition)")
    return site.queue(names.pop() if names else None)


def _check_account(site: Site, account: Any) -> None:
    if account is None:
        if site.account_required:
            example = f" (e.g. {site.account_example})" if site.account_example else ""
            raise ConfigError(
                "account",
                f"{site.name} charges every job to a project and none was given",
                f"--set account=YOUR_PROJECT{example}. {site.account_note}".strip(),
            )
        return
    if not isinstance(account, str) or not account:
        raise ConfigError("account", f"got {account!r}", "the project's name")
    if site.account_pattern and re.fullmatch(site.account_pattern, account) is None:
        raise ConfigError(
            "account",
            f"{account!r} does not look like a {site.name} account",
            f"pattern {site.account_pattern}, e.g. {site.account_example}",
        )


def _check_limits(site: Site, queue: Queue | None, cfg: BlockConfig) -> None:
    if queue is None:
        return
    n = cfg.nodes_per_block
    if queue.max_nodes is not None and n > queue.max_nodes:
        raise ConfigError(
            "nodes_per_block",
            f"{n} is above queue {queue.name}'s limit of {queue.max_nodes}",
            f"1-{queue.max_nodes}, or another queue of {site.name}",
        )
    if queue.min_nodes is not None and n < queue.min_nodes:
        raise ConfigError(
            "nodes_per_block",
            f"{n} is below queue {queue.name}'s minimum of {queue.min_nodes}",
            f"at least {queue.min_nodes}, or a smaller queue ({_small_queues(site)})",
        )
    if queue.max_walltime and cfg.walltime_seconds > parse_walltime(queue.max_walltime):
        raise ConfigError(
            "walltime",
            f"{cfg.walltime} is above queue {queue.name}'s limit",
            f"at most {queue.max_walltime}",
        )


def _small_queues(site: Site) -> str:
    return ", ".join(q.name for q in site.queues if not q.unsupported and (q.min_nodes or 1) == 1)


def _config(site: Site, over: dict[str, Any]) -> BlockConfig:
    if site.provider is None:
        raise ConfigError(
            "batch",
            f"{site.name} runs {site.batch}, and mpiengine has no {site.batch} provider yet",
            f"slurm or pbspro machines; `mpiengine sites show {site.name}` still shows its"
            " launch lines",
        )
    queue = _choose_queue(site, over)
    node = queue.node if queue is not None else site.node
    _check_account(site, over.get("account"))
    partition, pbs_queue, queue_lines = _queue_directives(site, queue)
    binding = node.binding
    launcher_options = site.launcher_options
    if queue is not None and queue.launcher_options is not None:
        launcher_options = queue.launcher_options
    doc: dict[str, Any] = {
        "provider": site.provider,
        "cores_per_node": node.usable_cores,
        "cpu_ids": list(binding.cpu_ids) or None,
        "gpus_per_node": node.gpus,
        "gpu_vendor": binding.gpu_vendor,
        "gpu_tiles": node.gpu_tiles,
        "launcher": site.launcher_name,
        "launcher_executable": site.launcher_executable,
        "launcher_options": list(launcher_options),
        "partition": partition,
        "queue": pbs_queue,
        "scheduler_options": _lines(site.scheduler_options, queue_lines),
        "worker_init": site.worker_init.strip("\n"),
        **site.endpoint,
    }
    default_walltime = parse_walltime(str(doc.get("walltime", BlockConfig.walltime)))
    if queue is not None and queue.max_walltime and "walltime" not in over:
        if parse_walltime(queue.max_walltime) < default_walltime:
            doc["walltime"] = queue.max_walltime  # the default would be refused; fit the queue
    if site.network_interface and "address" not in over:
        address = _interface_address(site.network_interface)
        if address is not None:
            doc["address"] = address
    for key in _APPENDED:
        if over.get(key):
            doc[key] = _lines(doc[key], str(over.pop(key)))
        over.pop(key, None)
    known = {f.name for f in fields(BlockConfig)}
    unknown = sorted(set(over) - known)
    if unknown:
        raise ConfigError(
            "", f"unknown key(s) {unknown}", "queue, partition and the endpoint config's keys"
        )
    doc.update(over)
    cfg = load_config(doc)
    _check_limits(site, queue, cfg)
    return cfg


def site_config(name: str | Path, **overrides: Any) -> BlockConfig:
    """The endpoint config of machine ``name`` with the user's ``overrides``.

    Args:
        name: a shipped machine (``available_sites()``) or a path to a site file.
        overrides: ``queue`` (or ``partition``): one of the site's queues (default: the site's
            default queue); ``account``; and any endpoint config key (``nodes_per_block``,
            ``walltime``, ``max_blocks``, ...), which wins over the site's value.
            ``scheduler_options`` and ``worker_init`` are added after the site's lines.

    Returns:
        The validated endpoint config.

    Raises:
        ConfigError: an unknown machine; a site without a provider (LSF, Flux); a missing or
            malformed account where the site requires one; a queue the site does not have
            (the error lists its queues) or cannot run blocks in; nodes or walltime beyond the
            queue's limits; or any key the endpoint config refuses.
    """
    return load_site(name).config(**overrides)
