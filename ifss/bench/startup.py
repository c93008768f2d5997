"""Section 10, job start-up: the fixed cost of one `ifss train` job, as its own process and
forked from a fork server (ifss/fork_server.py, what the local workflow runs its jobs through).

The job is a zero-iteration FT run of the demo's tiny model on a small synthetic set (start-up,
model and data set-up, evaluation of 8 images 48 px, the run's files), the same at every bench
size: it measures what a job costs before and after its training. Plain and forked runs
alternate in one bench run, each a subprocess timed from spawn to exit.
"""
from __future__ import annotations

import itertools
import os
import subprocess
import sys
import time

from ifss.bench.context import Context, error_line
from ifss.bench.report import figure, skipped
from ifss.bench.timing import interleaved, median, ratio

TARGET = ("<=", 0.5)  # issue 16: the per-job start-up halved
IFSS = [sys.executable, "-m", "ifss"]


def startup(ctx: Context) -> dict:
    from ifss import fork_server
    from ifss.data.synthetic import generate

    desc = ("wall time of a zero-iteration `ifss train` job (tiny model, 8 val images) forked "
            "from a fork server / the same as a process of its own")
    if not fork_server.available():
        return {"startup.forked_vs_process": skipped(
            "ratio", "the fork server needs Linux (os.pidfd_open)", description=desc,
            target=TARGET)}
    root = generate(ctx.work / "startup-data", seed=0, n_train=20, n_val=8, size=48)
    settings = {"data.root": root, "model.backbone": "resnet_tiny", "model.head_channels": 16,
                "data.crop_size": 48, "train.iterations": 0, "train.device": "cpu",
                "eval.batch_size": 8}
    command = [*IFSS, "train", *(a for k, v in settings.items() for a in ("--set", f"{k}={v}"))]
    env = {k: v for k, v in os.environ.items() if k != fork_server.ENV_VAR}
    env["OMP_NUM_THREADS"] = "1"  # a job's own count; the server is started without it
    runs = itertools.count()

    def job(socket: str | None):
        def timed() -> float:
            out = ctx.work / "startup-runs" / str(next(runs))
            job_env = dict(env, **({fork_server.ENV_VAR: socket} if socket else {}))
            start = time.perf_counter()
            proc = subprocess.run([*command, "--out", str(out)], env=job_env, cwd=ctx.work,
                                  capture_output=True, text=True, timeout=600)
            wall = time.perf_counter() - start
            if proc.returncode != 0 or "fork server" in proc.stderr:
                raise RuntimeError(f"the start-up job failed or ran elsewhere: "
                                   f"{proc.stderr.strip()[-300:]}")
            return wall
        return timed

    def imports() -> float:
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", "import ifss.run"], env=env, check=True,
                       timeout=600)
        return time.perf_counter() - start

    repeats, server = (2 if ctx.quick else 5), None
    try:
        server = fork_server.ServerProcess(IFSS, str(ctx.work / "fork-server.log"))
        samples = interleaved({"process": job(None), "forked": job(server.socket),
                               "import": imports}, warmup=1, repeats=repeats)
    except (RuntimeError, subprocess.SubprocessError) as err:
        return {"startup.forked_vs_process": skipped("ratio", error_line(err), description=desc,
                                                     target=TARGET)}
    finally:
        if server:
            server.stop()
    process, forked = samples.median("process"), samples.median("forked")
    sizes = {"backbone": "resnet_tiny", "crop": 48, "eval_images": 8, "iterations": 0}
    return {
        "startup.process": figure(
            process, "s", sizes=sizes, warmup=1, repeats=repeats,
            description="wall time of a zero-iteration `ifss train` job in a process of its own",
            details={"samples_s": samples.values["process"],
                     "import_ifss_run_s": samples.median("import")}),
        "startup.forked": figure(
            forked, "s", sizes=sizes, warmup=1, repeats=repeats,
            description="the same job forked from a fork server (the local workflow's way)",
            details={"samples_s": samples.values["forked"]}),
        "startup.forked_vs_process": figure(
            ratio(forked, process), "ratio", target=TARGET, sizes=sizes, warmup=1,
            repeats=repeats, description=desc),
    }
