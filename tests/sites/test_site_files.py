"""Site files load and are checked; a site plus a user's overrides becomes an endpoint config
(required values refused when missing, only the site's queues, the user's values winning); the
CLI lists, shows and configures by name."""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from mpiengine.cli import main
from mpiengine.config import BlockConfig
from mpiengine.data import data_dir
from mpiengine.launchers import load_launcher
from mpiengine.sites import available_sites, load_site, site_config
from mpiengine.slurm_endpoint import BatchEndpoint
from mpiengine_sdk.errors import ConfigError

pytestmark = pytest.mark.sites

SITES = available_sites()


@pytest.mark.parametrize("name", SITES)
def test_every_shipped_site_loads_with_sources_and_a_working_launcher(name: str) -> None:
    site = load_site(name)
    assert site.name == name and site.description and site.sources
    assert all(url.startswith("https://") for url in site.sources)
    assert site.launcher().name == site.launcher_name
    assert site.node.usable_cores == len(site.node.cpu_ids) >= 1
    assert load_site(name) is site, "site files are parsed once"


def test_at_least_25_machines_ship() -> None:
    assert len(SITES) >= 25


def test_the_issues_machines_all_ship() -> None:
    wanted = {
        "polaris", "aurora", "sophia", "perlmutter-cpu", "perlmutter-gpu", "frontier", "andes",
        "frontera", "stampede3", "vista", "lonestar6", "delta", "deltaai", "expanse", "anvil",
        "bridges-2", "lumi-c", "lumi-g", "derecho", "daint", "juwels-booster", "jureca-dc",
        "archer2", "leonardo-booster", "leonardo-dcgp", "marenostrum5-acc", "marenostrum5-gpp",
        "lassen", "tioga",
    }  # fmt: skip
    assert wanted <= set(SITES), sorted(wanted - set(SITES))


@pytest.mark.parametrize("name", SITES)
def test_every_site_with_a_provider_gives_a_valid_endpoint_config(name: str) -> None:
    site = load_site(name)
    if site.provider is None:
        with pytest.raises(ConfigError, match="no .* provider yet"):
            site.config(account="x")
        return
    cfg = site.config(account=site.account_example or "x", nodes_per_block=_nodes(site))
    assert cfg.provider == site.provider and cfg.launcher == site.launcher_name
    node = site.default_queue.node if site.default_queue else site.node
    assert cfg.cores_per_node == node.usable_cores and cfg.gpus_per_node == node.gpus
    assert cfg.binding.cpu_ids == node.binding.cpu_ids
    for line in site.scheduler_options.splitlines():
        assert line in cfg.scheduler_options


def _nodes(site) -> int:
    q = site.default_queue
    return max(q.min_nodes or 1, 1) if q else 1


# --- site -> endpoint config -------------------------------------------------------------------


def test_a_required_account_is_refused_clearly_when_missing() -> None:
    with pytest.raises(ConfigError) as info:
        site_config("polaris")
    assert info.value.key == "account"
    assert "polaris charges every job to a project" in str(info.value)
    assert "--set account=" in str(info.value)


def test_an_account_the_site_would_not_accept_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"does not look like a lumi-g account.*project_"):
        site_config("lumi-g", account="myproj")
    assert site_config("lumi-g", account="project_465000001").account == "project_465000001"


def test_a_queue_not_of_the_site_is_refused_with_the_sites_queues() -> None:
    with pytest.raises(ConfigError) as info:
        site_config("polaris", account="a", queue="gpu")
    message = str(info.value)
    assert "'gpu' is not a queue of polaris" in message
    for name in ("debug", "debug-scaling", "prod", "preemptable", "demand", "capacity"):
        assert name in message


def test_an_unsupported_queue_is_refused_with_its_reason() -> None:
    with pytest.raises(ConfigError, match="shares nodes by core"):
        site_config("perlmutter-cpu", queue="shared")


