"""A run through the command line when its inputs or its surroundings are bad: stale or broken
resume checkpoints, a bad --previous rerun into a finished run, file-system failures and a
data.root typo. Each case: exit status 2, one sentence naming the file and the fix, and nothing
in the run directory changed where that applies."""
from __future__ import annotations

import errno
import io
import os
import re
import shutil
from pathlib import Path

import pytest
import torch

from conftest import tiny_overrides
from ifss import atomic, engine
from ifss.cli import main

RESUME_RUN = {"method": "FT", "train.iterations": 4, "train.checkpoint_every": 2,
              "train.log_every": 2}


def sets(root, **extra) -> list[str]:
    return [a for pair in tiny_overrides(root, **extra) for a in ("--set", pair)]


def train(root, out, *more, **extra) -> int:
    return main(["train", *sets(root, **extra), *more, "--out", str(out)])


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under `folder` with its bytes (the folder's state, for 'nothing changed')."""
    return {p.relative_to(folder).as_posix(): p.read_bytes()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def refused(capsys, pattern: str) -> str:
    """The one-line error of the last command, checked against `pattern`."""
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("ifss: error: ")]
    assert len(lines) == 1 and "Traceback" not in err, err
    assert re.search(pattern, lines[0]), lines[0]
    return lines[0]


def kill_after_first_checkpoint(monkeypatch):
    """The run stops (as if killed) right after writing its first resume.pt."""
    save = engine._save_resume

    def save_then_die(*args, **kwargs):
        save(*args, **kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(engine, "_save_resume", save_then_die)


@pytest.fixture(scope="module")
def killed_template(synth_root, tmp_path_factory):
    """A run directory left by a run killed after its first checkpoint (FT, lr 0.01, 4 iter)."""
    out = tmp_path_factory.mktemp("killed") / "run"
    with pytest.MonkeyPatch.context() as mp:
        kill_after_first_checkpoint(mp)
        assert train(synth_root, out, **RESUME_RUN) == 130
    assert (out / "resume.pt").is_file() and not (out / "metrics.json").exists()
    return out


@pytest.fixture
def killed(killed_template, tmp_path) -> Path:
    out = tmp_path / "killed"
    shutil.copytree(killed_template, out)
    return out


@pytest.fixture(scope="module")
def finished_template(synth_root, cos_step0, tmp_path_factory):
    """A finished step-1 COS run of 5-0 (from the shared step-0 model)."""
    out = tmp_path_factory.mktemp("finished") / "step1"
    assert train(synth_root, out, "--previous", str(cos_step0), method="COS", step=1,
                 nshot=1) == 0
    return out


@pytest.fixture
def finished(finished_template, tmp_path) -> Path:
    out = tmp_path / "finished"
    shutil.copytree(finished_template, out)
    return out


# -- 1. a resume checkpoint is used only by the run it was made for ---------------------------

@pytest.mark.parametrize("change, differs", [
    ({"train.lr": 0.02}, r"train\.lr 0\.01 -> 0\.02"),
    ({"train.iterations": 8}, r"train\.iterations 4 -> 8"),
    ({"method": "COS", "seed": 7}, r"method FT -> COS; .*seed 42 -> 7"),
])
def test_resume_of_other_settings_is_refused(killed, synth_root, capsys, change, differs):
    before = snapshot(killed)
    assert train(synth_root, killed, **{**RESUME_RUN, **change}) == 2
    resume = killed / "resume.pt"
    refused(capsys, rf"^ifss: error: {re.escape(str(resume))} was left by a run with other "
                    rf"settings \(.*{differs}.*\); delete {re.escape(str(resume))} to start "
                    r"afresh, or rerun with the old settings$")
    assert snapshot(killed) == before


def test_resume_ignores_settings_without_effect(killed, synth_root, tmp_path):
    """checkpoint_every, log_every, device, data.workers and eval.* may change: it resumes, and
    ends where an uninterrupted run ends."""
    free = {"train.checkpoint_every": 3, "train.log_every": 1, "train.device": "cpu",
            "data.workers": 1, "eval.batch_size": 7}
    assert train(synth_root, killed, **{**RESUME_RUN, **free}) == 0
    assert "resumed from" in (killed / "log.txt").read_text()
    whole = tmp_path / "whole"
    assert train(synth_root, whole, **RESUME_RUN) == 0
    a = torch.load(whole / "model.pt", weights_only=True)["model"]
    b = torch.load(killed / "model.pt", weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_resume_checks_the_previous_checkpoint_by_content(synth_root, cos_step0, tmp_path,
                                                          monkeypatch, capsys):
    """The same step-0 model copied elsewhere resumes; a different one with the same classes is
    refused."""
    step1 = dict(method="COS", step=1, nshot=1, **{"train.iterations": 4,
                                                  "train.checkpoint_every": 2})
    out = tmp_path / "run"
    with monkeypatch.context() as mp:
        kill_after_first_checkpoint(mp)
        assert train(synth_root, out, "--previous", str(cos_step0), **step1) == 130
    other = tmp_path / "other.pt"
    ckpt = torch.load(cos_step0, weights_only=True)
    weight = next(k for k in ckpt["model"] if k.endswith("conv.weight"))
    ckpt["model"][weight] = ckpt["model"][weight] + 0.01
    torch.save(ckpt, other)
    before = snapshot(out)
    assert train(synth_root, out, "--previous", str(other), **step1) == 2
    refused(capsys, r"was left by a run with other settings \(previous sha256:[0-9a-f]{12} -> "
                    r"sha256:[0-9a-f]{12}\); delete .*resume.pt to start afresh")
    assert snapshot(out) == before
    moved = tmp_path / "moved" / "model.pt"
    moved.parent.mkdir()
    shutil.copy(cos_step0, moved)
    assert train(synth_root, out, "--previous", str(moved), **step1) == 0
    assert "resumed from" in (out / "log.txt").read_text()


# -- 2. a resume.pt that cannot be used: one sentence, the file named, nothing run ------------

def _pickled_code(path: Path, marker: Path) -> None:
    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    torch.save({"iteration": 2, "x": Payload()}, path)


@pytest.mark.parametrize("kind, reason", [
    ("garbage", r"it is not a file written by torch\.save"),
    ("empty", r"it is empty"),
    ("truncated", r"it is truncated or corrupt"),
    ("pickled code", r"it holds pickled code \(posix\.system\), which is never run"),
    ("older ifss", r"does not record the settings it was made for"),
    ("other model", r"does not fit this run's model \(classifier\.convs\.0\.weight has shape "
                    r"\(3, 16, 1, 1\), expected \(16, 16, 1, 1\)\)"),
])
def test_unusable_resume_checkpoint_is_one_sentence(killed, synth_root, tmp_path, capsys, kind,
                                                    reason):
    resume = killed / "resume.pt"
    marker = tmp_path / "code-ran"
    if kind == "garbage":
        resume.write_bytes(b"this is not a checkpoint\n" * 20)
    elif kind == "empty":
        resume.write_bytes(b"")
    elif kind == "truncated":
        resume.write_bytes(resume.read_bytes()[:2000])
    elif kind == "pickled code":
        _pickled_code(resume, marker)
    else:
        state = torch.load(resume, weights_only=True)
        if kind == "older ifss":
            del state["made_for"]
        else:  # a resume.pt of another task whose settings record was forged to match
            state["model"]["classifier.convs.0.weight"] = torch.zeros(3, 16, 1, 1)
        torch.save(state, resume)
    before = snapshot(killed)
    assert train(synth_root, killed, **RESUME_RUN) == 2
    refused(capsys, rf"^ifss: error: {re.escape(str(resume))} .*{reason}.*; delete "
                    rf"{re.escape(str(resume))} to start afresh")
    assert snapshot(killed) == before
    assert not marker.exists()


def test_deleting_the_resume_checkpoint_starts_afresh(killed, synth_root, capsys):
    (killed / "resume.pt").write_bytes(b"garbage")
    assert train(synth_root, killed, **RESUME_RUN) == 2
    (killed / "resume.pt").unlink()
    assert train(synth_root, killed, **RESUME_RUN) == 0
    assert (killed / "metrics.json").is_file() and not (killed / "resume.pt").exists()


# -- 3. a finished run is never damaged by a bad rerun ------------------------------------------

@pytest.mark.parametrize("previous, message", [
    ("missing", r"checkpoint .*missing\.pt does not exist"),
    ("own model", r"checkpoint .*model\.pt has 21 classes \[16, 5\] per step, but step 0 of "
                  r"task 5-0 needs 16 \[16\]; give the checkpoint of this task's step 0"),
    ("garbage", r"checkpoint .*garbage\.pt cannot be read \(it is not a file written by "
                r"torch\.save\); give the model\.pt of a finished run"),
])
def test_bad_previous_leaves_a_finished_run_as_it_was(finished, synth_root, tmp_path, capsys,
                                                      previous, message):
    path = {"missing": tmp_path / "missing.pt", "own model": finished / "model.pt",
            "garbage": tmp_path / "garbage.pt"}[previous]
    if previous == "garbage":
        path.write_bytes(b"not a model" * 10)
    before = snapshot(finished)
    assert train(synth_root, finished, "--previous", str(path), method="COS", step=1,
                 nshot=1) == 2
    refused(capsys, message)
    assert snapshot(finished) == before


def test_bad_data_leaves_a_finished_run_as_it_was(finished, synth_root, cos_step0, tmp_path,
                                                  capsys):
    before = snapshot(finished)
    typo = tmp_path / "synthetc"
    assert train(synth_root, finished, "--previous", str(cos_step0), method="COS", step=1,
                 nshot=1, **{"data.root": typo}) == 2
    refused(capsys, "holds no synthetic dataset")
    assert snapshot(finished) == before


# -- 4. the operating system refuses -----------------------------------------------------------

def test_out_is_a_file(synth_root, tmp_path, capsys):
    out = tmp_path / "run"
    out.write_text("my notes\n")
    assert train(synth_root, out, **RESUME_RUN) == 2
    refused(capsys, rf"^ifss: error: run directory {re.escape(str(out))} is a file; give --out "
                    r"a folder")
    assert out.read_text() == "my notes\n"
    assert train(synth_root, out / "sub", **RESUME_RUN) == 2
    refused(capsys, rf"run directory .*sub cannot be made: {re.escape(str(out))} is a file")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def test_eval_out_is_a_file(cos_step0, tmp_path, capsys):
    out = tmp_path / "eval"
    out.write_text("keep\n")
    assert main(["eval", "--checkpoint", str(cos_step0), "--out", str(out)]) == 2
    refused(capsys, rf"^ifss: error: output folder {re.escape(str(out))} is a file")
    assert out.read_text() == "keep\n"


def test_read_only_parent(synth_root, tmp_path, monkeypatch, capsys):
    parent = tmp_path / "shared"
    parent.mkdir()
    if os.geteuid() != 0:
        parent.chmod(0o555)
    else:  # root writes anywhere: the file system refuses instead (as a read-only mount would)
        real_access, real_mkdir = os.access, os.mkdir

        def access(path, mode, **kw):
            if Path(path) == parent and mode & os.W_OK:
                return False
            return real_access(path, mode, **kw)

        def mkdir(path, *args, **kw):
            if Path(path).parent == parent:
                raise PermissionError(errno.EACCES, "Permission denied", str(path))
            return real_mkdir(path, *args, **kw)

        monkeypatch.setattr(os, "access", access)
        monkeypatch.setattr(os, "mkdir", mkdir)
    try:
        assert train(synth_root, parent / "run", **RESUME_RUN) == 2
    finally:
        parent.chmod(0o755)
    refused(capsys, rf"run directory .*run cannot be written: {re.escape(str(parent))} is not "
                    r"writable for you; make it writable or give --out another folder")
    assert not any(parent.iterdir())


def test_first_write_refused_is_one_sentence(synth_root, tmp_path, monkeypatch, capsys):
    """A folder that turns read-only after the checks (the OS refuses the rename of metrics.json):
    one sentence, no temporary file, nothing under the final name."""
    out = tmp_path / "run"
    real_replace = os.replace

    def replace(src, dst, *args, **kw):
        if Path(dst).name == "metrics.json":
            raise PermissionError(errno.EACCES, "Permission denied", str(src), None, str(dst))
        return real_replace(src, dst, *args, **kw)

    monkeypatch.setattr(atomic.os, "replace", replace)
    assert train(synth_root, out, **RESUME_RUN) == 2
    refused(capsys, rf"^ifss: error: cannot write {re.escape(str(out / 'metrics.json'))}: "
                    r"permission denied; make the folder writable")
    assert not (out / "metrics.json").exists()
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]


def test_disk_full_during_checkpoint_write(synth_root, tmp_path, monkeypatch, capsys):
    """The disk fills up while resume.pt is written (the file takes 64 KiB, then every write is
    ENOSPC, and torch's writer fails again closing the archive, as on a full disk): one
    sentence, no half file under either name; with space again the same command finishes."""
    out = tmp_path / "run"

    class FullDisk(io.FileIO):
        def write(self, data):
            if self.tell() + len(data) > 1 << 16:
                raise OSError(errno.ENOSPC, "No space left on device")
            return super().write(data)

    def open_(path, mode="r", *args, **kwargs):
        if ".resume.pt." in str(path) and "w" in mode:
            return FullDisk(path, "wb")
        return open(path, mode, *args, **kwargs)

    monkeypatch.setattr(atomic, "open", open_, raising=False)
    assert train(synth_root, out, **RESUME_RUN) == 2
    refused(capsys, rf"^ifss: error: cannot write {re.escape(str(out / 'resume.pt'))}: no space "
                    r"left on device; free some space \(or choose another --out\) and rerun the "
                    r"same command")
    assert sorted(p.name for p in out.iterdir()) == ["config.yaml", "log.txt", "tb"]
    monkeypatch.undo()
    assert train(synth_root, out, **RESUME_RUN) == 0
    assert (out / "metrics.json").is_file()


def test_atomic_write_error_keeps_other_errors(tmp_path):
    """An OSError about another file (read inside the block) is not reworded as a write error."""
    with pytest.raises(FileNotFoundError):
        with atomic.atomic_path(tmp_path / "out.txt"):
            open(tmp_path / "missing-input.txt")
    assert list(tmp_path.iterdir()) == []


# -- 5. a data.root typo is refused; only the default root is generated, and that is logged -----

def test_data_root_typo_is_refused_not_generated(synth_root, tmp_path, capsys):
    typo = tmp_path / "data" / "synthetc"
    out = tmp_path / "run"
    assert train(synth_root, out, **{**RESUME_RUN, "data.root": typo}) == 2
    refused(capsys, rf"^ifss: error: data root {re.escape(str(typo))} holds no synthetic dataset "
                    rf"\(no meta\.json\); make it with `ifss synth --out {re.escape(str(typo))}` "
                    r"or correct data\.root")
    assert not typo.exists() and not out.exists()


def test_default_data_root_is_generated_and_logged(synth_root, tmp_path, monkeypatch, capsys):
    from ifss.data import synthetic

    generate = synthetic.generate
    monkeypatch.setattr(synthetic, "generate",  # the default sizes, scaled down for the test
                        lambda root: generate(root, seed=0, n_train=60, n_val=8, size=48))
    monkeypatch.chdir(tmp_path)
    pairs = [p for p in tiny_overrides(synth_root, **RESUME_RUN) if not p.startswith("data.root=")]
    args = [a for p in pairs for a in ("--set", p)]
    assert main(["train", *args, "--out", "run"]) == 0
    err = capsys.readouterr().err
    assert "generating the synthetic benchmark there" in err
    assert "generating the synthetic benchmark there" in (tmp_path / "run" / "log.txt").read_text()
    assert (tmp_path / "data" / "synthetic" / "meta.json").is_file()
