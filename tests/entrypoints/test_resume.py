"""Preemption-safe training: a run stopped by SIGUSR1/SIGTERM writes resume.pt and exits 3; the
same command (--resume continue, the default, or auto) continues and ends with the same weights.pt,
byte for byte, as a run that was never stopped; --resume auto skips complete units; --resume never
starts over but keeps an older resume.pt until it has trained more; resume.pt is gone once a unit
completes."""

import contextlib
import io
import os
import signal

import pytest

import engine.fit
import train as train_cli
from common.errors import EXIT_PREEMPTED
from engine.resume import read_resume
from tests.datamodules.tree_helpers import make_ksdd2_tree
from tests.entrypoints.test_train_eval import _sets, make_mvtec_tree

EPOCHS = 5
TINY = ["backbone=resnet18", "pretrained=false", "epochs=5", "batch=4", "num_workers=0", "eval_step_size=2",
        "checkpoint_every=2"]


def _run(argv: list[str]) -> int:
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        try:
            train_cli.main(argv)
        except SystemExit as stopped:
            return stopped.code
    return 0


def _signal_at_epoch(monkeypatch, epoch_to_stop: int, signal_number: int) -> None:
    """Deliver a real signal to this process while epoch `epoch_to_stop` (0-based) trains."""
    original = engine.fit.train_epoch

    def train_epoch(*args, **kwargs):
        if args[-1] == epoch_to_stop:
            os.kill(os.getpid(), signal_number)
        return original(*args, **kwargs)

    monkeypatch.setattr(engine.fit, "train_epoch", train_epoch)


@pytest.fixture(params=["ksdd2", "mvtec"])
def dataset_args(request, tmp_path):
    """A supervised (balanced sampler) and an unsupervised (shuffled loader) tiny run."""
    if request.param == "ksdd2":
        make_ksdd2_tree(tmp_path / "datasets" / "KolektorSDD2", train=(6, 3), test=(2, 2))
        return ["ksdd2", "--datasets-folder", str(tmp_path / "datasets"),
                *_sets([*TINY, "image_size=[64,32]", "num_segmented=16"])]
    datasets = make_mvtec_tree(tmp_path / "datasets", category="bottle")
    return ["mvtec", "--category", "bottle", "--datasets-folder", str(datasets), *_sets([*TINY, "image_size=[64,64]"])]


@pytest.fixture
def mvtec_args(tmp_path):
    """The unsupervised tiny run alone: for behaviour that does not depend on the sampler."""
    datasets = make_mvtec_tree(tmp_path / "datasets", category="bottle")
    return ["mvtec", "--category", "bottle", "--datasets-folder", str(datasets), *_sets([*TINY, "image_size=[64,64]"])]


def _weights(results, dataset_args):
    dataset = dataset_args[0]
    unit, ratio = ("ksdd2", "16") if dataset == "ksdd2" else ("bottle", "1")
    return results / "superSimpleNet" / "checkpoints" / dataset / unit / ratio


@pytest.mark.parametrize("stop_at, signal_number", [(1, signal.SIGUSR1), (2, signal.SIGTERM)])
def test_resumed_run_equals_uninterrupted_run(tmp_path, monkeypatch, dataset_args, stop_at, signal_number):
    common = ["--device", "cpu", "--no-progress", "--no-figures"]
    straight = tmp_path / "straight"
    assert _run([*dataset_args, "--results-path", str(straight), *common]) == 0

    stopped = tmp_path / "stopped"
    with monkeypatch.context() as patch:
        _signal_at_epoch(patch, stop_at, signal_number)
        assert _run([*dataset_args, "--results-path", str(stopped), "--resume", "auto", *common]) == EXIT_PREEMPTED
    folder = _weights(stopped, dataset_args)
    assert (folder / "resume.pt").is_file() and not (folder / "weights.pt").exists()

    assert _run([*dataset_args, "--results-path", str(stopped), "--resume", "auto", *common]) == 0
    assert (folder / "weights.pt").read_bytes() == (_weights(straight, dataset_args) / "weights.pt").read_bytes()
    assert not (folder / "resume.pt").exists()  # removed once the unit is complete
    assert not (_weights(straight, dataset_args) / "resume.pt").exists()