def test_queue_limits_are_checked_and_the_default_walltime_fits_the_queue() -> None:
    with pytest.raises(ConfigError, match="below queue prod's minimum of 10"):
        site_config("polaris", account="a", queue="prod")
    with pytest.raises(ConfigError, match="above queue debug's limit of 2"):
        site_config("polaris", account="a", nodes_per_block=3)
    with pytest.raises(ConfigError, match="at most 01:00:00"):
        site_config("polaris", account="a", walltime="02:00:00")
    assert site_config("archer2", account="t01", queue="short").walltime == "00:20:00"
    assert site_config("polaris", account="a", queue="prod", nodes_per_block=10).queue == "prod"


def test_overrides_win_and_the_users_directives_follow_the_sites() -> None:
    cfg = site_config(
        "perlmutter-gpu",
        queue="regular",
        account="m1",
        launcher_options=["--mpi=pmix"],
        scheduler_options="#SBATCH --constraint=gpu&hbm80g",
        worker_init="module load python",
        max_blocks=3,
        cmd_timeout=99,
    )
    assert cfg.launcher_options == ["--mpi=pmix"] and cfg.max_blocks == 3
    assert cfg.cmd_timeout == 99
    lines = cfg.scheduler_options.splitlines()
    assert lines == [
        "#SBATCH --constraint=gpu",
        "#SBATCH --gpus-per-node=4",
        "#SBATCH --qos=regular",
        "#SBATCH --constraint=gpu&hbm80g",  # later: sbatch keeps it
    ]
    assert cfg.worker_init.endswith("module load python")
    assert site_config("frontera", queue="small", cmd_timeout=5).cmd_timeout == 5  # site: 60


def test_queue_kinds_reach_the_batch_system() -> None:
    archer = site_config("archer2", account="t01", queue="highmem")
    assert archer.partition == "highmem" and "#SBATCH --qos=highmem" in archer.scheduler_options
    frontier = site_config("frontier", account="X", queue="debug")
    assert frontier.partition == "batch" and "#SBATCH --qos=debug" in frontier.scheduler_options
    polaris = site_config("polaris", account="a", queue="debug-scaling")
    assert polaris.queue == "debug-scaling" and polaris.partition is None
    assert site_config("delta", account="abcd-delta-gpu", partition="gpuA100x4").gpus_per_node == 4
    with pytest.raises(ConfigError, match="two queues"):
        site_config("delta", account="abcd-delta-cpu", queue="cpu", partition="gpuA40x4")


def test_reserved_cores_become_the_configs_cpu_ids() -> None:
    cfg = site_config("frontier", account="X")
    assert cfg.cores_per_node == 56 and cfg.cpu_ids is not None
    assert 0 not in cfg.cpu_ids and 8 not in cfg.cpu_ids and cfg.cpu_ids[:2] == [1, 2]
    assert site_config("polaris", account="a").cpu_ids is None  # 0..31: no table needed


def test_a_queue_with_other_nodes_changes_the_node_shape() -> None:
    cfg = site_config("stampede3", queue="pvc")
    assert (cfg.cores_per_node, cfg.gpus_per_node, cfg.gpu_vendor) == (96, 4, "intel")
    assert cfg.gpu_tiles == 2 and cfg.launcher == "ibrun"


def test_the_login_nodes_interface_gives_the_endpoints_address(monkeypatch) -> None:
    import mpiengine.sites as sites

    monkeypatch.setattr(sites, "_interface_address", lambda name: "10.1.2.3")
    assert site_config("polaris", account="a").address == "10.1.2.3"
    assert site_config("polaris", account="a", address="10.9.9.9").address == "10.9.9.9"
    monkeypatch.setattr(sites, "_interface_address", lambda name: None)
    assert site_config("polaris", account="a").address == BlockConfig.address


def test_unknown_keys_and_machines_are_refused() -> None:
    with pytest.raises(ConfigError, match=r"unknown key\(s\) \['nodes'\]"):
        site_config("polaris", account="a", nodes=2)
    with pytest.raises(ConfigError, match="unknown machine 'summit'.*polaris"):
        site_config("summit")


