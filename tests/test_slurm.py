"""The workflow on a real one-node SLURM cluster, through workflow/profiles/slurm.

.ci/slurm-up.sh installs Debian's slurm-wlm + munge when missing and starts munged, slurmctld and
slurmd on this machine. A small synthetic target (dataset, class index, step 0, and a 2-step
multi-step chain that the profile groups into one job: four SLURM jobs) then runs with the
shipped SLURM profile; the cluster-specific values (no GPU, two CPUs, little memory here) are
overridden on the command line, the way the profile's header tells a user to. The test checks in slurmctld's own log that every job went through it.

In CI (CI=true) the test always runs; elsewhere it is skipped, with the reason, only when this is
not root or apt-get is missing.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from test_workflow import E2E_CONFIG, ROOT, SNAKEFILE, job_counts, write_config

STATE = Path(os.environ.get("IFSS_SLURM_STATE", "/var/tmp/ifss-slurm"))
PROFILE = ROOT / "workflow" / "profiles" / "slurm"
TARGET = "results/runs/synthetic/5-0m/FT/s1-i0/step2/metrics.json"  # a 2-step chain
SITE = [  # what this one-node cluster can give (the profile asks for GPU-node sizes)
    "--default-resources", "slurm_partition=cpu", "runtime=10", "mem_mb=1000", "cpus_per_task=1",
    "--set-resources",
    "train_step0:slurm_partition=gpu", "train_step0:gpu=0", "train_step0:cpus_per_task=2",
    "train_step0:mem_mb=2000", "train_step0:runtime=10",
    "train_step:slurm_partition=gpu", "train_step:gpu=0", "train_step:cpus_per_task=2",
    "train_step:mem_mb=2000", "train_step:runtime=10",
]


def _skip_reason() -> str:
    if os.environ.get("CI", "").lower() == "true":
        return ""
    if os.geteuid() != 0:
        return "not root (the test installs and starts SLURM daemons)"
    if not shutil.which("apt-get") and not shutil.which("slurmctld"):
        return "no apt-get to install slurm-wlm"
    return ""


@pytest.fixture(scope="module")
def cluster():
    reason = _skip_reason()
    if reason:
        print(f"\nSLURM test skipped: {reason}")
        pytest.skip(f"SLURM test: {reason}")
    proc = subprocess.run(["bash", str(ROOT / ".ci" / "slurm-up.sh"), str(STATE)],
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return STATE


def test_profile_names_real_rules():
    profile = yaml.safe_load((PROFILE / "profile.yaml").read_text())
    assert profile["executor"] == "slurm"
    sources = "".join(p.read_text() for p in (ROOT / "rules").glob("*.smk"))
    rules = set(re.findall(r"^rule (\w+):", sources, re.M))
    assert set(profile["set-resources"]) <= rules
    for resources in profile["set-resources"].values():
        assert {"slurm_partition", "runtime", "mem_mb", "gpu", "cpus_per_task"} <= set(resources)


def test_small_target_runs_through_slurmctld(cluster, tmp_path, record_property):
    cfg = dict(E2E_CONFIG, tables={})
    config = write_config(tmp_path / "slurm.yaml", cfg)
    started = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "snakemake", "-s", str(SNAKEFILE), "-d", str(tmp_path), TARGET,
         "--workflow-profile", str(PROFILE), "--configfile", str(config), *SITE,
         "--slurm-status-command", "squeue", "--slurm-no-account",
         "--slurm-init-seconds-before-status-checks", "2", "--jobs", "4", "--latency-wait", "10"],
        capture_output=True, text=True, timeout=900,
        env=dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"),
    )
    seconds = time.perf_counter() - started
    out = proc.stdout + proc.stderr
    record_property("slurm_seconds", round(seconds, 1))
    print(f"\nSLURM run of {TARGET}: {seconds:.0f} s")
    assert proc.returncode == 0, out[-5000:]
    assert (tmp_path / TARGET).is_file()
    assert job_counts(out) == {"synth_synthetic": 1, "class_index": 1, "train_step0": 1,
                               "train_step": 2, "total": 5}, out[-3000:]
    assert "Group job fewshot_chain" in out, out[-3000:]  # the chain: one SLURM job, 2 steps

    job_ids = re.findall(r"submitted with SLURM jobid (\d+)", out)
    assert len(job_ids) == 4, out[-3000:]
    log = (cluster / "slurmctld.log").read_text()
    for job_id in job_ids:  # slurmctld took, started and completed each one, with exit status 0
        assert re.search(rf"_slurm_rpc_submit_batch_job: JobId={job_id} ", log), job_id
        assert re.search(rf"(sched: Allocate|backfill: _start_job: Started) JobId={job_id} ", log)
        assert re.search(rf"_job_complete: JobId={job_id} WEXITSTATUS 0", log), job_id
    partitions = {}
    for job_id in job_ids:
        show = subprocess.run(["scontrol", "show", "job", job_id],
                              capture_output=True, text=True).stdout
        name = re.search(r"Comment=rule_(\w+?)(?:_wildcards|\s)", show)
        partitions[name[1] if name else job_id] = re.search(r"Partition=(\S+)", show)[1]
    assert partitions.get("train_step0") == "gpu", partitions
    assert partitions.get("fewshot_chain_train_step") == "gpu", partitions
    assert partitions.get("synth_synthetic") == "cpu", partitions
