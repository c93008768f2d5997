"""The fork server (ifss/fork_server.py): a forked run is the run a process of its own would make,
a request it cannot serve faithfully runs in the client's process, and no run outlives its client
or its server."""
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import tiny_overrides
from ifss import fork_server

IFSS = [sys.executable, "-m", "ifss"]


@pytest.fixture
def server(tmp_path):
    log = tmp_path / "server.log"
    process = fork_server.ServerProcess(IFSS, str(log))
    assert os.environ[fork_server.ENV_VAR] == process.socket
    yield process, log
    process.stop()
    assert fork_server.ENV_VAR not in os.environ
    assert process.process.poll() is not None and not os.path.exists(process.folder)


def train_command(root: Path, out: Path, **extra) -> list[str]:
    return [*IFSS, "train", "--out", str(out),
            *(a for o in tiny_overrides(root, **extra) for a in ("--set", o))]


def job_env(server: fork_server.ServerProcess | None, **extra) -> dict:
    """The environment of a job sent to `server` (None: of a job run without one)."""
    env = dict(server.env if server else os.environ)
    env.pop(fork_server.ENV_VAR, None)
    if server:
        env[fork_server.ENV_VAR] = server.socket
    env.update(extra)
    return env


def forked_pids(log: Path) -> list[int]:
    return [int(p) for p in re.findall(r"pid (\d+): ifss ", log.read_text())]


def wait_for_fork(log: Path, timeout: float = 60) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if forked_pids(log):
            return forked_pids(log)[0]
        time.sleep(0.05)
    raise AssertionError(f"no run forked: {log.read_text()}")


