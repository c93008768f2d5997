"""A warm process that runs `ifss train | eval | pseudo-labels` in children it forks, so a workflow
of many short runs imports torch once instead of once per job.

Why: importing torch and torchvision (which imports torch._dynamo through its ops; torch.optim
imports it at the first step anyway) is ~3 s of a demo job's ~4 s. A forked child starts with
those modules loaded and runs the command as its own process would: the job's argv, working
folder, umask, environment, stdin / stdout / stderr (passed as file descriptors) and thread count;
`ifss` itself is imported afresh in every child from the job's sys.path.

    ifss fork-server --socket PATH      # the workflow starts and stops it (rules/common.smk)
    IFSS_FORK_SERVER=PATH ifss train .. # sent to the server; runs in-process if it is not there

A request the server cannot serve faithfully (another Python, another torch, an environment
variable that acts at import time set differently) is refused, and the command runs in the
client's own process as it would without a server. The child dies with the server, and the
server kills the child when its client goes away; the client passes SIGINT / SIGTERM / SIGHUP on
and ends the way the child ended (its exit code, or killed by the same signal).

Protocol, one Unix stream connection per command: the client sends a 4-byte length, with its
stdin, stdout and stderr as SCM_RIGHTS descriptors, then that many bytes of JSON (argv, cwd, env,
umask, sys.path, the interpreter and where torch resolves); the server answers with JSON lines:
{"pid": N} then {"exit": code} (a negative code: killed by that signal), or {"refused": reason}.

Not for DDP: a torchrun worker (WORLD_SIZE set) runs in its own process. Snakemake's benchmark
files measure the client: their wall time is the job's, their memory figures are not the run's.
"""
from __future__ import annotations

import json
import os
import selectors
import signal
import socket
import struct
import sys
import time

ENV_VAR = "IFSS_FORK_SERVER"
COMMANDS = frozenset({"train", "eval", "pseudo-labels"})  # the torch-heavy ones
# Imported once by the server, in this order (torch.optim's first step imports torch._dynamo).
PRELOAD = ("torch", "torchvision", "torch._dynamo", "torch.optim")
# A client whose interpreter resolves one of these elsewhere is refused.
CHECKED_PACKAGES = ("torch", "torchvision", "numpy", "PIL")
# Thread counts Snakemake sets per job; the child applies OMP_NUM_THREADS through torch.
THREAD_ENV = ("OMP_NUM_THREADS", "GOTO_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
              "VECLIB_MAXIMUM_THREADS", "NUMEXPR_NUM_THREADS")
# Variables a job may set differently from the server: read only while a run goes (never at
# import), re-applied in the child, or the shell's own. Any other difference refuses the request.
PER_JOB_ENV = frozenset({*THREAD_ENV, "TMPDIR", "TEMPDIR", "TMP", "TEMP", "PWD", "OLDPWD",
                         "SHLVL", "_", "CUDA_VISIBLE_DEVICES", ENV_VAR})
FORWARDED_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
_LENGTH = struct.Struct("!I")


# --- client ------------------------------------------------------------------------------------

def run_in_server(argv: list[str]) -> int | None:
    """Run `ifss argv` in the fork server named by $IFSS_FORK_SERVER: its exit code, or None when
    this process should run the command itself (no server set, not a forked command, the server
    unreachable or refusing)."""
    path = os.environ.get(ENV_VAR)
    if not path or not argv or argv[0] not in COMMANDS or "WORLD_SIZE" in os.environ:
        return None
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    with conn:
        try:
            conn.connect(path)
            _send_request(conn, _request(argv))  # nothing runs until the server has it all
        except OSError as err:  # no server there, or a standard stream closed (EBADF)
            _note(f"the fork server {path} could not take this command "
                  f"({err.strerror or err}); running in this process")
            return None
        replies = conn.makefile("rb")
        for line in replies:
            reply = json.loads(line)
            if "refused" in reply:
                _note(f"the fork server refused this command ({reply['refused']}); "
                      "running in this process")
                return None
            if "pid" in reply:
                _forward_signals(reply["pid"])
            elif "exit" in reply:
                return _end_like(reply["exit"])
        print(f"ifss: error: the fork server {path} stopped before the command ended "
              f"(its log says why); run it again", file=sys.stderr)
        return 1


