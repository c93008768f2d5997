import functools
import http.server
import os
import threading
from pathlib import Path

import pytest

# tiny models are overhead-bound: one thread each keeps parallel test processes from thrashing
os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture(scope="session")
def synth_root(tmp_path_factory) -> Path:
    """A small synthetic benchmark shared by the tests that read data (read-only for them)."""
    from ifss.data.synthetic import generate

    root = tmp_path_factory.mktemp("data") / "synthetic"
    generate(root, seed=0, n_train=400, n_val=40, size=48)
    return root


def run_tiny(root: Path, out: Path, **extra) -> dict:
    """Train one tiny run of task 5-0 (unless `task` is given) in-process; its metrics record."""
    from ifss.config import build_config
    from ifss.run import train_run

    extra.setdefault("task", "5-0")
    return train_run(build_config(None, tiny_overrides(root, **extra)), out)


def rewrite_train_labels(root: Path, rewrite) -> int:
    """Rewrite the train labels of the synthetic dataset at `root` in place: `rewrite(label)`
    gives the new array (same shape) or None to leave the file; palettes are kept. Returns how
    many files changed."""
    import numpy as np
    from PIL import Image

    from ifss.data.layout import layout_for

    layout = layout_for("synthetic", root)
    changed = 0
    for image_id in layout.ids("train"):
        path = layout.label_path("train", image_id)
        with Image.open(path) as img:
            palette, label = img.getpalette(), np.array(img)
        new = rewrite(label)
        if new is None:
            continue
        out = Image.fromarray(new)
        if palette:
            out.putpalette(palette)
        out.save(path)
        changed += int(not np.array_equal(new, label))
    return changed


@pytest.fixture(scope="session")
def cos_step0(synth_root, tmp_path_factory) -> Path:
    """A tiny COS step-0 model of 5-0, the start of WI, PIFS and DWI runs (read-only)."""
    out = tmp_path_factory.mktemp("cos") / "step0"
    run_tiny(synth_root, out, method="COS")
    return out / "model.pt"


def tiny_overrides(root: Path, **extra) -> list[str]:
    """Config overrides for a run that takes a second or two on CPU."""
    base = {
        "data.root": str(root), "data.crop_size": 48, "data.batch_size": 8,
        "train.iterations": 6, "train.log_every": 2, "eval.batch_size": 20,
        "model.head_channels": 16,
    }
    base.update(extra)
    return [f"{k}={v}" for k, v in base.items()]


class _Handler(http.server.SimpleHTTPRequestHandler):
    """Static files; answers `Range: bytes=N-` with 206 when the server allows ranges."""

    def log_message(self, *args):  # keep test output clean
        pass

    def do_GET(self):
        self.server.requests.append((self.path, self.headers.get("Range")))
        rng = self.headers.get("Range")
        path = Path(self.translate_path(self.path))
        if rng and self.server.ranges and path.is_file() and rng.startswith("bytes="):
            start = int(rng[len("bytes="):].split("-")[0])
            data = path.read_bytes()
            if start >= len(data):
                self.send_error(416)
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            self.send_header("Content-Length", str(len(data) - start))
            self.end_headers()
            self.wfile.write(data[start:])
            return
        super().do_GET()


@pytest.fixture
def server(tmp_path):
    """(folder served, base URL, server) for one test."""
    www = tmp_path / "www"
    www.mkdir()
    httpd = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(_Handler, directory=str(www)))
    httpd.requests, httpd.ranges = [], True
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    yield www, f"http://127.0.0.1:{httpd.server_address[1]}", httpd
    httpd.shutdown()
    httpd.server_close()
