"""Launch-line checkers for launchers that cannot run here (and srun, whose site options do not).

Each checker parses an argv with its launcher's documented option grammar (sources below),
refuses unknown options and bad values with :class:`GrammarError`, and computes where every
rank would run: its node, the CPUs it is bound to and the GPUs it sees. The per-rank wrapper
(``bind_rank.sh``) in front of the command is parsed the same way, and what it does (taskset,
the vendor's variable) is applied over the launcher's own binding, reading the rank from the
variable the *launcher* documents, not from what the wrapper was told.

Grammars, from the launchers' documentation:

- PALS ``mpiexec``: HPE Cray PALS man page, as summarised in ALCF's Polaris/Aurora guides
  (``-n``, ``--ppn``, ``--depth``/``-d``, ``--cpu-bind depth|core|none|list:...``, ``--hosts``,
  ``--hostfile``, ``--env``); ``depth`` binding counts the node's usable CPUs (Aurora's guide
  shows rank 0 on CPU 1 when core 0 is reserved).
- ``aprun``: Cray ALPS (NERSC/OLCF/NCSA guides: ``-n -N -d -L -cc -j -S``).
- ``jsrun``: IBM JSM ``jsrun`` and its explicit resource file format (``--erf_input``).
- ``ibrun``: TACC's ibrun (``-n``/``-np``, ``-o``; host list from ``SLURM_NODELIST`` with
  ``IBRUN_TASKS_PER_NODE`` or ``TACC_TASKS_PER_NODE`` entries per node; public source).
- ``flux run``: flux-core man pages (job-param-*, job-constraints, job-shell-options).
- ``srun``: Slurm's srun man page (the options the shipped file and site files use).
- Open MPI ``mpirun`` (4.1 man page; it also runs here, see the launcher tests).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from mpiengine.binding import WRAPPER

__all__ = ["GrammarError", "NodeInfo", "RankPlace", "rank_map"]


class GrammarError(ValueError):
    """An argv its launcher would refuse (unknown option, bad value, inconsistent counts)."""


@dataclass(frozen=True)
class NodeInfo:
    """What a node offers: its usable CPU numbers (in order) and GPU slots."""

    cpus: tuple[int, ...]
    gpu_slots: int
    gpu_tiles: int = 1


@dataclass
class RankPlace:
    """Where one rank runs.

    ``cpus``: the CPUs it is bound to; None when the launcher picks them itself (then ``ncpus``
    of the node's usable ones, distinct between ranks, are guaranteed by the batch system).
    ``gpus``: the GPU slots it sees; None when the batch system picks ``ngpus`` itself; the
    string ``"all"`` when nothing restricts it.
    """

    rank: int
    node: str
    local: int
    cpus: frozenset[int] | None = None
    ncpus: int = 0
    gpus: frozenset[int] | str | None = "all"
    ngpus: int = 0
    env: dict[str, str] = field(default_factory=dict)


def _int(opt: str, value: str, minimum: int = 0) -> int:
    if not re.fullmatch(r"[0-9]+", value) or int(value) < minimum:
        raise GrammarError(f"{opt} takes a whole number >= {minimum}, got {value!r}")
    return int(value)


def _ids(text: str) -> list[int]:
    """``1-3,7`` -> [1, 2, 3, 7] (strictly increasing ranges)."""
    out: list[int] = []
    for part in text.split(","):
        m = re.fullmatch(r"([0-9]+)(?:-([0-9]+))?", part)
        if m is None:
            raise GrammarError(f"bad id list {text!r}")
        lo, hi = int(m.group(1)), int(m.group(2) or m.group(1))
        if hi < lo:
            raise GrammarError(f"bad range {part!r}")
        out.extend(range(lo, hi + 1))
    return out


class _Args:
    """An option scanner: ``--opt=value``, ``--opt value``, ``-o value``, flags."""

    def __init__(self, argv: Sequence[str]) -> None:
        self.argv = list(argv)
        self.i = 0

    def more(self) -> bool:
        return self.i < len(self.argv)

    def peek(self) -> str:
        return self.argv[self.i]

    def take(self) -> str:
        self.i += 1
        return self.argv[self.i - 1]

    def value(self, opt: str, inline: str | None) -> str:
        if inline is not None:
            return inline
        if not self.more():
            raise GrammarError(f"{opt} needs a value")
        return self.take()

    def rest(self) -> list[str]:
        return self.argv[self.i :]


def _options(
    args: _Args, spec: Mapping[str, str], aliases: Mapping[str, str], stop: Callable[[str], bool]
) -> dict[str, list[str]]:
    """Scan options until ``stop(arg)``: ``spec`` maps a long name to 'flag' or 'value'."""
    found: dict[str, list[str]] = {}
    while args.more() and not stop(args.peek()):
        raw = args.take()
        name, _, inline = raw.partition("=")
        inline_value: str | None = inline if "=" in raw else None
        name = aliases.get(name, name)
        if name not in spec:
            raise GrammarError(f"unknown option {raw!r}")
        if spec[name] == "flag":
            if inline_value is not None:
                raise GrammarError(f"{name} takes no value")
            found.setdefault(name, []).append("")
        else:
            found.setdefault(name, []).append(args.value(name, inline_value))
    return found


def _last(found: Mapping[str, list[str]], name: str) -> str | None:
    values = found.get(name)
    return values[-1] if values else None


def _depth_groups(cpus: Sequence[int], ranks: int, depth: int) -> list[frozenset[int]]:
    if ranks * depth > len(cpus):
        raise GrammarError(f"{ranks} ranks x depth {depth} exceed the node's {len(cpus)} CPUs")
    return [frozenset(cpus[r * depth : (r + 1) * depth]) for r in range(ranks)]


def _list_groups(text: str, ranks: int) -> list[frozenset[int]]:
    groups = [frozenset(_ids(g)) for g in text.split(":")]
    if any(not g for g in groups):
        raise GrammarError(f"empty group in cpu list {text!r}")
    return [groups[r % len(groups)] for r in range(ranks)]


def _spread(nodes: Sequence[str], per_node: int, total: int) -> list[tuple[str, int]]:
    """Block distribution: ``per_node`` consecutive ranks on each node."""
    if total > per_node * len(nodes):
        raise GrammarError(f"{total} ranks do not fit {len(nodes)} nodes x {per_node}")
    return [(nodes[r // per_node], r % per_node) for r in range(total)]


# --- PALS mpiexec ------------------------------------------------------------------------------

_PALS = {
    "--np": "value", "--ppn": "value", "--depth": "value", "--cpu-bind": "value",
    "--hosts": "value", "--hostfile": "value", "--env": "value", "--envall": "flag",
    "--envnone": "flag", "--envlist": "value", "--label": "flag", "--line-buffer": "flag",
    "--no-transfer": "flag", "--mem-bind": "value", "--umask": "value", "--exclusive": "flag",
}  # fmt: skip
_PALS_ALIASES = {"-n": "--np", "-np": "--np", "-ppn": "--ppn", "-d": "--depth", "-env": "--env",
                 "-hosts": "--hosts", "-hostfile": "--hostfile", "-l": "--label"}  # fmt: skip


def _pals(
    argv: list[str], files: Mapping[str, str], nodes: Mapping[str, NodeInfo]
) -> tuple[list[RankPlace], list[str]]:
    args = _Args(argv[1:])
    found = _options(args, _PALS, _PALS_ALIASES, lambda a: not a.startswith("-"))
    n = _int("-n", _last(found, "--np") or "1", 1)
    ppn = _int("--ppn", _last(found, "--ppn") or "1", 1)
    hosts = _hosts(found, "--hosts", "--hostfile", files)
    depth = _int("--depth", _last(found, "--depth") or "1", 1)
    bind = _last(found, "--cpu-bind") or "none"
    places = []
    per_node: dict[str, list[frozenset[int]] | None] = {}
    for host in dict.fromkeys(hosts):
        cpus = nodes[host].cpus
        if bind in ("depth", "core"):
            per_node[host] = _depth_groups(cpus, ppn, depth)
        elif bind.startswith("list:"):
            per_node[host] = _list_groups(bind[5:], ppn)
        elif bind in ("none", "numa", "socket"):
            per_node[host] = None
        else:
            raise GrammarError(
                f"--cpu-bind {bind!r}: one of none, numa, socket, core, depth, list:"
            )
    for rank, (host, local) in enumerate(_spread(hosts, ppn, n)):
        groups = per_node[host]
        env = {"PALS_RANKID": str(rank), "PALS_LOCAL_RANKID": str(local)}
        cpus = None if groups is None else groups[local]
        places.append(RankPlace(rank, host, local, cpus, len(cpus or ()), env=env))
    for place in places:
        if place.cpus is None:
            place.cpus = frozenset(nodes[place.node].cpus)  # unbound: any CPU of the node
            place.ncpus = len(place.cpus)
    return places, args.rest()


def _hosts(found: Mapping[str, list[str]], hosts_opt: str, file_opt: str,
           files: Mapping[str, str]) -> list[str]:  # fmt: skip
    listed = _last(found, hosts_opt)
    path = _last(found, file_opt)
    if listed is not None and path is not None:
        raise GrammarError(f"both {hosts_opt} and {file_opt}")
    if listed is not None:
        hosts = listed.split(",")
    elif path is not None:
        if Path(path).name not in files:
            raise GrammarError(f"{file_opt} {path} was not written")
        hosts = files[Path(path).name].split()
    else:
        raise GrammarError("no hosts named: the launch would use the whole job")
    if len(set(hosts)) != len(hosts) or not all(hosts):
        raise GrammarError(f"bad host list {hosts}")
    return hosts


# --- aprun -------------------------------------------------------------------------------------

_APRUN = {"-n": "value", "-N": "value", "-d": "value", "-L": "value", "-cc": "value",
          "-j": "value", "-S": "value", "-q": "flag", "-e": "value"}  # fmt: skip


def _aprun(
    argv: list[str], files: Mapping[str, str], nodes: Mapping[str, NodeInfo]
) -> tuple[list[RankPlace], list[str]]:
    args = _Args(argv[1:])
    found = _options(args, _APRUN, {}, lambda a: not a.startswith("-"))
    n = _int("-n", _last(found, "-n") or "1", 1)
    ppn = _int("-N", _last(found, "-N") or "1", 1)
    depth = _int("-d", _last(found, "-d") or "1", 1)
    listed = _last(found, "-L")
    if listed is None:
        raise GrammarError("no -L: ALPS would choose the nodes")
    names = {_nid(name): name for name in nodes}
    hosts = [names.get(int(x), x) if x.isdigit() else x for x in listed.split(",")]
    cc = _last(found, "-cc") or "cpu"
    places = []
    for rank, (host, local) in enumerate(_spread(hosts, ppn, n)):
        cpus = nodes[host].cpus
        if cc == "depth":
            group = _depth_groups(cpus, ppn, depth)[local]
        elif cc == "none":
            group = frozenset(cpus)
        elif re.fullmatch(r"[0-9,:-]+", cc):
            group = _list_groups(cc, ppn)[local]
        else:
            raise GrammarError(f"-cc {cc!r}: depth, none or a CPU list")
        env = {"ALPS_APP_PE": str(rank)}
        places.append(RankPlace(rank, host, local, group, len(group), env=env))
    return places, args.rest()


def _nid(name: str) -> int:
    m = re.fullmatch(r"nid0*([0-9]+)", name)
    return int(m.group(1)) if m else -1


# --- jsrun + explicit resource file ------------------------------------------------------------

_JSRUN = {"--erf_input": "value", "--nrs": "value", "--tasks_per_rs": "value",
          "--cpu_per_rs": "value", "--gpu_per_rs": "value", "--rs_per_host": "value",
          "--bind": "value", "--smpiargs": "value", "--stdio_mode": "value"}  # fmt: skip
_JSRUN_ALIASES = {"-n": "--nrs", "-a": "--tasks_per_rs", "-c": "--cpu_per_rs",
                  "-g": "--gpu_per_rs", "-r": "--rs_per_host", "-b": "--bind"}  # fmt: skip
_ERF_LINE = re.compile(
    r"rank: ([0-9]+): \{ hosts: ([A-Za-z0-9._-]+); cpu: \{([0-9,]+)\}(?:; gpu: \{([0-9,]+)\})? \}"
)


def _jsrun(
    argv: list[str], files: Mapping[str, str], nodes: Mapping[str, NodeInfo]
) -> tuple[list[RankPlace], list[str]]:
    args = _Args(argv[1:])
    found = _options(args, _JSRUN, _JSRUN_ALIASES, lambda a: not a.startswith("-"))
    path = _last(found, "--erf_input")
    if path is None:
        raise GrammarError("no --erf_input: resource sets cannot name hosts")
    if set(found) - {"--erf_input", "--smpiargs", "--stdio_mode"}:
        raise GrammarError("--erf_input excludes the resource-set options")
    text = files.get(Path(path).name)
    if text is None:
        raise GrammarError(f"--erf_input {path} was not written")
    lines = text.splitlines()
    if not lines or lines[0] not in ("cpu_index_using: physical", "cpu_index_using: logical"):
        raise GrammarError("an ERF starts with its cpu_index_using preamble")
    places = []
    local_count: dict[str, int] = {}
    for line in lines[1:]:
        m = _ERF_LINE.fullmatch(line)
        if m is None:
            raise GrammarError(f"bad ERF line {line!r}")
        rank, host = int(m.group(1)), m.group(2)
        if rank != len(places):
            raise GrammarError(f"ERF ranks out of order at {rank}")
        if host not in nodes:
            raise GrammarError(f"ERF host {host} is not in the job")
        cpus = frozenset(_ids(m.group(3)))
        gpus = frozenset(_ids(m.group(4))) if m.group(4) else frozenset()
        local = local_count.get(host, 0)
        local_count[host] = local + 1
        env = {"JSM_NAMESPACE_RANK": str(rank), "JSM_NAMESPACE_LOCAL_RANK": str(local)}
        places.append(RankPlace(rank, host, local, cpus, len(cpus), gpus, len(gpus), env=env))
    return places, args.rest()


# --- ibrun -------------------------------------------------------------------------------------


def _ibrun(
    argv: list[str], env: Mapping[str, str], nodes: Mapping[str, NodeInfo]
) -> tuple[list[RankPlace], list[str]]:
    args = _Args(argv[1:])
    found = _options(args, {"-n": "value", "-np": "value", "-o": "value"}, {},
                     lambda a: a not in ("-n", "-np", "-o"))  # fmt: skip
    if "-o" in found and "-n" not in found:
        raise GrammarError("ibrun: -o without -n")
    hosts = env.get("SLURM_NODELIST", "").split(",")
    tpn_text = env.get("IBRUN_TASKS_PER_NODE") or env.get("TACC_TASKS_PER_NODE")
    if not all(hosts) or tpn_text is None:
        raise GrammarError("ibrun's host list needs SLURM_NODELIST and IBRUN_TASKS_PER_NODE")
    tpn = _int("IBRUN_TASKS_PER_NODE", tpn_text, 1)
    slots = [(h, i) for h in hosts for i in range(tpn)]
    n = _int("-n", _last(found, "-n") or _last(found, "-np") or str(len(slots)), 1)
    offset = _int("-o", _last(found, "-o") or "0")
    if offset + n > len(slots):
        raise GrammarError("ibrun: -n plus -o exceed the host list")
    pinned = env.get("I_MPI_PIN", "1") != "0"
    places = []
    for rank, (host, local) in enumerate(slots[offset : offset + n]):
        cpus = nodes[host].cpus
        if pinned:  # Intel MPI's default domains: the node split evenly among its ranks
            share = len(cpus) // tpn
            group = frozenset(cpus[local * share : (local + 1) * share])
        else:
            group = frozenset(cpus)
        env_r = {"PMI_RANK": str(rank), "MPI_LOCALRANKID": str(local)}
        places.append(RankPlace(rank, host, local, group, len(group), env=env_r))
    return places, args.rest()


# --- flux run ----------------------------------------------------------------------------------

_FLUX = {"--nodes": "value", "--ntasks": "value", "--cores-per-task": "value",
         "--gpus-per-task": "value", "--exclusive": "flag", "--requires": "value",
         "--setopt": "value", "--tasks-per-node": "value", "--queue": "value",
         "--time-limit": "value", "--bank": "value", "--job-name": "value"}  # fmt: skip
_FLUX_ALIASES = {"-N": "--nodes", "-n": "--ntasks", "-c": "--cores-per-task",
                 "-g": "--gpus-per-task", "-x": "--exclusive", "-o": "--setopt",
                 "-q": "--queue", "-t": "--time-limit", "-B": "--bank"}  # fmt: skip
_AFFINITY = re.compile(r"(off|on|per-task|map:[0-9,;:-]+)")


def _flux(
    argv: list[str], files: Mapping[str, str], nodes: Mapping[str, NodeInfo]
) -> tuple[list[RankPlace], list[str]]:
    if len(argv) < 2 or argv[1] != "run":
        raise GrammarError("flux: expected the 'run' subcommand")
    args = _Args(argv[2:])
    found = _options(args, _FLUX, _FLUX_ALIASES, lambda a: not a.startswith("-"))
    n_nodes = _int("--nodes", _last(found, "--nodes") or "0", 1)
    ntasks = _int("--ntasks", _last(found, "--ntasks") or "1", 1)
    cores = _int("--cores-per-task", _last(found, "--cores-per-task") or "1", 1)
    gpus = _int("--gpus-per-task", _last(found, "--gpus-per-task") or "0")
    opts: dict[str, str] = {}
    for item in found.get("--setopt", []):
        key, _, value = item.partition("=")
        if key not in ("cpu-affinity", "gpu-affinity") or not _AFFINITY.fullmatch(value):
            raise GrammarError(f"-o {item!r}: cpu-affinity/gpu-affinity=off|on|per-task|map:")
        opts[key] = value
    requires = _last(found, "--requires")
    m = re.fullmatch(r"(?:hosts?|hostlist):([A-Za-z0-9._,-]+)", requires or "")
    if m is None:
        raise GrammarError(f"--requires {requires!r}: expected hosts:HOSTLIST")
    hosts = m.group(1).split(",")
    if len(hosts) != n_nodes or len(set(hosts)) != len(hosts):
        raise GrammarError(f"--nodes={n_nodes} with {len(hosts)} required hosts")
    if ntasks % n_nodes:
        raise GrammarError(f"{ntasks} tasks do not spread evenly over {n_nodes} nodes")
    per_node = ntasks // n_nodes
    if "--exclusive" in found and "--nodes" not in found:
        raise GrammarError("--exclusive needs --nodes")
    places = []
    for rank, (host, local) in enumerate(_spread(hosts, per_node, ntasks)):
        node_cpus = nodes[host].cpus
        if per_node * cores > len(node_cpus) or per_node * gpus > nodes[host].gpu_slots:
            raise GrammarError(f"{per_node} tasks x {cores} cores / {gpus} GPUs overfill {host}")
        if opts.get("cpu-affinity", "on") == "off":
            cpus: frozenset[int] | None = frozenset(node_cpus)
        elif opts.get("cpu-affinity") == "per-task" and "--exclusive" in found:
            cpus = frozenset(node_cpus[local * cores : (local + 1) * cores])
        else:
            cpus = None  # Flux picks the cores of its allocation
        seen: frozenset[int] | str | None = "all"
        if gpus and opts.get("gpu-affinity", "on") != "off":
            seen = None  # Flux picks; it sets CUDA_VISIBLE_DEVICES
        env = {"FLUX_TASK_RANK": str(rank), "FLUX_TASK_LOCAL_ID": str(local)}
        places.append(RankPlace(rank, host, local, cpus, cores, seen, gpus, env=env))
    return places, args.rest()


# --- srun --------------------------------------------------------------------------------------

_SRUN = {"--nodes": "value", "--ntasks": "value", "--ntasks-per-node": "value",
         "--nodelist": "value", "--cpus-per-task": "value", "--exclusive": "flag",
         "--exact": "flag", "--overlap": "flag", "--gpus-per-task": "value", "--mpi": "value",
         "--gpu-bind": "value", "--distribution": "value", "--hint": "value",
         "--cpu-bind": "value", "--threads-per-core": "value", "--partition": "value",
         "--account": "value", "--label": "flag", "--unbuffered": "flag"}  # fmt: skip
_SRUN_ALIASES = {"-N": "--nodes", "-n": "--ntasks", "-w": "--nodelist", "-c": "--cpus-per-task",
                 "-m": "--distribution", "-p": "--partition", "-A": "--account", "-l": "--label",
                 "-u": "--unbuffered"}  # fmt: skip
_SRUN_VALUES = {
    "--mpi": re.compile(r"none|pmi2|pmix(_v[0-9]+)?|cray_shasta"),
    "--gpu-bind": re.compile(
        r"(verbose,)?(closest|none|map_gpu:[0-9,]+|mask_gpu:[0-9a-fA-Fx,]+|single:[0-9]+"
        r"|per_task:[0-9]+)"
    ),
    "--distribution": re.compile(
        r"(\*|block|cyclic|arbitrary|plane=[0-9]+)"
        r"(:(\*|block|cyclic|fcyclic))?(:(\*|block|cyclic|fcyclic))?(,(Pack|NoPack))?"
    ),
    "--hint": re.compile(r"compute_bound|memory_bound|multithread|nomultithread"),
    "--cpu-bind": re.compile(
        r"(verbose,)?(none|cores|threads|sockets|ldoms|rank"
        r"|map_cpu:[0-9,]+|mask_cpu:[0-9a-fA-Fx,]+)"
    ),
}


def _srun(
    argv: list[str], files: Mapping[str, str], nodes: Mapping[str, NodeInfo]
) -> tuple[list[RankPlace], list[str]]:
    args = _Args(argv[1:])
    found = _options(args, _SRUN, _SRUN_ALIASES, lambda a: not a.startswith("-"))
    for opt, pattern in _SRUN_VALUES.items():
        for value in found.get(opt, []):
            if not pattern.fullmatch(value):
                raise GrammarError(f"{opt}={value!r} is not a value srun takes")
    if "--hint" in found and "--cpu-bind" in found:
        raise GrammarError("--hint is incompatible with --cpu-bind")
    if "--overlap" in found and ("--exclusive" in found or "--gpus-per-task" in found):
        raise GrammarError("an --overlap step can be neither exclusive nor ask for GPUs")
    listed = _last(found, "--nodelist")
    if listed is None:
        raise GrammarError("no --nodelist: Slurm would choose the step's nodes")
    hosts = files[Path(listed).name].split() if "/" in listed else listed.split(",")
    n_nodes = _int("--nodes", _last(found, "--nodes") or str(len(hosts)), 1)
    if n_nodes != len(hosts):
        raise GrammarError(f"--nodes={n_nodes} with {len(hosts)} listed nodes")
    ntasks = _int("--ntasks", _last(found, "--ntasks") or str(n_nodes), 1)
    per_node = _int("--ntasks-per-node", _last(found, "--ntasks-per-node") or "1", 1)
    if ntasks != per_node * n_nodes:
        raise GrammarError(f"--ntasks={ntasks} is not {per_node} x {n_nodes}")
    cpt = _int("--cpus-per-task", _last(found, "--cpus-per-task") or "1", 1)
    gpt = _int("--gpus-per-task", _last(found, "--gpus-per-task") or "0")
    places = []
    for rank, (host, local) in enumerate(_spread(hosts, per_node, ntasks)):
        if per_node * cpt > len(nodes[host].cpus) or per_node * gpt > nodes[host].gpu_slots:
            raise GrammarError(f"{per_node} tasks x {cpt} CPUs / {gpt} GPUs overfill {host}")
        gpus: frozenset[int] | str | None = None if gpt else "all"
        env = {"SLURM_PROCID": str(rank), "SLURM_LOCALID": str(local)}
        places.append(RankPlace(rank, host, local, None, cpt, gpus, gpt, env=env))
    return places, args.rest()


# --- Open MPI mpirun ---------------------------------------------------------------------------

_OMPI = {"--np": "value", "--host": "value", "--hostfile": "value", "--map-by": "value",
         "--bind-to": "value", "--cpu-set": "value", "--allow-run-as-root": "flag",
         "--oversubscribe": "flag", "-x": "value", "--report-bindings": "flag"}  # fmt: skip
_OMPI_ALIASES = {"-n": "--np", "-np": "--np", "-H": "--host", "--machinefile": "--hostfile"}


def _openmpi(
    argv: list[str], files: Mapping[str, str], nodes: Mapping[str, NodeInfo]
) -> tuple[list[RankPlace], list[str]]:
    args = _Args(argv[1:])
    found = _options(args, _OMPI, _OMPI_ALIASES, lambda a: not a.startswith("-"))
    if "--host" in found and "--hostfile" in found:
        raise GrammarError("both --host and --hostfile")
    if "--cpu-set" in found and "--map-by" in found:
        raise GrammarError("Open MPI 4.x refuses --cpu-set with --map-by")
    listed = _last(found, "--host")
    if listed is None:
        path = _last(found, "--hostfile") or ""
        lines = files.get(Path(path).name, "").splitlines()
        listed = ",".join(line.replace(" slots=", ":") for line in lines)
    slots: list[tuple[str, int]] = []
    for entry in listed.split(","):
        host, _, count = entry.partition(":")
        slots.append((host, _int("slots", count or "1", 1)))
    n = _int("--np", _last(found, "--np") or str(sum(c for _, c in slots)), 1)
    map_by = _last(found, "--map-by") or "slot"
    m = re.fullmatch(r"ppr:([0-9]+):node(?::PE=([0-9]+))?|slot|node", map_by)
    if m is None:
        raise GrammarError(f"--map-by {map_by!r}")
    per_node = int(m.group(1)) if m and m.group(1) else None
    pe = int(m.group(2)) if m and m.group(2) else 1
    bind = _last(found, "--bind-to") or "core"
    if bind not in ("none", "core", "hwthread", "socket", "numa"):
        raise GrammarError(f"--bind-to {bind!r}")
    order = [(h, i) for h, c in slots for i in range(per_node or c)]
    if n > len(order):
        raise GrammarError(f"{n} ranks for {len(order)} slots")
    cpu_set = frozenset(_ids(_last(found, "--cpu-set") or "")) if "--cpu-set" in found else None
    places = []
    for rank, (host, local) in enumerate(order[:n]):
        cpus = nodes[host].cpus
        if bind == "none":
            group = cpu_set if cpu_set is not None else frozenset(cpus)
        else:
            group = frozenset(cpus[local * pe : (local + 1) * pe])
        env = {"OMPI_COMM_WORLD_RANK": str(rank), "OMPI_COMM_WORLD_LOCAL_RANK": str(local)}
        places.append(RankPlace(rank, host, local, group, len(group), env=env))
    return places, args.rest()


# --- the per-rank wrapper ----------------------------------------------------------------------


def _wrapper(rest: list[str], places: list[RankPlace], nodes: Mapping[str, NodeInfo]) -> list[str]:
    """Apply ``/bin/sh WRAPPER ...`` in front of the command, if there; return the command."""
    if rest[:2] != ["/bin/sh", WRAPPER]:
        return rest
    if len(rest) < 10 or rest[9] != "--":
        raise GrammarError(f"bad wrapper argv {rest[:10]}")
    rankvar, localvar, rpn_text, cpus, gpus, gpuvar, tiles_text = rest[2:9]
    rpn, tiles = _int("RPN", rpn_text, 1), _int("TILES", tiles_text, 1)
    for place in places:
        grank = int(place.env.get(rankvar, "0")) if rankvar != "-" else 0
        if rankvar != "-" and rankvar not in place.env:
            raise GrammarError(f"the wrapper reads {rankvar}, which this launcher does not set")
        lrank = grank % rpn
        if localvar != "-":
            if localvar not in place.env:
                raise GrammarError(
                    f"the wrapper reads {localvar}, which this launcher does not set"
                )
            lrank = int(place.env[localvar])
        node_index = grank // rpn
        if cpus != "-":
            place.cpus = frozenset(_ids(_pick(cpus, node_index, lrank)))
            place.ncpus = len(place.cpus)
        if gpus != "-" and gpuvar != "-":
            slots = _ids(_pick(gpus, node_index, lrank))
            place.gpus = frozenset(slots)
            place.ngpus = len(slots)
            place.env[gpuvar] = ",".join(
                f"{s // tiles}.{s % tiles}" if tiles > 1 else str(s) for s in slots
            )
    return rest[10:]


def _pick(text: str, node_index: int, lrank: int) -> str:
    node_groups = text.split(";")
    ranks = node_groups[node_index % len(node_groups)].split(":")
    return ranks[lrank % len(ranks)]


_CHECKERS = {
    "mpiexec": _pals,
    "aprun": _aprun,
    "jsrun": _jsrun,
    "flux": _flux,
    "srun": _srun,
    "mpirun": _openmpi,
}


def rank_map(
    argv: Sequence[str],
    env: Mapping[str, str],
    files: Mapping[str, str],
    nodes: Mapping[str, NodeInfo],
) -> tuple[list[RankPlace], list[str]]:
    """Parse a launch (launcher, wrapper, command) and place every rank.

    Args:
        argv: the whole argv of the launch.
        env: the environment the launch adds.
        files: the sandbox files by name (hostfile, lead.hostfile).
        nodes: the job's nodes by name.

    Returns:
        Where each rank runs, and the command each runs.

    Raises:
        GrammarError: the launcher would refuse the argv, or it names nodes outside the job.
    """
    exe = Path(argv[0]).name
    try:
        if exe == "ibrun":
            places, rest = _ibrun(list(argv), env, nodes)
        elif exe in _CHECKERS:
            places, rest = _CHECKERS[exe](list(argv), files, nodes)
        else:
            raise GrammarError(f"no grammar for launcher {exe!r}")
    except KeyError as exc:  # a host the job does not have
        raise GrammarError(f"{exc.args[0]} is not a node of the job") from None
    for place in places:
        if place.node not in nodes:
            raise GrammarError(f"rank {place.rank} on {place.node}, not a node of the job")
    command = _wrapper(rest, places, nodes)
    if not command or command[0].startswith("-"):
        raise GrammarError(f"no command after the launcher's options: {rest[:3]}")
    return places, command