def _request(argv: list[str]) -> dict:
    umask = os.umask(0)
    os.umask(umask)
    return {"argv": list(argv), "cwd": os.getcwd(), "env": dict(os.environ), "umask": umask,
            "path": list(sys.path), "python": os.path.realpath(sys.executable),
            "packages": _package_origins()}


def _package_origins() -> dict:
    """{package: [file, its modification time in ns]}: where this interpreter imports each checked
    package from (without importing it); a package reinstalled since the server imported it has
    another time."""
    from importlib.util import find_spec

    origins = {}
    for name in CHECKED_PACKAGES:
        spec = find_spec(name) if name not in sys.modules else sys.modules[name].__spec__
        path = os.path.realpath(spec.origin) if spec and spec.origin else None
        origins[name] = [path, os.stat(path).st_mtime_ns] if path else None
    return origins


def _send_request(conn: socket.socket, request: dict) -> None:
    body = json.dumps(request).encode()
    # The descriptors ride on the length's bytes, the one piece sent with sendmsg.
    socket.send_fds(conn, [_LENGTH.pack(len(body))], [0, 1, 2])
    conn.sendall(body)


def _forward_signals(child: int) -> None:
    def forward(signum, _frame):
        _kill(child, signum)
    for signum in FORWARDED_SIGNALS:
        signal.signal(signum, forward)


def _end_like(code: int) -> int:
    """The child's exit code, or die of the signal that killed it (as a shell reports a job)."""
    if code >= 0:
        return code
    for signum in FORWARDED_SIGNALS:
        signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), -code)
    return 128 - code  # a signal that does not kill (not one a child dies of unless sent)


def _note(text: str) -> None:
    print(f"ifss: {text}", file=sys.stderr, flush=True)


# --- a server started for a workflow ---------------------------------------------------------

class ServerProcess:
    """An `ifss fork-server` this process starts (`ifss`: how to run the ifss command, e.g.
    ["ifss"]), its socket in a private temporary folder, and $IFSS_FORK_SERVER set to it so that
    the commands this process starts from now on use it. Ready when built: the socket is bound
    (torch may still be loading; early clients wait). `stop()` (also at exit) ends it and removes
    the folder; a server that does not start raises RuntimeError."""

    def __init__(self, ifss: list[str], log: str):
        import atexit
        import subprocess
        import tempfile

        self.folder = tempfile.mkdtemp(prefix="ifss-fork-")  # 0700; a short path (AF_UNIX: 108)
        self.socket = os.path.join(self.folder, "socket")
        os.makedirs(os.path.dirname(log) or ".", exist_ok=True)
        self.env = dict(os.environ)  # the server's: a job with the same (but per-job) is served
        self.replaced = os.environ.get(ENV_VAR)  # given back by stop()
        with open(log, "ab") as out:
            self.process = subprocess.Popen(
                [*ifss, "fork-server", "--socket", self.socket], stdin=subprocess.DEVNULL,
                stdout=out, stderr=subprocess.STDOUT, start_new_session=True, env=self.env)
        atexit.register(self.stop)
        deadline = time.monotonic() + 60
        while not os.path.exists(self.socket):
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"the fork server did not start (see {log})")
            time.sleep(0.01)
        os.environ[ENV_VAR] = self.socket

    def stop(self) -> None:
        import shutil
        import subprocess

        if os.environ.get(ENV_VAR) == self.socket:  # back to what it was
            os.environ.pop(ENV_VAR)
            if self.replaced is not None:
                os.environ[ENV_VAR] = self.replaced
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        shutil.rmtree(self.folder, ignore_errors=True)


def available() -> bool:
    """Whether this platform has what the server needs (Linux: fork, pidfd_open)."""
    return hasattr(os, "pidfd_open") and hasattr(socket, "send_fds")


# --- server ------------------------------------------------------------------------------------

def serve(path: str) -> None:
    """Listen on `path` until SIGTERM / SIGINT or until the process that started this one ends.
    The socket is bound before the (slow) preload, so early clients wait in the backlog."""
    import importlib

    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(64)
    started_by = os.getppid()
    for name in THREAD_ENV:  # the children apply their job's count; the server's default is torch's
        os.environ.pop(name, None)
    inherited = dict(os.environ)
    for name in PRELOAD:
        importlib.import_module(name)
    # What importing set (torch: TORCHINDUCTOR_CACHE_DIR): a child's import would have set it too.
    imported = {k: v for k, v in os.environ.items() if inherited.get(k) != v}
    server = _Server(listener, inherited, imported, _package_origins())
    _log(f"serving {path} (pid {os.getpid()}; preloaded {', '.join(PRELOAD)})")

    stopping: list[str] = []
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda number, _: stopping.append(signal.Signals(number).name))
    try:
        while not stopping and os.getppid() == started_by:
            server.poll(timeout=1.0)
        _log(f"stopping ({stopping[0]})" if stopping
             else "the process that started this server has ended")
    finally:
        server.close()
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass


