"""A full disk costs no trained model: train.py checks the results folder's free space before a unit
trains, and when a write still fails for lack of space (the disk filled up meanwhile) it stops with
one line naming the file, the space it needed and the resume.pt it kept; nothing partial is left,
and the same command continues once there is space again, ending with the weights an uninterrupted
run gives.

The results live on a small tmpfs mounted for the test (root only; skipped otherwise), so the
file system really answers ENOSPC."""

import contextlib
import io
import os
import subprocess
from pathlib import Path

import pytest

import engine.fit
import train as train_cli
from engine.resume import read_resume
from tests.entrypoints.test_train_eval import _sets, make_mvtec_tree

# one small layer: about 0.56 M trainable parameters (2.3 MB weights.pt, 6.8 MB resume.pt)
TINY = ["backbone=resnet18", "layers=[layer2]", "pretrained=false", "image_size=[64,64]", "epochs=3", "batch=4",
        "num_workers=0", "eval_step_size=5", "checkpoint_every=1"]


@pytest.fixture
def small_disk(tmp_path):
    """A tmpfs of 32 MB at tmp_path/disk; `mount` needs root, so others skip."""
    disk = tmp_path / "disk"
    disk.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=32m", "tmpfs", str(disk)], capture_output=True,
                             text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


def _train(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            train_cli.main(argv)
            code = 0
        except SystemExit as stopped:
            code = stopped.code
    return code, out.getvalue(), err.getvalue()


def _arguments(tmp_path: Path, results: Path) -> list[str]:
    datasets = make_mvtec_tree(tmp_path / "datasets", category="bottle")
    return ["mvtec", "--category", "bottle", "--datasets-folder", str(datasets), "--results-path", str(results),
            "--device", "cpu", "--no-progress", "--no-figures", *_sets(TINY)]


def _files(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


def test_too_little_space_is_refused_before_training(tmp_path, small_disk, monkeypatch):
    filler = small_disk / "filler"
    filler.write_bytes(b"\0" * (31 * 2**20))  # leaves about 1 MB: clearly short of ~20 MB
    trained = []
    monkeypatch.setattr(engine.fit, "train_epoch", lambda *a, **k: trained.append(a[-1]))
    code, _, err = _train(_arguments(tmp_path, small_disk / "results"))
    assert code == 2 and trained == []
    [line] = err.strip().splitlines()
    assert line.startswith("error: not enough free space in ") and "mvtec/bottle writes about" in line, line
    assert _files(small_disk) == ["filler"]


def test_a_disk_that_fills_during_training_keeps_resume_pt_and_the_same_command_continues(tmp_path, small_disk,
                                                                                        monkeypatch):
    straight = tmp_path / "straight"
    assert _train(_arguments(tmp_path, straight))[0] == 0
    reference = straight / "superSimpleNet" / "checkpoints" / "mvtec" / "bottle" / "1" / "weights.pt"

    results = small_disk / "results"
    unit = results / "superSimpleNet" / "checkpoints" / "mvtec" / "bottle" / "1"
    filler = small_disk / "filler"
    original = engine.fit.train_epoch

    def fill_during_the_last_epoch(*args, **kwargs):
        if args[-1] == 2:  # resume.pt of epoch 2 is on disk; someone else fills the disk now
            free = os.statvfs(small_disk).f_bavail * os.statvfs(small_disk).f_frsize
            filler.write_bytes(b"\0" * (free - 512 * 1024))
        return original(*args, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(engine.fit, "train_epoch", fill_during_the_last_epoch)
        code, _, err = _train(_arguments(tmp_path, results))
    assert code == 2
    [line] = err.strip().splitlines()
    assert line.startswith(f"error: no space left on the device for {unit / 'weights.pt'} (")
    assert " MB needed, " in line and " free)" in line, line
    assert f"{unit / 'resume.pt'} is kept (epoch 2 of 3)" in line and "run the same command again" in line, line
    assert sorted(p.name for p in unit.iterdir()) == ["resume.pt"]  # no weights.pt, no temporary
    assert read_resume(unit / "resume.pt")["next_epoch"] == 2

    filler.unlink()
    trained = []
    original = engine.fit.train_epoch
    monkeypatch.setattr(engine.fit, "train_epoch", lambda *a, **k: trained.append(a[-1]) or original(*a, **k))
    assert _train(_arguments(tmp_path, results))[0] == 0  # the same command
    assert trained == [2]
    assert (unit / "weights.pt").read_bytes() == reference.read_bytes()
    assert not (unit / "resume.pt").exists()
