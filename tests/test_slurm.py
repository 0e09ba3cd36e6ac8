"""The SLURM profile, checked on its own and by running the tiny plate through a real SLURM cluster.

The cluster is a single node started by tests/slurm/cluster.sh (munged, slurmctld and slurmd as
root, two partitions, two GPUs declared for scheduling). The run uses `snakemake --profile` with a
copy of slurm/config.yaml changed only where a throwaway cluster and an offline machine need it
(see `make_test_profile`): everything else (partitions, --gpus, retries, kept logs) is the real profile.
"""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from jump_n2v.plumbing.ngff import open_channel_array
from conftest import TINY_CONFIG, tiny_workflow
from workflow_copy import REPO

PROFILE = REPO / "slurm" / "config.yaml"
WORKFLOW_PROFILE = REPO / "profiles" / "default" / "config.yaml"
CLUSTER_SH = REPO / "tests" / "slurm" / "cluster.sh"
CLUSTER_STATE = Path(os.environ.get("JUMP_N2V_SLURM_STATE", "/tmp/jump-n2v-slurm"))
GPU_RULES = {"train", "predict", "train_control", "predict_control"}
# What the tiny plate runs through SLURM: every rule of the workflow that does work; the cheap
# bookkeeping rules (localrules) run on the submit host.
EXPECTED_SLURM_RULES = {"split_raw", "split_ground_truth", "train", "predict", "plate_noise_models", "qc", "downstream"}
LOCAL_RULES = {"plate_index", "export_load_data", "planning_problem"}
# Copied into the temporary working copy the cluster run uses.
WORKFLOW_PATHS = ["Snakefile", "workflow", "src", "envs", "config", "slurm", "profiles"]
# Test-node memory request per job: small enough for two jobs on any CI machine. Nothing enforces
# it (no cgroups), it only has to schedule.
TEST_MEM_MB = 1000


def load_profile():
    with open(PROFILE) as handle:
        return yaml.safe_load(handle)