class _Server:
    def __init__(self, listener: socket.socket, env: dict, imported: dict, packages: dict):
        self.listener, self.env, self.imported, self.packages = listener, env, imported, packages
        self.python = os.path.realpath(sys.executable)
        self.selector = selectors.DefaultSelector()
        self.selector.register(listener, selectors.EVENT_READ, ("accept", None))
        # A signal (SIGTERM: stop) wakes the select at once, through this pipe.
        self.wakeup = os.pipe()
        os.set_blocking(self.wakeup[1], False)
        signal.set_wakeup_fd(self.wakeup[1])
        self.selector.register(self.wakeup[0], selectors.EVENT_READ, ("wakeup", None))
        self.children: dict[int, tuple[socket.socket, int]] = {}  # pid -> (client, pidfd)

    def poll(self, timeout: float) -> None:
        for key, _ in self.selector.select(timeout):
            kind, pid = key.data
            if kind == "wakeup":
                os.read(self.wakeup[0], 512)
            elif kind == "accept":
                self._accept()
            elif kind == "client":  # the client went away (or broke protocol): end its run
                self.selector.unregister(key.fileobj)
                _kill(pid, signal.SIGTERM)
            else:
                self._reap(pid)

    def _accept(self) -> None:
        conn, _ = self.listener.accept()
        fds: list[int] = []
        try:
            conn.settimeout(30)  # a connection that sends no request must not hold the server
            request, fds = _receive_request(conn)
            conn.settimeout(None)
            refusal = self._refusal(request)
            if refusal:
                _reply(conn, {"refused": refusal})
                conn.close()
                return
            # Signals wait until each side has its own handlers (the child: the defaults).
            signal.pthread_sigmask(signal.SIG_BLOCK, FORWARDED_SIGNALS)
            try:
                pid = os.fork()
                if pid == 0:
                    os._exit(self._run_child(conn, fds, request))
            finally:
                signal.pthread_sigmask(signal.SIG_UNBLOCK, FORWARDED_SIGNALS)
        except Exception as err:  # a broken request must not stop the server
            _log(f"request failed: {err!r}")
            conn.close()
            return
        finally:
            for fd in fds:
                os.close(fd)
        pidfd = os.pidfd_open(pid)
        self.children[pid] = (conn, pidfd)
        self.selector.register(conn, selectors.EVENT_READ, ("client", pid))
        self.selector.register(pidfd, selectors.EVENT_READ, ("child", pid))
        _log(f"pid {pid}: ifss {' '.join(request['argv'])}")
        try:
            _reply(conn, {"pid": pid})
        except OSError:
            _kill(pid, signal.SIGTERM)

    def _refusal(self, request: dict) -> str | None:
        if request["python"] != self.python:
            return f"another Python: {request['python']}, the server runs {self.python}"
        for name, origin in request["packages"].items():
            theirs = self.packages.get(name)
            if origin != theirs:
                if origin and theirs and origin[0] == theirs[0]:
                    return f"{name} was reinstalled since the server imported it"
                return (f"{name} is {origin and origin[0]} here, "
                        f"the server's is {theirs and theirs[0]}")
        env = request["env"]
        differ = [name for name in sorted(set(env) | set(self.env))
                  if name not in PER_JOB_ENV and env.get(name) != self.env.get(name)]
        if differ:
            return f"environment variables that differ from the server's: {', '.join(differ)}"
        return None

    def _run_child(self, conn: socket.socket, fds: list[int], request: dict) -> int:
        """In the forked child: become the job's process and run its command; the exit code."""
        try:
            self._leave_server(conn)
            signal.pthread_sigmask(signal.SIG_UNBLOCK, FORWARDED_SIGNALS)
            _become(request, fds, self.imported)
        except BaseException as err:  # noqa: BLE001 - nothing may unwind into the server's loop
            _log(f"child setup failed: {err!r}")
            return 70
        return _run_command(request["argv"])

    def _leave_server(self, conn: socket.socket) -> None:
        for signum in (signal.SIGTERM, signal.SIGHUP, signal.SIGCHLD):
            signal.signal(signum, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        _die_with_parent()
        self._release()
        conn.close()
        for client, pidfd in self.children.values():
            client.close()
            os.close(pidfd)

    def _reap(self, pid: int) -> None:
        conn, pidfd = self.children.pop(pid)
        try:
            self.selector.unregister(conn)
        except KeyError:
            pass  # unregistered when its client went away
        self.selector.unregister(pidfd)
        os.close(pidfd)
        _, status = os.waitpid(pid, 0)
        code = os.waitstatus_to_exitcode(status)
        _log(f"pid {pid}: exit {code}")
        try:
            _reply(conn, {"exit": code})
        except OSError:
            pass  # the client is gone
        conn.close()

    def close(self) -> None:
        """End every running child (their clients are told they were killed) and stop."""
        for pid in list(self.children):
            _kill(pid, signal.SIGTERM)
        for pid in list(self.children):
            self._reap(pid)
        self._release()

    def _release(self) -> None:
        """Close the server's own descriptors: the selector, the signal pipe, the listener."""
        signal.set_wakeup_fd(-1)
        self.selector.close()
        for fd in self.wakeup:
            os.close(fd)
        self.listener.close()


def _kill(pid: int, signum: int) -> None:
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        pass  # already ended


def _receive_request(conn: socket.socket) -> tuple[dict, list[int]]:
    head, fds, _, _ = socket.recv_fds(conn, _LENGTH.size, 3)
    (length,) = _LENGTH.unpack(_receive_exactly(conn, _LENGTH.size, head))
    body = _receive_exactly(conn, length)
    if len(fds) != 3:
        raise ConnectionError(f"expected stdin, stdout and stderr, got {len(fds)} descriptors")
    return json.loads(body), fds


def _receive_exactly(conn: socket.socket, size: int, start: bytes = b"") -> bytes:
    """`size` bytes from `conn`, the first of them `start` (already received)."""
    data = bytearray(start)
    while len(data) < size:
        more = conn.recv(size - len(data))
        if not more:
            raise ConnectionError("request cut short")
        data += more
    return bytes(data)


def _reply(conn: socket.socket, message: dict) -> None:
    conn.sendall(json.dumps(message).encode() + b"\n")


def _die_with_parent() -> None:
    """Linux: the child gets SIGTERM when the server ends, so no run outlives its server."""
    if sys.platform.startswith("linux"):
        import ctypes

        pr_set_pdeathsig = 1
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)