def logged(log: Path, text: str, timeout: float = 20) -> bool:
    """`text` is in the server's log (it writes a child's exit just after reaping it)."""
    deadline = time.monotonic() + timeout
    while text not in log.read_text():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def gone(pid: int, timeout: float = 20) -> bool:
    """The process has ended and been reaped (no /proc entry, or a zombie's state)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except FileNotFoundError:
            return True
        if state == "Z":
            return True
        time.sleep(0.05)
    return False


def test_a_forked_run_is_the_run_of_its_own_process(synth_root, tmp_path, server):
    process, log = server
    plain = subprocess.run(train_command(synth_root, tmp_path / "plain"), env=job_env(None),
                           capture_output=True, text=True, timeout=300)
    assert plain.returncode == 0, plain.stderr
    forked = subprocess.run(train_command(synth_root, tmp_path / "forked"),
                            env=job_env(process, OMP_NUM_THREADS="1"),
                            capture_output=True, text=True, timeout=300)
    assert forked.returncode == 0, forked.stderr
    assert "fork server" not in plain.stderr + forked.stderr
    assert len(forked_pids(log)) == 1  # only the second ran in the server
    # the child's stdout is the client's: the run's progress lines reach it
    assert "mIoU" in forked.stdout + forked.stderr
    a, b = (json.loads((tmp_path / d / "metrics.json").read_text()) for d in ("plain", "forked"))
    assert b["threads"] == 1  # the job's OMP_NUM_THREADS, not the server's default
    for record in (a, b):
        del record["wall_time_s"], record["threads"]
    assert a == b
    assert (tmp_path / "plain" / "model.pt").read_bytes() == \
        (tmp_path / "forked" / "model.pt").read_bytes()


def test_errors_and_exit_codes_come_through(synth_root, tmp_path, server):
    process, log = server
    proc = subprocess.run(train_command(synth_root, tmp_path / "bad", task="5-9"),
                          env=job_env(process), capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 2
    assert proc.stderr.startswith("ifss: error:") and "5-9" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert len(forked_pids(log)) == 1 and logged(log, "exit 2")


def test_a_request_it_cannot_serve_runs_in_the_clients_process(synth_root, tmp_path, server):
    process, log = server
    proc = subprocess.run(train_command(synth_root, tmp_path / "run"),
                          env=job_env(process, IFSS_SOME_SETTING="1"),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "refused" in proc.stderr and "IFSS_SOME_SETTING" in proc.stderr
    assert forked_pids(log) == []
    assert (tmp_path / "run" / "metrics.json").exists()


def test_no_server_there_runs_in_the_clients_process(synth_root, tmp_path):
    env = dict(job_env(None), **{fork_server.ENV_VAR: str(tmp_path / "no-such-socket")})
    proc = subprocess.run(train_command(synth_root, tmp_path / "run"), env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "could not take this command" in proc.stderr
    assert (tmp_path / "run" / "metrics.json").exists()


def long_run(root: Path, out: Path, server: fork_server.ServerProcess) -> subprocess.Popen:
    return subprocess.Popen(train_command(root, out, **{"train.iterations": 100000}),
                            env=job_env(server), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)


def test_sigterm_to_the_client_ends_the_run_as_it_would_end_a_process(synth_root, tmp_path,
                                                                      server):
    process, log = server
    client = long_run(synth_root, tmp_path / "run", process)
    child = wait_for_fork(log)
    client.send_signal(signal.SIGTERM)
    assert client.wait(timeout=60) == -signal.SIGTERM
    assert gone(child)
    assert logged(log, f"pid {child}: exit -{int(signal.SIGTERM)}")


def test_a_killed_client_takes_its_run_with_it(synth_root, tmp_path, server):
    process, log = server
    client = long_run(synth_root, tmp_path / "run", process)
    child = wait_for_fork(log)
    client.kill()  # no chance to pass anything on: the server sees the connection close
    client.wait(timeout=60)
    assert gone(child)


def test_a_run_ends_with_its_server_and_its_client_says_so(synth_root, tmp_path):
    process = fork_server.ServerProcess(IFSS, str(tmp_path / "server.log"))
    try:
        client = long_run(synth_root, tmp_path / "run", process)
        child = wait_for_fork(tmp_path / "server.log")
        process.process.kill()  # no clean stop: the child learns from its parent's death
        _, err = client.communicate(timeout=60)
        assert client.returncode == 1 and "stopped before the command ended" in err
        assert gone(child)
    finally:
        process.stop()


def test_a_stopped_server_ends_its_runs(synth_root, tmp_path, server):
    process, log = server
    client = long_run(synth_root, tmp_path / "run", process)
    child = wait_for_fork(log)
    process.stop()
    assert client.wait(timeout=60) == -signal.SIGTERM
    assert gone(child)
    assert logged(log, "stopping (SIGTERM)")


def test_commands_that_are_not_forked(tmp_path, monkeypatch):
    monkeypatch.setenv(fork_server.ENV_VAR, str(tmp_path / "socket"))
    assert fork_server.run_in_server(["synth", "--out", "x"]) is None
    assert fork_server.run_in_server([]) is None
    monkeypatch.setenv("WORLD_SIZE", "2")  # a torchrun worker runs in its own process
    assert fork_server.run_in_server(["train"]) is None


def test_what_a_server_refuses(tmp_path):
    """The decision alone: the same interpreter, packages (files and times) and environment but
    for per-job variables, or a reason naming what differs."""
    import socket

    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as listener:
        env = {"PATH": "/bin", "HOME": "/root"}
        packages = fork_server._package_origins()
        server = fork_server._Server(listener, env, {}, packages)
        try:
            def request(**change):
                base = {"python": os.path.realpath(sys.executable), "env": dict(env),
                        "packages": {k: list(v) for k, v in packages.items()}}
                base.update(change)
                return base
            assert server._refusal(request()) is None
            per_job = dict(env, OMP_NUM_THREADS="1", TMPDIR="/x", CUDA_VISIBLE_DEVICES="1")
            assert server._refusal(request(env=per_job)) is None
            assert "another Python" in server._refusal(request(python="/usr/bin/python9"))
            assert "PYTHONPATH" in server._refusal(request(env=dict(env, PYTHONPATH="/src")))
            assert "HOME" in server._refusal(request(env={"PATH": "/bin"}))
            moved = request()
            moved["packages"]["torch"] = ["/elsewhere/torch/__init__.py", 1]
            assert "torch is /elsewhere/torch/__init__.py here" in server._refusal(moved)
            touched = request()
            touched["packages"]["numpy"][1] += 1
            assert server._refusal(touched) == \
                "numpy was reinstalled since the server imported it"
        finally:
            server.close()