def test_batch_endpoint_from_site(tmp_path: Path) -> None:
    ep = BatchEndpoint.from_site(
        "frontier",
        account="X",
        workdir=tmp_path,
        provider=object(),  # type: ignore[arg-type]
    )
    assert ep.config.partition == "batch" and ep.config.cores_per_node == 56
    assert ep._launcher.site_options == ("--mpi=cray_shasta",)
    with pytest.raises(ConfigError, match="account"):
        BatchEndpoint.from_site("frontier", workdir=tmp_path)


# --- bad site files ----------------------------------------------------------------------------

GOOD = """\
name: NAME
title: T
facility: F
description: d
batch: slurm
launcher: {name: srun}
node: {cores: 4}
queues: [{name: q, default: true}]
account: {required: false}
sources: [https://example.org/guide]
checked: 2026-08
"""


def _site(tmp_path: Path, name: str, extra: str = "", **replace: str) -> Path:
    text = GOOD.replace("NAME", name)
    for key, value in replace.items():
        text = re.sub(rf"^{key}:.*$", f"{key}: {value}", text, flags=re.M)
    path = tmp_path / f"{name}.yaml"
    path.write_text(text + textwrap.dedent(extra))
    return path


def test_a_good_minimal_file_loads(tmp_path: Path) -> None:
    assert load_site(_site(tmp_path, "mini")).config().cores_per_node == 4


@pytest.mark.parametrize(
    "replace,extra,needles",
    [
        ({}, "flags: 1\n", ["(top)", "unknown key(s) ['flags']", "sources"]),
        ({"batch": "sge"}, "", ["batch", "one of ['slurm', 'pbspro', 'lsf', 'flux']"]),
        ({"launcher": "{name: mpirunx}"}, "", ["launcher.name", "unknown launcher 'mpirunx'"]),
        ({"node": "{cores: 4, gpus: 2}"}, "", ["node.gpu_vendor", "nvidia, amd, intel"]),
        ({"node": "{cores: 4, reserved_cores: [4]}"}, "", ["reserved_cores", "below 4"]),
        ({"node": "{cores: 4, gpus: 2, gpu_vendor: amd, gpu_tiles: 2}"}, "", ["gpu_tiles"]),
        ({"queues": "[{name: q}, {name: q}]"}, "", ["queues", "repeat"]),
        ({"queues": "[{name: a, default: true}, {name: b, default: true}]"}, "",
         ["more than one default"]),
        ({"queues": "[{name: a, min_nodes: 4, max_nodes: 2}]"}, "", ["min_nodes"]),
        ({"queues": "[{name: a, default: true, unsupported: shared}]"}, "", ["default"]),
        ({}, "scheduler_options: '#PBS -l x=1'\n", ["scheduler_options", "slurm directive"]),
        ({}, "endpoint: {cores_per_node: 8}\n", ["endpoint", "cores_per_node"]),
        ({"sources": "[http://example.org]"}, "", ["sources[0]"]),
        ({"checked": "soon"}, "", ["checked"]),
        ({"batch": "pbspro"}, "queue_kind: qos\n", ["queue_kind"]),
        ({"launcher": "{name: local, options: [-x]}"}, "", ["launcher_options", "no command"]),
    ],
)  # fmt: skip
def test_a_bad_site_file_is_refused_naming_the_file_and_key(tmp_path, replace, extra, needles):
    path = _site(tmp_path, "bad", extra, **replace)
    with pytest.raises(ConfigError) as info:
        load_site(path)
    message = str(info.value)
    assert str(path) in message or "launcher_options" in message, message
    for needle in needles:
        assert needle in message, message


def test_a_file_whose_name_differs_is_refused(tmp_path: Path) -> None:
    path = _site(tmp_path, "one").rename(tmp_path / "two.yaml")
    with pytest.raises(ConfigError, match="differs from the file name"):
        load_site(path)


def test_the_schemas_are_shipped_and_the_endpoint_schema_still_validates() -> None:
    assert (data_dir("site-configs") / "site.schema.json").is_file()
    assert BlockConfig().as_dict()["launcher_options"] == []
    with pytest.raises(ConfigError, match="cpu_ids"):
        BlockConfig().replace(cores_per_node=4, cpu_ids=[1, 2])
    assert load_launcher("srun", options=["--mpi=pmix"]).site_options == ("--mpi=pmix",)