def _become(request: dict, fds: list[int], imported: dict) -> None:
    """Take on the job's standard streams, folder, umask, environment (with what the preload's
    imports set, unless the job sets it), sys.path and threads, and forget the server's `ifss`
    modules so the job's own are imported."""
    for target, fd in enumerate(fds):
        os.dup2(fd, target)
    for fd in fds:
        os.close(fd)
    os.chdir(request["cwd"])
    os.umask(request["umask"])
    os.environ.clear()
    os.environ.update({**imported, **request["env"]})
    import tempfile

    tempfile.tempdir = None  # found again from the job's TMPDIR (the preload cached the server's)
    sys.path[:] = request["path"]
    sys.argv = ["ifss", *request["argv"]]
    sys.stdout.reconfigure(line_buffering=os.isatty(1))  # as Python sets it at start-up
    threads = request["env"].get("OMP_NUM_THREADS", "")
    if threads.isdigit() and int(threads) > 0:
        import torch

        torch.set_num_threads(int(threads))
    for name in [m for m in sys.modules if m == "ifss" or m.startswith("ifss.")]:
        del sys.modules[name]


def _run_command(argv: list[str]) -> int:
    """`ifss argv` in this (child) process; the exit code as the interpreter would give it."""
    import atexit
    import traceback

    try:
        from ifss.cli import run_command

        code = run_command(argv)
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
        if not isinstance(exit_.code, (int, type(None))):
            print(exit_.code, file=sys.stderr)
    except KeyboardInterrupt:
        traceback.print_exc()
        code = 130
    except BaseException:  # noqa: BLE001 - print it as the interpreter would, then exit 1
        traceback.print_exc()
        code = 1
    atexit._run_exitfuncs()  # what the interpreter's own exit runs (os._exit skips it)
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    return code


def _log(text: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} fork server: {text}", file=sys.stderr, flush=True)
