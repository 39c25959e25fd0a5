"""Launcher files: loading, golden argv/env/hostfile, properties, refusals, one real MPI run."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mpiengine import launchers
from mpiengine.data import data_dir
from mpiengine.launchers import Launch, LauncherSpec, available_launchers, load_launcher
from mpiengine.placement import Placement
from mpiengine_sdk.errors import ConfigError, SpecError

GOLDEN = Path(__file__).resolve().parents[1] / "golden" / "launchers"
REGEN = "MPIENGINE_REGEN_GOLDEN=1 pytest tests/unit/test_launchers.py"
HOSTFILE = "/sandbox/task-1/hostfile"
SHIPPED = available_launchers()
# Anything a shell would treat specially, and whitespace: never inside a rendered argv element.
UNSAFE = re.compile(r"[\s;&|$`'\"<>()*?!\\{}\[\]~#]")


def _float_like(element: str, nodes: tuple[str, ...]) -> list[str]:
    """Tokens of ``element`` that read as a number but not as a whole number (node names aside)."""
    found = []
    for token in re.split(r"[,:=+]", element):
        if token in nodes or token.isdigit():
            continue
        try:
            float(token)
        except ValueError:
            continue
        found.append(token)
    return found


def _p(nodes, rpn, **kw) -> Placement:
    return Placement("task-1", "block-1", tuple(nodes), rpn, **kw)


# name -> (placement, cores_per_node): the shapes every launcher's golden file pins.
CASES: dict[str, tuple[Placement, int]] = {
    "1node_1rank": (_p(["node1"], 1, cores=((0,),)), 8),
    "3nodes_4ranks": (_p(["node1", "node2", "node3"], 4, cores=((0, 1, 2, 3),) * 3), 8),
    "2nodes_2cpus_1gpu": (
        _p(
            ["nid000012", "nid000013"],
            2,
            cpus_per_rank=2,
            gpus_per_rank=1,
            cores=((4, 5, 6, 7),) * 2,
            gpus=((2, 3),) * 2,
        ),
        8,
    ),
    "2nodes_exclusive": (_p(["node1", "node2"], 2, exclusive=True), 8),
    "2nodes_cores_differ": (_p(["node1", "node2"], 2, cores=((0, 1), (2, 3))), 8),
    "1node_no_core_list": (_p(["node1"], 2, cpus_per_rank=3), 8),
    "1node_1rank_1gpu": (_p(["node1"], 1, cores=((3,),), gpus_per_rank=1, gpus=((1,),)), 8),
}


def _outcome(spec: LauncherSpec, placement: Placement, cores_per_node: int) -> dict[str, object]:
    try:
        launch = spec.render(placement, cores_per_node=cores_per_node, hostfile_path=HOSTFILE)
    except (SpecError, ConfigError) as exc:
        return {"error": f"{type(exc).__name__}: {exc}"}
    return {"argv": list(launch.argv), "env": launch.env, "hostfile": launch.hostfile}


@pytest.mark.parametrize("name", SHIPPED)
def test_every_shipped_launcher_loads(name):
    spec = load_launcher(name)
    assert spec.name == name and spec.description
    assert load_launcher(name) is spec, "parsed files are cached"


def test_the_required_families_ship():
    wanted = {"local", "mpich-fork", "mpich", "srun", "pals", "openmpi", "aprun"}
    wanted |= {"jsrun", "ibrun", "flux"}
    assert wanted <= set(SHIPPED)


@pytest.mark.parametrize("name", SHIPPED)
def test_golden(name):
    spec = load_launcher(name)
    actual = {case: _outcome(spec, p, cpn) for case, (p, cpn) in CASES.items()}
    path = GOLDEN / f"{name}.json"
    if os.environ.get("MPIENGINE_REGEN_GOLDEN") == "1":
        path.write_text(json.dumps(actual, indent=2, sort_keys=True) + "\n")
    assert path.is_file(), f"no golden file {path}; create it with `{REGEN}` and review it"
    expected = json.loads(path.read_text())
    assert actual == expected, (
        f"launcher {name} renders differently from {path}. If the change is intended, "
        f"regenerate with `{REGEN}` and review the diff before committing."
    )


def test_no_stale_golden_files():
    assert sorted(p.stem for p in GOLDEN.glob("*.json")) == SHIPPED


def test_mpich_fork_matches_the_verified_command():
    launch = load_launcher("mpich-fork").render(
        _p(["vnode0", "vnode1"], 2), cores_per_node=2, hostfile_path=None
    )
    assert launch == Launch(
        ("mpiexec", "-launcher", "fork", "-hosts", "vnode0:2,vnode1:2", "-n", "4"), {}, None
    )


@pytest.mark.parametrize("name", SHIPPED)
def test_no_launcher_goes_through_a_shell(name):
    spec = load_launcher(name)
    assert spec.executable is None or Path(spec.executable).name not in {"sh", "bash", "zsh"}


# --- properties -------------------------------------------------------------------------------

_names = st.from_regex(r"[a-z][a-z0-9-]{0,10}", fullmatch=True) | st.from_regex(
    r"nid[0-9]{5}", fullmatch=True
)


@st.composite
def placements(draw):
    nodes = draw(st.lists(_names, min_size=1, max_size=5, unique=True))
    rpn, cpr = draw(st.integers(1, 6)), draw(st.integers(1, 4))
    gpr = draw(st.integers(0, 2))
    cores_per_node = rpn * cpr + draw(st.integers(0, 6))
    same = tuple(range(cores_per_node - rpn * cpr, cores_per_node))
    cores = draw(
        st.sampled_from(
            [
                (),
                (same,) * len(nodes),
                tuple(tuple(range(i, i + rpn * cpr)) for i in range(len(nodes))),
            ]
        )
    )
    gpus = draw(st.sampled_from([(), (tuple(range(rpn * gpr)),) * len(nodes)]))
    exclusive = draw(st.booleans())
    placement = _p(
        nodes,
        rpn,
        cpus_per_rank=cpr,
        gpus_per_rank=gpr,
        cores=cores,
        gpus=gpus,
        exclusive=exclusive,
    )
    return placement, cores_per_node


@settings(max_examples=300, deadline=None)
@given(placements(), st.lists(st.text(max_size=12), max_size=3))
def test_rendered_argv_has_no_float_and_nothing_a_shell_would_read(case, user_options):
    placement, cores_per_node = case
    for name in SHIPPED:
        spec = load_launcher(name)
        if not spec.mpi_tasks and placement.num_ranks > 1:
            continue
        listed = placement.cores and (placement.gpus or not placement.gpus_per_rank)
        if spec.hostfile_format == "erf" and not listed and not placement.exclusive:
            continue  # jsrun names each rank's cores and GPUs: refused without lists
        if spec.executable is None:
            user_options = []
        launch = spec.render(
            placement,
            cores_per_node=cores_per_node,
            hostfile_path=HOSTFILE,
            user_options=user_options,
        )
        argv = list(launch.argv)
        k = len(user_options)
        if spec.user_options_position == "start":
            own, extra = argv[:1] + argv[1 + k :], argv[1 : 1 + k]
        else:
            own, extra = argv[: len(argv) - k], argv[len(argv) - k :]
        assert extra == user_options, "user options are separate elements, never split or joined"
        for element in own + list(launch.env.values()):
            assert element, f"{name}: empty argv element in {argv}"
            assert not UNSAFE.search(element), f"{name}: unsafe {element!r} in {argv}"
            assert not _float_like(element, placement.nodes), f"{name}: {element!r} in {argv}"


@pytest.mark.parametrize("name", [n for n in SHIPPED if load_launcher(n).mpi_tasks])
@pytest.mark.parametrize(
    "field,kw",
    [
        ("ranks_per_node", {"ranks_per_node": 2.0}),
        ("cpus_per_rank", {"cpus_per_rank": 1.5}),
        ("gpus_per_rank", {"gpus_per_rank": 1.0}),
        ("cores_per_node", {}),
    ],
)
def test_a_float_count_is_refused_never_printed(name, field, kw):
    kw = dict(kw)
    placement = Placement("t", "b", ("n1", "n2"), kw.pop("ranks_per_node", 2), **kw)
    cores_per_node = 8.0 if field == "cores_per_node" else 8
    with pytest.raises(SpecError) as info:
        load_launcher(name).render(placement, cores_per_node=cores_per_node)  # type: ignore[arg-type]
    assert info.value.field == field


def test_large_tasks_use_a_hostfile_and_stay_under_the_argument_limit():
    nodes = [f"nid{i:06d}" for i in range(5000)]
    placement = _p(nodes, 4)
    for name in ("mpich", "srun", "pals", "openmpi"):
        launch = load_launcher(name).render(placement, cores_per_node=64, hostfile_path=HOSTFILE)
        assert HOSTFILE in " ".join(launch.argv), name
        assert launch.hostfile is not None and launch.hostfile.count("\n") == len(nodes)
        assert max(len(a.encode()) for a in launch.argv) < 128 * 1024
    whole = _p(nodes, 4, exclusive=True)  # jsrun needs core lists, or whole nodes
    for name in SHIPPED:
        if load_launcher(name).mpi_tasks:
            erf = load_launcher(name).hostfile_format == "erf"
            launch = load_launcher(name).render(
                whole if erf else placement, cores_per_node=64, hostfile_path=HOSTFILE
            )
            assert max(len(a.encode()) for a in launch.argv) < 128 * 1024, name


def test_rendering_is_fast():
    spec, (placement, cores_per_node) = load_launcher("pals"), CASES["3nodes_4ranks"]
    start = time.perf_counter()
    for _ in range(2000):
        spec.render(placement, cores_per_node=cores_per_node)
    per_render = (time.perf_counter() - start) / 2000
    assert per_render < 250e-6, f"{per_render * 1e6:.1f} us per render"


# --- refusals ---------------------------------------------------------------------------------


def test_user_options_are_kept_whole_and_placed_as_declared(tmp_path):
    options = ["--mpi=pmix", "a b", "$(touch x)", ""]
    launch = load_launcher("srun").render(
        CASES["3nodes_4ranks"][0], cores_per_node=8, user_options=options
    )
    assert list(launch.argv[-4:]) == options
    path = _write(tmp_path, "first", "user_options_position: start\nargs: [-n, '{num_ranks}']")
    launch = load_launcher(path).render(_p(["a"], 2), cores_per_node=2, user_options=["-x", "y"])
    assert launch.argv == ("run", "-x", "y", "-n", "2")


@pytest.mark.parametrize("bad", ["--foo bar", ("--a", 1)])
def test_user_options_must_be_a_list_of_strings(bad):
    with pytest.raises(ConfigError, match="launcher_options"):
        load_launcher("srun").render(_p(["a"], 1), cores_per_node=1, user_options=bad)


def test_local_runs_one_process_and_takes_no_options():
    spec = load_launcher("local")
    assert spec.render(_p(["a"], 1), cores_per_node=4) == Launch((), {}, None)
    with pytest.raises(SpecError, match="use an MPI launcher"):
        spec.render(_p(["a"], 2), cores_per_node=4)
    with pytest.raises(ConfigError, match="no command"):
        spec.render(_p(["a"], 1), cores_per_node=4, user_options=["-v"])
    with pytest.raises(ConfigError, match="executable"):
        load_launcher("local", executable="/bin/true")


def test_executable_override_is_argv0():
    spec = load_launcher("srun", executable="/opt/slurm/bin/srun")
    assert spec.render(_p(["a"], 1), cores_per_node=1).argv[0] == "/opt/slurm/bin/srun"
    assert load_launcher("srun").executable == "srun", "the cached spec is not changed"


@pytest.mark.parametrize(
    "nodes,cores_per_node",
    [((), 4), (("a b",), 4), (("a;rm",), 4), (("a", "a"), 4), (("-x",), 4), (("a",), 1)],
)
def test_bad_placements_are_refused(nodes, cores_per_node):
    with pytest.raises(SpecError):
        load_launcher("mpich").render(Placement("t", "b", nodes, 2), cores_per_node=cores_per_node)


@pytest.mark.parametrize("path", [None, "relative/hostfile"])
def test_a_hostfile_needs_an_absolute_path(path):
    placement = _p([f"n{i}" for i in range(1100)], 1)
    with pytest.raises(ConfigError, match="hostfile_path"):
        load_launcher("mpich").render(placement, cores_per_node=1, hostfile_path=path)


def _write(tmp_path: Path, name: str, body: str) -> Path:
    path = tmp_path / f"{name}.yaml"
    head = f"name: {name}\ndescription: test launcher\nexecutable: run\nmpi_tasks: true\n"
    head += "cpu_binding: launcher\ngpu_binding: wrapper\nrank_env: {rank: PMI_RANK}\n"
    path.write_text(head + body + "\n")
    return path


@pytest.mark.parametrize(
    "fmt,text",
    [("host", "a\nb\n"), ("host:slots", "a:3\nb:3\n"), ("host slots=N", "a slots=3\nb slots=3\n")],
)
def test_hostfile_formats(tmp_path, fmt, text):
    path = _write(tmp_path, "hf", f"args: [-f, '{{hostfile}}']\nhostfile: {{format: '{fmt}'}}")
    launch = load_launcher(path).render(_p(["a", "b"], 3), cores_per_node=3, hostfile_path=HOSTFILE)
    assert launch == Launch(("run", "-f", HOSTFILE), {}, text)


@pytest.mark.parametrize(
    "body,needles",
    [
        ("args: ['-n', '{ranks}']", ["args[1]", "unknown placeholder {ranks}", "num_ranks"]),
        ("args: ['-n', '{num_ranks:.1f}']", ["args[1]", "format spec"]),
        ("args: ['-n {num_ranks}']", ["args[0]", "not one argument"]),
        ("args: [-n, 4]", ["args[1]", "quote numbers"]),
        ("args: ['--bind={cpu_bind_list}']", ["args[0]", "cores_uniform"]),
        ("args: [{when: 'gpus > 0', args: [-g]}]", ["args[0].when", "gpus > 0"]),
        ("args: [{when: 'not num_nodes', args: [-g]}]", ["args[0].when", "does not fit"]),
        ("args: [{when: 'exclusive > 1', args: [-g]}]", ["args[0].when", "does not fit"]),
        ("args: ['{hostfile}']", ["args[0]", "hostfile:"]),
        ("args: []\nflags: [-v]", ["(top)", "unknown key(s) ['flags']", "env (default {})"]),
        ("args: [{when: exclusive, arg: [-x]}]", ["args[0]"]),
        (
            "args: []\nenv: {X: {value: '{gpu_ids_csv}', when: exclusive}}",
            ["env.X", "gpus_uniform"],
        ),
        ("args: [", ["cannot read launcher file"]),
    ],
)
def test_a_bad_launcher_file_is_refused_with_a_clear_message(tmp_path, body, needles):
    path = _write(tmp_path, "bad", body)
    with pytest.raises(ConfigError) as info:
        load_launcher(path)
    message = str(info.value)
    assert str(path) in message
    for needle in needles:
        assert needle in message, message


def test_a_file_whose_name_differs_is_refused(tmp_path):
    path = _write(tmp_path, "one", "args: []")
    path = path.rename(tmp_path / "two.yaml")
    with pytest.raises(ConfigError, match="differs from the file name"):
        load_launcher(path)


def test_an_unknown_launcher_lists_the_shipped_ones():
    with pytest.raises(ConfigError, match="unknown launcher 'mpiexec'.*srun"):
        load_launcher("mpiexec")


def test_every_placeholder_renders_and_is_documented(tmp_path):
    readme = (data_dir("launchers") / "README.md").read_text()
    names = sorted(launchers.INT_FACTS | launchers.STR_FACTS.keys() | launchers.BOOL_FACTS)
    assert [n for n in names if f"`{n}`" not in readme] == []
    guards = sorted(launchers.BOOL_FACTS - {"exclusive"})
    fields = sorted(launchers.INT_FACTS | launchers.STR_FACTS.keys())
    body = f"args: [{{when: {guards}, args: {[f'{{{n}}}' for n in fields]}}}]"
    path = _write(tmp_path, "all", body + "\nhostfile: {format: host}")
    placement = _p(
        ["nid000001", "nid000002"],
        2,
        cpus_per_rank=2,
        gpus_per_rank=1,
        cores=((0, 1, 2, 3),) * 2,
        gpus=((0, 1),) * 2,
    )
    launch = load_launcher(path).render(placement, cores_per_node=4, hostfile_path=HOSTFILE)
    assert dict(zip(fields, launch.argv[1:], strict=True)) == {
        "cores_per_node": "4", "cores_per_rank_on_node": "2", "cpu_bind_list": "0,1:2,3",
        "cpu_bind_plus": "0+1,2+3", "cpu_list_csv": "0,1,2,3", "cpus_per_rank": "2",
        "gpu_ids_csv": "0,1", "gpus_per_node": "2", "gpus_per_rank": "1", "hostfile": HOSTFILE,
        "hosts_slots": "nid000001:2,nid000002:2", "lead_node": "nid000001", "nids_csv": "1,2",
        "nodes_csv": "nid000001,nid000002", "num_nodes": "2", "num_ranks": "4",
        "ranks_per_node": "2",
    }  # fmt: skip
    assert launch.hostfile == "nid000001\nnid000002\n"


def test_public_api_is_sorted():
    assert launchers.__all__ == sorted(launchers.__all__)


# --- real MPI ---------------------------------------------------------------------------------

# Each rank writes its own file: ranks printing to one pipe may interleave their lines.
ALLREDUCE = (
    "from mpi4py import MPI; c = MPI.COMM_WORLD; r = c.Get_rank(); "
    "open(f'rank{r}.txt', 'w').write(f'{r} {c.Get_size()} {c.allreduce(r + 1)}')"
)


@pytest.mark.mpi
def test_mpich_fork_runs_a_real_allreduce(tmp_path):
    spec = load_launcher("mpich-fork", executable=str(_mpiexec_or_skip()))
    launch = spec.render(_p(["vnode0", "vnode1"], 2), cores_per_node=2)
    result = subprocess.run(
        [*launch.argv, sys.executable, "-c", ALLREDUCE],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
        env={**os.environ, **launch.env},
    )
    assert result.returncode == 0, result.stderr
    reports = sorted(tuple(map(int, p.read_text().split())) for p in tmp_path.glob("rank*.txt"))
    assert reports == [(rank, 4, 10) for rank in range(4)], (result.stdout, result.stderr)


def _mpiexec_or_skip() -> Path:
    mpiexec = Path(sys.executable).parent / "mpiexec"
    try:
        import mpi4py  # noqa: F401
    except ImportError:
        mpiexec = Path("/missing/mpi4py")
    if not mpiexec.is_file():
        message = f"needs the PyPI mpich wheel's mpiexec and mpi4py ({mpiexec} missing)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return mpiexec


@pytest.mark.mpi
def test_mpich_binds_each_rank_to_its_placed_cores(tmp_path):
    cpus = sorted(os.sched_getaffinity(0))
    ranks = min(2, len(cpus))
    placement = _p(["localhost"], ranks, cores=(tuple(cpus[-ranks:]),))
    spec = load_launcher("mpich", executable=str(_mpiexec_or_skip()))
    launch = spec.render(placement, cores_per_node=len(cpus))
    report = (
        "import os; from mpi4py import MPI; r = MPI.COMM_WORLD.Get_rank(); "
        "open(f'rank{r}.txt', 'w').write(' '.join(map(str, sorted(os.sched_getaffinity(0)))))"
    )
    result = subprocess.run(
        [*launch.argv, sys.executable, "-c", report],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
        env={**os.environ, **launch.env},
    )
    assert result.returncode == 0, (launch.argv, result.stderr)
    bound = sorted(tuple(map(int, p.read_text().split())) for p in tmp_path.glob("rank*.txt"))
    assert bound == [(cpu,) for cpu in cpus[-ranks:]], launch.argv