def test_a_rerun_continues_by_default_and_auto_skips_complete_units(tmp_path, monkeypatch, mvtec_args):
    """After a stop (or a kill once resume.pt is written), the same command goes on from resume.pt."""
    dataset_args = mvtec_args
    common = ["--device", "cpu", "--no-progress", "--no-figures"]
    results = tmp_path / "results"
    with monkeypatch.context() as patch:
        _signal_at_epoch(patch, 3, signal.SIGUSR1)
        assert _run([*dataset_args, "--results-path", str(results), *common]) == EXIT_PREEMPTED
    folder = _weights(results, dataset_args)
    trained = []
    original = engine.fit.train_epoch
    monkeypatch.setattr(engine.fit, "train_epoch", lambda *a, **k: trained.append(a[-1]) or original(*a, **k))
    assert _run([*dataset_args, "--results-path", str(results), *common]) == 0  # the same command, no --resume
    assert trained == [4]  # epochs 1-4 came from resume.pt
    assert not (folder / "resume.pt").exists()
    trained.clear()
    before = (folder / "weights.pt").stat().st_mtime_ns
    assert _run([*dataset_args, "--results-path", str(results), "--resume", "auto", *common]) == 0
    assert trained == [] and (folder / "weights.pt").stat().st_mtime_ns == before  # complete: skipped
    assert _run([*dataset_args, "--results-path", str(results), *common]) == 0  # continue: trained again
    assert trained == list(range(EPOCHS))


def test_resume_never_keeps_the_older_resume_file_until_it_has_trained_more(tmp_path, monkeypatch, mvtec_args):
    dataset_args = mvtec_args
    common = ["--device", "cpu", "--no-progress", "--no-figures", "--set", "checkpoint_every=1"]
    straight = tmp_path / "straight"
    assert _run([*dataset_args, "--results-path", str(straight), *common]) == 0
    results = tmp_path / "results"
    with monkeypatch.context() as patch:
        _signal_at_epoch(patch, 2, signal.SIGUSR1)
        assert _run([*dataset_args, "--results-path", str(results), *common]) == EXIT_PREEMPTED
    resume = _weights(results, dataset_args) / "resume.pt"
    assert read_resume(resume)["next_epoch"] == 3

    held = []  # what resume.pt holds when each epoch of the new run starts
    original = engine.fit.train_epoch
    monkeypatch.setattr(engine.fit, "train_epoch",
                        lambda *a, **k: held.append((a[-1], read_resume(resume)["next_epoch"])) or original(*a, **k))
    assert _run([*dataset_args, "--results-path", str(results), "--resume", "never", *common]) == 0
    # epochs 1-3 of the new run leave the file of 3 epochs alone; after epoch 4 it holds 4
    assert held == [(0, 3), (1, 3), (2, 3), (3, 3), (4, 4)]
    assert not resume.exists()
    weights = _weights(results, dataset_args) / "weights.pt"
    assert weights.read_bytes() == (_weights(straight, dataset_args) / "weights.pt").read_bytes()  # from epoch 1


def test_resume_file_of_other_settings_is_refused(tmp_path, monkeypatch, dataset_args, capsys):
    common = ["--device", "cpu", "--no-progress", "--no-figures"]
    results = tmp_path / "results"
    with monkeypatch.context() as patch:
        _signal_at_epoch(patch, 2, signal.SIGUSR1)
        assert _run([*dataset_args, "--results-path", str(results), "--resume", "auto", *common]) == EXIT_PREEMPTED
    with pytest.raises(SystemExit) as exit_info:
        train_cli.main([*dataset_args, "--results-path", str(results), "--resume", "auto", *common,
                        "--set", "seg_lr=0.001"])
    assert exit_info.value.code == 2
    assert "seg_lr" in capsys.readouterr().err


def test_a_signal_during_start_up_stops_after_the_first_epoch(tmp_path, monkeypatch, dataset_args):
    """A preemption signal that arrives before training (imports, data loading) must not kill the
    process: the run trains one epoch, writes resume.pt and exits as preempted."""
    from engine import signals

    monkeypatch.setattr(signals, "_received", [])
    previous = {number: signal.getsignal(number) for number in signals.STOP_SIGNALS}
    try:
        signals.install_early_handlers()
        os.kill(os.getpid(), signal.SIGUSR1)  # before train.py has even parsed its options
        results = tmp_path / "results"
        code = _run([*dataset_args, "--results-path", str(results), "--resume", "auto", "--device", "cpu",
                     "--no-progress", "--no-figures"])
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)
    assert code == EXIT_PREEMPTED
    assert (_weights(results, dataset_args) / "resume.pt").is_file()


def test_resume_file_is_written_after_every_checkpoint_every_epochs(tmp_path, monkeypatch):
    datasets = make_mvtec_tree(tmp_path / "datasets", category="bottle")
    written = []
    original = engine.fit.save_resume
    monkeypatch.setattr(engine.fit, "save_resume", lambda path, next_epoch, *a: written.append(next_epoch) or
                        original(path, next_epoch, *a))
    argv = ["mvtec", "--category", "bottle", "--datasets-folder", str(datasets), "--results-path",
            str(tmp_path / "results"), "--device", "cpu", "--no-progress", "--no-figures",
            *_sets([*TINY, "image_size=[32,32]", "epochs=7", "checkpoint_every=3", "eval_step_size=10"])]
    assert _run(argv) == 0
    assert written == [3, 6]  # after epochs 3 and 6; never after the last one (weights.pt is written then)