def list_rules():
    result = subprocess.run(
        [sys.executable, "-m", "snakemake", "--list-rules", "--configfile", str(TINY_CONFIG)],
        cwd=REPO, capture_output=True, text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    # One rule a line, unindented: "name" or "name (docstring", a long docstring going on over indented lines.
    return {match.group(1) for match in re.finditer(r"^(\w+)(?: \(.*)?$", result.stdout, re.MULTILINE)}


# ---------------------------------------------------------------------------------------------
# The profile itself (no cluster needed)


def test_profile_submits_to_slurm_with_retries_kept_logs_and_conda():
    profile = load_profile()
    assert profile["executor"] == "slurm"
    assert profile["retries"] >= 1
    assert profile["slurm-keep-successful-logs"] is True
    assert profile["software-deployment-method"] == "conda"
    assert profile["default-resources"]["slurm_partition"] == "cpu"
    # Memory and runtime are the rules' (growing with each attempt): a fixed value here would stop that.
    for resources in [profile["default-resources"], *profile["set-resources"].values()]:
        assert not {"runtime", "mem_mb"} & set(resources), resources
    # Recovery keys live in the workflow profile, which every run (local or --profile slurm) loads.
    with open(WORKFLOW_PROFILE) as handle:
        workflow_profile = yaml.safe_load(handle)
    assert workflow_profile["rerun-incomplete"] is True and workflow_profile["show-failed-logs"] is True


def test_profile_sends_training_and_prediction_to_one_gpu_each():
    set_resources = load_profile()["set-resources"]
    for rule in GPU_RULES:
        assert set_resources[rule]["slurm_partition"] == "gpu", rule
        assert set_resources[rule]["gpu"] == 1, rule
    for rule, resources in set_resources.items():
        if rule not in GPU_RULES:
            assert "gpu" not in resources and resources.get("slurm_partition", "cpu") == "cpu", rule


@pytest.mark.workflow
def test_profile_names_only_rules_the_workflow_has():
    rules = list_rules()
    assert set(load_profile()["set-resources"]) <= rules, set(load_profile()["set-resources"]) - rules
    with open(WORKFLOW_PROFILE) as handle:
        workflow_profile = yaml.safe_load(handle)
    assert set(workflow_profile.get("set-threads", {})) <= rules


def test_profile_and_workflow_profile_set_disjoint_keys():
    # The workflow profile wins key by key over --profile: a key in both would silently drop the
    # cluster's value.
    with open(WORKFLOW_PROFILE) as handle:
        workflow_profile = yaml.safe_load(handle)
    assert not set(workflow_profile) & set(load_profile())


@pytest.mark.workflow
def test_workflow_profile_is_picked_up_by_a_plain_snakemake_call(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "snakemake", "--dry-run", "--configfile", str(TINY_CONFIG),
         "--config", f"results={tmp_path / 'results'}"],
        cwd=REPO, capture_output=True, text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    output = result.stdout + result.stderr
    assert "workflow specific profile" in output, (
        "profiles/default was not loaded: snakemake looks for profiles/default next to the Snakefile "
        "(or in the working directory)\n" + output[:2000]
    )


# ---------------------------------------------------------------------------------------------
# A real cluster run


def scontrol_jobs(env):
    """Every job slurmctld still remembers (MinJobAge=3600) as dicts of scontrol's key=value fields."""
    result = subprocess.run(["scontrol", "--oneliner", "show", "job"], env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    jobs = []
    for line in result.stdout.splitlines():
        if not line.startswith("JobId="):
            continue
        fields = {}
        for token in line.split():
            key, _, value = token.partition("=")
            fields[key] = value
        jobs.append(fields)
    return jobs


@pytest.fixture(scope="session")
def slurm_cluster():
    """SLURM_CONF and PATH for the cluster; started here (and stopped after) unless already up."""
    if os.geteuid() != 0:
        reason = "not installed, and installing it needs root" if shutil.which("slurmctld") is None else "installed"
        pytest.skip(f"SLURM test cluster needs root (its daemons run as root); SLURM is {reason}. "
                    "Run the tests as root, as CI does.")
    was_running = subprocess.run([CLUSTER_SH, "status", CLUSTER_STATE], capture_output=True).returncode == 0
    started = subprocess.run([CLUSTER_SH, "start", CLUSTER_STATE], capture_output=True, text=True, timeout=900)
    if started.returncode != 0:
        pytest.fail(f"tests/slurm/cluster.sh start failed:\n{started.stdout}\n{started.stderr}")
    env = {**os.environ, "SLURM_CONF": str(CLUSTER_STATE / "slurm.conf"), "PYTHONUNBUFFERED": "1"}
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    yield env
    if not was_running:
        subprocess.run([CLUSTER_SH, "stop", CLUSTER_STATE], capture_output=True, timeout=120)


def make_test_profile(path: Path) -> Path:
    """slurm/config.yaml changed only for a throwaway, offline single-node cluster.

    * no conda: channels are unreachable offline, and the test venv already holds every package;
    * squeue for job states (no slurmdbd, so no sacct) and no account (no accounting);
    * status checks after 2 s instead of 40 s, 4 jobs at a time;
    * memory requests of every rule fixed at TEST_MEM_MB so that jobs fit any CI machine.
    """
    profile = load_profile()
    for key in ("software-deployment-method", "conda-prefix"):
        profile.pop(key, None)
    profile.update({
        "jobs": 4,
        "slurm-status-command": "squeue",
        "slurm-no-account": True,
        "slurm-init-seconds-before-status-checks": 2,
    })
    for rule in list_rules() - LOCAL_RULES - {"all"}:
        profile["set-resources"].setdefault(rule, {})["mem_mb"] = TEST_MEM_MB
    path.mkdir(parents=True)
    with open(path / "config.yaml", "w") as handle:
        yaml.safe_dump(profile, handle, sort_keys=False)
    return path



@pytest.fixture(scope="session")
def slurm_run(slurm_cluster, tmp_path_factory):
    """The tiny plate run end to end with `snakemake --profile <test copy of slurm/>`."""
    workdir = tmp_path_factory.mktemp("slurm_run")
    tiny_workflow(workdir, WORKFLOW_PATHS)  # the tiny plate replaces the demo config, so only it is built
    profile = make_test_profile(workdir / "slurm-test")
    command = [sys.executable, "-m", "snakemake", "--profile", str(profile)]
    result = subprocess.run(command, cwd=workdir, env=slurm_cluster, capture_output=True, text=True, timeout=1800)
    if result.returncode != 0:
        logs = sorted((workdir / ".snakemake" / "slurm_logs").rglob("*.log"))
        tails = "\n".join(f"--- {log}\n{log.read_text()[-3000:]}" for log in logs[-6:])
        raise AssertionError(
            f"{' '.join(command)} failed ({result.returncode}):\n{result.stdout[-5000:]}\n"
            f"{result.stderr[-8000:]}\n{tails}"
        )
    jobs = [job for job in scontrol_jobs(slurm_cluster) if Path(job.get("WorkDir", "")) == workdir]
    return {"workdir": workdir, "jobs": jobs, "env": slurm_cluster, "profile": profile, "output": result.stderr}


def rule_of(job):
    """The rule a job ran: the plugin writes 'rule_<name>[_wildcards_<...>]' as the job comment."""
    comment = job.get("Comment", "")
    assert comment.startswith("rule_"), job
    return comment[len("rule_"):].split("_wildcards_")[0]


@pytest.mark.slurm
def test_every_rule_ran_as_a_completed_slurm_job(slurm_run):
    jobs = slurm_run["jobs"]
    assert jobs, "no SLURM jobs were submitted from the run's working directory"
    assert all(job["JobState"] == "COMPLETED" for job in jobs), [(rule_of(j), j["JobState"]) for j in jobs]
    counts = {}
    for job in jobs:
        counts[rule_of(job)] = counts.get(rule_of(job), 0) + 1
    assert EXPECTED_SLURM_RULES <= set(counts), counts
    assert not LOCAL_RULES & set(counts), counts
    # Two channels on one plate: one job per channel for each per-channel rule.
    for rule in ("split_raw", "split_ground_truth", "train", "predict", "qc"):
        assert counts[rule] == 2, counts


@pytest.mark.slurm
def test_gpu_rules_ran_in_the_gpu_partition_with_one_gpu(slurm_run):
    for job in slurm_run["jobs"]:
        rule = rule_of(job)
        if rule in GPU_RULES:
            assert job["Partition"] == "gpu", job
            assert job.get("TresPerJob", "").endswith("gpu:1"), job
        else:
            assert job["Partition"] == "cpu", job
            assert "gpu" not in job.get("TresPerJob", ""), job


@pytest.mark.slurm
def test_successful_jobs_keep_their_slurm_logs(slurm_run):
    logs_dir = slurm_run["workdir"] / ".snakemake" / "slurm_logs"
    for job in slurm_run["jobs"]:
        logs = list((logs_dir / f"rule_{rule_of(job)}").rglob(f"{job['JobId']}.log"))
        assert len(logs) == 1, (job["JobId"], rule_of(job))
        assert logs[0].stat().st_size > 0


@pytest.mark.slurm
def test_cluster_run_writes_denoised_arrays_and_the_report(slurm_run):
    results = slurm_run["workdir"] / "results" / "tiny"
    for channel in ("DNA", "Mito"):
        raw = open_channel_array(results / "TinyPlate" / "raw" / f"{channel}.zarr", mode="r")
        denoised = open_channel_array(results / "TinyPlate" / "denoised" / f"{channel}.zarr", mode="r")
        assert denoised.shape == raw.shape == (4, 64, 64)
        assert denoised.dtype == np.float32 and np.isfinite(denoised[:]).all()
        assert (results / "models" / "TinyPlate" / channel / "model.pt").stat().st_size > 0
    assert (results / "report" / "report.html").stat().st_size > 0


@pytest.mark.slurm
def test_cluster_rerun_has_nothing_to_do(slurm_run):
    result = subprocess.run(
        [sys.executable, "-m", "snakemake", "--profile", str(slurm_run["profile"]), "--dry-run"],
        cwd=slurm_run["workdir"], env=slurm_run["env"], capture_output=True, text=True,
    )
    assert result.returncode == 0, result.stderr[-5000:]
    assert "Nothing to be done" in result.stdout + result.stderr


# ---------------------------------------------------------------------------------------------
# The GPU requests the README documents, as sbatch lines the plugin builds and the cluster takes

GPU_REQUESTS = {
    "gpus": {"gpu": 1},
    "gres": {"gres": "gpu:1", "gpu": 0},
    "gpu_model": {"gpu": 1, "gpu_model": "a100"},
    "slurm_extra": {"slurm_extra": "--gres=gpu:1"},
}


def gpu_request_run(slurm_cluster, workdir: Path, request: dict) -> subprocess.CompletedProcess:
    """A one-rule workflow whose rule `train` asks for a GPU as the shipped profile's train does,
    with the GPU keys replaced by ``request``; run with --verbose so the sbatch line is printed."""
    workdir.mkdir(parents=True)
    (workdir / "Snakefile").write_text(
        'rule train:\n    output: "gpu.txt"\n    resources:\n        gpu=1,\n'
        '    shell: "echo visible=$CUDA_VISIBLE_DEVICES > {output}"\n'
    )
    profile_dir = make_test_profile(workdir / "profile")
    profile = yaml.safe_load((profile_dir / "config.yaml").read_text())
    train = {key: value for key, value in profile["set-resources"]["train"].items() if key != "gpu"}
    profile["set-resources"] = {"train": {**train, **request}}
    profile.pop("retries", None)
    (profile_dir / "config.yaml").write_text(yaml.safe_dump(profile, sort_keys=False))
    command = [sys.executable, "-m", "snakemake", "--profile", str(profile_dir), "--workflow-profile", "none",
               "--verbose", "--jobs", "1"]
    return subprocess.run(command, cwd=workdir, env=slurm_cluster, capture_output=True, text=True, timeout=600)


def sbatch_line(output: str) -> str:
    lines = [line for line in output.splitlines() if "sbatch call:" in line or line.strip().startswith("sbatch ")]
    return lines[0] if lines else ""


@pytest.mark.slurm
@pytest.mark.parametrize("name", ["gpus", "gres"])
def test_documented_gpu_requests_submit_and_get_a_gpu(slurm_cluster, tmp_path, name):
    result = gpu_request_run(slurm_cluster, tmp_path / name, GPU_REQUESTS[name])
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-5000:]
    line = sbatch_line(output)
    assert {"gpus": " --gpus=1", "gres": " --gres=gpu:1"}[name] in line, line or output[-3000:]
    assert "--gpus" not in line if name == "gres" else "--gres" not in line
    assert (tmp_path / name / "gpu.txt").read_text().startswith("visible=0")


@pytest.mark.slurm
def test_gpu_model_becomes_a_typed_gpus_request(slurm_cluster, tmp_path):
    # The test cluster's GPUs have no type, so it rejects the a100 request at submission, as a site
    # without that model would; the line shows what the plugin asks SLURM for.
    result = gpu_request_run(slurm_cluster, tmp_path / "model", GPU_REQUESTS["gpu_model"])
    output = result.stdout + result.stderr
    assert " --gpus=a100:1" in sbatch_line(output) or "--gpus=a100:1" in output, output[-5000:]


@pytest.mark.slurm
def test_gres_in_slurm_extra_is_refused_by_the_plugin(slurm_cluster, tmp_path):
    # The README used to recommend this; the plugin refuses it before anything is submitted.
    result = gpu_request_run(slurm_cluster, tmp_path / "extra", GPU_REQUESTS["slurm_extra"])
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert "--gres" in output and "slurm_extra" in output, output[-3000:]
    assert not (tmp_path / "extra" / "gpu.txt").exists()


# ---------------------------------------------------------------------------------------------
# kill -9 of snakemake in mid-run, and the README's recovery for SLURM runs


def jobs_of_folder(env, workdir: Path, states=("PENDING", "RUNNING", "COMPLETING", "CONFIGURING")):
    """This working directory's jobs that slurmctld still runs or queues (never another run's)."""
    return [job for job in scontrol_jobs(env)
            if Path(job.get("WorkDir", "")) == workdir and job["JobState"] in states]


def readme_cancel_jobs_of_folder(env, workdir: Path) -> None:
    """The README's first SLURM recovery command, as printed there: cancel this folder's jobs and
    wait until squeue lists none of them."""
    script = (
        'folder_jobs() { squeue --me --noheader --format "%i %Z" | awk -v dir="$PWD" \'$2 == dir {print $1}\'; }\n'
        'folder_jobs | xargs -r scancel; while [ -n "$(folder_jobs)" ]; do sleep 5; done\n'
    )
    subprocess.run(["bash", "-c", script], cwd=workdir, env=env, check=True, timeout=600)


@pytest.mark.slurm
@pytest.mark.slow
def test_after_kill_9_in_mid_training_the_readmes_slurm_recovery_finishes_the_run(slurm_cluster, tmp_path):
    import json
    import signal
    import time

    from jump_n2v.n2v import load_trained

    workdir = tmp_path / "run"
    workdir.mkdir()
    tiny_workflow(workdir, WORKFLOW_PATHS)
    profile = make_test_profile(workdir / "slurm-test")
    command = [sys.executable, "-m", "snakemake", "--profile", str(profile)]
    try:
        with open(tmp_path / "killed-run.log", "w") as log:
            run = subprocess.Popen(command, cwd=workdir, env=slurm_cluster, stdout=log, stderr=subprocess.STDOUT,
                                   start_new_session=True)
        # Kill snakemake while a train job (multi-output: model.pt, model.json, log, curve) runs in SLURM.
        deadline = time.monotonic() + 3600  # the shared cluster may be busy with other runs first
        while not [job for job in jobs_of_folder(slurm_cluster, workdir, ("RUNNING",)) if rule_of(job) == "train"]:
            assert run.poll() is None, (tmp_path / "killed-run.log").read_text()[-5000:]
            assert time.monotonic() < deadline, "no train job started in SLURM"
            time.sleep(0.5)
        os.killpg(run.pid, signal.SIGKILL)
        run.wait()
        # What the README warns about: the dead run's jobs go on running in SLURM.
        assert any(rule_of(job) == "train" for job in jobs_of_folder(slurm_cluster, workdir))

        # The README's sequence for SLURM runs: cancel the folder's jobs, unlock, the same command again.
        again = subprocess.run(command, cwd=workdir, env=slurm_cluster, capture_output=True, text=True, timeout=300)
        assert again.returncode != 0 and "cannot be locked" in again.stdout + again.stderr  # why --unlock is needed
        readme_cancel_jobs_of_folder(slurm_cluster, workdir)
        assert jobs_of_folder(slurm_cluster, workdir) == []
        unlock = subprocess.run([*command, "--unlock"], cwd=workdir, env=slurm_cluster, capture_output=True,
                                text=True, timeout=300)
        assert unlock.returncode == 0, unlock.stderr[-3000:]
        cancelled = {job["JobId"] for job in scontrol_jobs(slurm_cluster) if Path(job.get("WorkDir", "")) == workdir}
        recovered = subprocess.run(command, cwd=workdir, env=slurm_cluster, capture_output=True, text=True, timeout=1800)
        assert recovered.returncode == 0, (recovered.stdout + recovered.stderr)[-8000:]
    finally:
        if run.poll() is None:
            os.killpg(run.pid, signal.SIGKILL)
        for job in jobs_of_folder(slurm_cluster, workdir):  # only this test's own jobs
            subprocess.run(["scancel", job["JobId"]], env=slurm_cluster, check=False)

    # Every job of the recovery completed; the train job that had been cancelled ran again.
    rerun = [job for job in scontrol_jobs(slurm_cluster)
             if Path(job.get("WorkDir", "")) == workdir and job["JobId"] not in cancelled]
    assert rerun and all(job["JobState"] == "COMPLETED" for job in rerun), [(rule_of(j), j["JobState"]) for j in rerun]
    assert "train" in {rule_of(job) for job in rerun}
    results = workdir / "results" / "tiny"
    for channel in ("DNA", "Mito"):
        model_dir = results / "models" / "TinyPlate" / channel
        metadata = json.loads((model_dir / "model.json").read_text())
        assert metadata["training"]["epochs_run"] == 2  # the tiny config's epochs, all of them
        trained = load_trained(model_dir)
        assert trained.std > 0 and not (model_dir / "checkpoint.pt").exists()
        raw = open_channel_array(results / "TinyPlate" / "raw" / f"{channel}.zarr", mode="r")
        denoised = open_channel_array(results / "TinyPlate" / "denoised" / f"{channel}.zarr", mode="r")
        assert denoised.shape == raw.shape == (4, 64, 64)
        assert np.isfinite(denoised[:]).all() and denoised.attrs["image_ids"] == raw.attrs["image_ids"]
    assert (results / "report" / "report.html").stat().st_size > 0
    leftovers = [str(path) for path in results.rglob("*") if path.name.startswith((".tmp-", ".old-"))]
    assert leftovers == []
    dry_run = subprocess.run([*command, "--dry-run"], cwd=workdir, env=slurm_cluster, capture_output=True, text=True)
    assert "Nothing to be done" in dry_run.stdout + dry_run.stderr, (dry_run.stdout + dry_run.stderr)[-3000:]