# --- CLI ---------------------------------------------------------------------------------------


def test_sites_list_names_every_machine() -> None:
    result = CliRunner().invoke(main, ["sites", "list"])
    assert result.exit_code == 0, result.output
    names = [line.split()[0] for line in result.output.splitlines()[1:]]
    assert names == SITES


def test_sites_show_gives_the_machine_its_queues_and_a_sample_launch_line() -> None:
    result = CliRunner().invoke(main, ["sites", "show", "frontier"])
    assert result.exit_code == 0, result.output
    out = result.output
    assert out.startswith("frontier: Frontier, OLCF")
    assert "56 usable cores (64 with 8 kept for the system)" in out
    assert re.search(r"\*batch .*walltime <= 12:00:00", out)
    assert "srun --nodes=2 --ntasks=16 --ntasks-per-node=8" in out
    assert "#SBATCH --partition=batch" in out and "#SBATCH --account=ABC123" in out
    assert "unsure:" in out and "https://docs.olcf.ornl.gov/" in out


def test_sites_show_of_a_machine_without_provider_shows_its_launch_files() -> None:
    result = CliRunner().invoke(main, ["sites", "show", "lassen"])
    assert result.exit_code == 0, result.output
    assert "jsrun --erf_input /sandbox/task-1/hostfile ./app" in result.output
    assert "rank: 0: { hosts: " in result.output and "configure: not yet" in result.output


def test_sites_show_refuses_unknown_names_and_queues() -> None:
    result = CliRunner().invoke(main, ["sites", "show", "summit"])
    assert result.exit_code != 0 and "unknown machine 'summit'" in result.output
    result = CliRunner().invoke(main, ["sites", "show", "polaris", "--queue", "gpu"])
    assert result.exit_code != 0 and "not a queue of polaris" in result.output


def test_endpoint_configure_by_site(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("MPIENGINE_HOME", str(tmp_path))
    runner = CliRunner()
    args = ["endpoint", "configure", "ep", "--site", "polaris", "--set", "account=abc",
            "--set", "queue=debug-scaling", "--set", "nodes_per_block=4"]  # fmt: skip
    result = runner.invoke(main, args)
    assert result.exit_code == 0, result.output
    doc = yaml.safe_load((tmp_path / "ep" / "endpoint.yaml").read_text())
    assert doc["backend"] == "batch"
    opts = doc["backend_options"]
    assert opts["queue"] == "debug-scaling" and opts["account"] == "abc"
    assert opts["nodes_per_block"] == 4 and opts["launcher"] == "pals"
    assert "#PBS -l filesystems=home:eagle" in opts["scheduler_options"]
    from mpiengine.config import load_config

    assert load_config(opts) == site_config(
        "polaris", account="abc", queue="debug-scaling", nodes_per_block=4
    )
    missing = runner.invoke(main, ["endpoint", "configure", "ep2", "--site", "polaris"])
    assert missing.exit_code != 0 and "charges every job to a project" in missing.output
    wrong = runner.invoke(main, [*args[:7], "--set", "queue=gpu"])
    assert wrong.exit_code != 0 and "debug-scaling" in wrong.output
    bare = runner.invoke(main, ["endpoint", "configure", "ep3", "--set", "account=a"])
    assert bare.exit_code != 0 and "--set needs --site" in bare.output


def test_core_slots_map_to_the_nodes_cpu_numbers_and_beyond_them_is_refused() -> None:
    from mpiengine.binding import Binding
    from mpiengine.placement import Placement

    binding = Binding(cpu_ids=(1, 2, 3, 5))
    placement = Placement("t", "b", ("a", "b"), 1, 2, cores=((0, 1), (2, 3)))
    assert binding.on_cpus(placement).cores == ((1, 2), (3, 5))
    assert Binding().on_cpus(placement) is placement
    with pytest.raises(ConfigError, match="cpu_ids"):
        binding.on_cpus(Placement("t", "b", ("a",), 1, 1, cores=((4,),)))
