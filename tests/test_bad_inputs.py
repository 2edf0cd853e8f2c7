"""Bad inputs to every command-line tool: each must stop with exit code 2 and exactly one
`error: ...` line on stderr (no traceback), leaving every existing output file byte for byte as
it was and no temporary (`.tmp`) file behind.

Every case runs as a real subprocess (`sys.executable <script> ...`, cwd the repository root) on
tiny generated data. The cases run concurrently (a few processes at a time: most of their time
is the torch import) when the first one is asked for, then each is checked on its own.

Also here: masks that used to be read silently wrong in the user's own folders (0/1, 16-bit,
coloured), read with the "nonzero" rule and summarised by the folder check.
"""

import hashlib
import io
import json
import os
import pickle
import subprocess
import sys
import tarfile
import threading
import zipfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import cv2
import numpy as np
import pytest

from tests.datamodules.tree_helpers import write_image, write_mask

REPO = Path(__file__).resolve().parents[1]
TINY = ["backbone=resnet18", "pretrained=false", "image_size=[64,64]", "epochs=1", "batch=4", "num_workers=0"]
CASE_TIMEOUT_S = 300
PARALLEL_CASES = 2  # the CI machine has 2 cores

def sets(values: list[str]) -> list[str]:
    return [arg for value in values for arg in ("--set", value)]


# ---------------------------------------------------------------- the shared world


@dataclass
class World:
    """Tiny inputs shared by the cases (read-only for them) and one folder per case."""

    root: Path
    datasets: Path  # folder/widget (simple layout), mvtec/bottle (MVTec layout)
    weights: Path  # weights/0/folder/widget/1/weights.pt: a valid checkpoint of the tiny model
    good_state: dict = field(default_factory=dict)

    def case_dir(self, name: str) -> Path:
        path = self.root / "cases" / name
        path.mkdir(parents=True, exist_ok=True)
        return path

    @property
    def checkpoint(self) -> Path:
        return self.weights / "0" / "folder" / "widget" / "1" / "weights.pt"


def make_folder_tree(base: Path) -> Path:
    """Simple layout: 5 good images, 2 defects with 0/255 masks (24 x 40)."""
    for i in range(5):
        write_image(base / "good" / f"g{i}.png", seed=i)
    for i in range(2):
        write_image(base / "defect" / f"d{i}.png", seed=100 + i)
        write_mask(base / "masks" / f"d{i}.png", defect=True)
    return base


def make_mvtec_category(base: Path) -> Path:
    for i in range(3):
        write_image(base / "train" / "good" / f"{i:03d}.png", seed=i)
        write_image(base / "test" / "good" / f"{i:03d}.png", seed=10 + i)
    for i in range(2):
        write_image(base / "test" / "hole" / f"{i:03d}.png", seed=20 + i)
        write_mask(base / "ground_truth" / "hole" / f"{i:03d}_mask.png", defect=True)
    return base


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> World:
    import torch

    from common.config import build_config
    from model.supersimplenet import SuperSimpleNet

    root = tmp_path_factory.mktemp("bad_inputs")
    datasets = root / "datasets"
    make_folder_tree(datasets / "widget")
    make_mvtec_category(datasets / "mvtec" / "bottle")
    world = World(root, datasets, root / "weights")
    config = build_config("folder", overrides=TINY)
    torch.manual_seed(0)
    model = SuperSimpleNet.from_config((64, 64), config)
    world.good_state = {k: v.clone() for k, v in model.trainable_state_dict().items()}
    world.checkpoint.parent.mkdir(parents=True)
    torch.save(world.good_state, world.checkpoint)
    return world


# ---------------------------------------------------------------- cases


@dataclass
class Case:
    """`build(world, case_dir)` makes the bad input and returns the command line (script first);
    `fragments` must all be in the error line. Files under `case_dir` that exist before the run
    must be unchanged after it, and no new file may appear there."""

    name: str
    build: Callable[[World, Path], list[str]]
    fragments: tuple[str, ...]
    xfail: str = ""
    needs_no_cuda: bool = False


def train(*args: str) -> Callable[[World, Path], list[str]]:
    """train.py with the tiny settings, then `args` (a later --set wins)."""
    def build(world: World, case: Path) -> list[str]:
        return ["train.py", "--datasets-folder", str(world.datasets), "--results-path", str(case / "results"),
                "--device", "cpu", "--no-progress", "--no-figures", *sets(TINY), *args]
    return build


def eval_(*args: str) -> Callable[[World, Path], list[str]]:
    def build(world: World, case: Path) -> list[str]:
        return ["eval.py", "--datasets", "folder", "--categories", "widget", "--weights-path", str(world.weights),
                "--datasets-folder", str(world.datasets), "--results-path", str(case / "results"), "--device", "cpu",
                "--num-workers", "0", "--no-progress", *sets(TINY[:3]), *args]
    return build


def perf(*args: str) -> Callable[[World, Path], list[str]]:
    def build(world: World, case: Path) -> list[str]:
        return ["perf/perf_main.py", *args]
    return build


def with_setup(setup: Callable[[World, Path], None], command: Callable[[World, Path], list[str]]):
    def build(world: World, case: Path) -> list[str]:
        setup(world, case)
        return command(world, case)
    return build


def folder_copy(world: World, case: Path) -> Path:
    """A private copy of the folder dataset (case/datasets/widget) that a case may damage."""
    target = case / "datasets" / "widget"
    make_folder_tree(target)
    return target


def train_own_folder(*args: str, damage: Callable[[Path], None] = lambda base: None):
    def build(world: World, case: Path) -> list[str]:
        damage(folder_copy(world, case))
        return ["train.py", "folder", "--category", "widget", *args, "--datasets-folder", str(case / "datasets"),
                "--results-path", str(case / "results"), "--device", "cpu", "--no-progress", "--no-figures",
                *sets(TINY)]
    return build


def eval_with_checkpoint(make: Callable[[World, Path], None], *args: str):
    """eval.py on a private weights folder whose weights.pt `make` writes."""
    def build(world: World, case: Path) -> list[str]:
        path = case / "weights" / "0" / "folder" / "widget" / "1" / "weights.pt"
        path.parent.mkdir(parents=True, exist_ok=True)
        make(world, path)
        command = eval_(*args)(world, case)
        command[command.index("--weights-path") + 1] = str(case / "weights")
        return command
    return build


def torch_save(value_of: Callable[[World], object]) -> Callable[[World, Path], None]:
    def make(world: World, path: Path) -> None:
        import torch

        torch.save(value_of(world), path)
    return make


def bytes_of(data: bytes | Callable[[World], bytes]) -> Callable[[World, Path], None]:
    def make(world: World, path: Path) -> None:
        path.write_bytes(data(world) if callable(data) else data)
    return make


class RunsShell:
    """A pickle that would run a shell command when loaded (it must never be)."""

    def __reduce__(self):
        return (os.system, ("touch /tmp/ssn_pwned",))


def malicious_pickle() -> bytes:
    return pickle.dumps(RunsShell(), protocol=2)


def malicious_torch_file(world: World) -> bytes:
    import torch

    buffer = io.BytesIO()
    torch.save({"feature_adaptor.projection.weight": RunsShell()}, buffer)
    return buffer.getvalue()


def backbone_weights_file(make: Callable[[], object], name: str = "backbone.pth"):
    """A case setup that writes `make()` with torch.save as case/<name> (a backbone_weights file)."""
    def setup(world: World, case: Path) -> None:
        import torch

        torch.save(make(), case / name)
    return setup


def resnet34_state() -> dict:
    import torchvision

    return torchvision.models.resnet34().state_dict()


def train_with_backbone_file(*settings: str, name: str = "backbone.pth"):
    """train.py with `settings` and backbone_weights=case/<name> (pretrained=true)."""
    def build(world: World, case: Path) -> list[str]:
        return train("mvtec", *sets([*settings, "pretrained=true", f"backbone_weights={case / name}"]))(world, case)
    return build


def good_checkpoint_with_card(card_text: str) -> Callable[[World, Path], None]:
    """A valid weights.pt with a model.yaml beside it that holds `card_text`."""
    def make(world: World, path: Path) -> None:
        torch_save(lambda w: w.good_state)(world, path)
        (path.parent / "model.yaml").write_text(card_text)
    return make


def checkpoint_with_made_card(edit: Callable[[dict], None], folder: str = "1"):
    """eval.py on a valid weights.pt in weights/0/folder/widget/<folder>/ beside a card that training
    would write (journal, the tiny settings), then changed by `edit` (a dict edit; the card is then
    written as it stands, digests and all, unless `edit` changes them too)."""
    def build(world: World, case: Path) -> list[str]:
        import torch
        import yaml

        from common.config import build_config
        from model.card import make_card, write_model_card
        from model.supersimplenet import SuperSimpleNet

        weights = case / "weights" / "0" / "folder" / "widget" / folder / "weights.pt" if folder else \
            case / "weights" / "0" / "folder" / "widget" / "weights.pt"
        weights.parent.mkdir(parents=True, exist_ok=True)
        torch.save(world.good_state, weights)
        config = build_config("folder", overrides=TINY)
        model = SuperSimpleNet.from_config((64, 64), config)
        write_model_card(weights.parent, make_card(config, model, "folder", "widget", "random"))
        card_path = weights.parent / "model.yaml"
        card = yaml.safe_load(card_path.read_text())
        edit(card)
        card_path.write_text(yaml.safe_dump(card, sort_keys=False))
        command = eval_()(world, case)
        command[command.index("--weights-path") + 1] = str(case / "weights")
        return command
    return build


def other_weights_digest(card: dict) -> None:
    card["weights_sha256"] = "0" * 64  # the card of another model, copied beside these weights


def backbone_twice(card: dict) -> None:
    card["backbone"] = "resnet34"  # settings.backbone still says resnet18


def export_(*args: str) -> Callable[[World, Path], list[str]]:
    def build(world: World, case: Path) -> list[str]:
        return ["export.py", "--weights", str(world.checkpoint), *args]
    return build


def truncated_checkpoint(world: World) -> bytes:
    data = world.checkpoint.read_bytes()
    return data[: len(data) // 2]


def nan_state(world: World) -> dict:
    return {k: v.clone().fill_(float("nan")) if v.is_floating_point() else v for k, v in world.good_state.items()}


def misshaped_state(world: World) -> dict:
    import torch

    state = dict(world.good_state)
    key = next(iter(state))
    state[key] = torch.zeros(3, 3)
    return state


def existing_results(case: Path) -> None:
    """Results of an earlier evaluation and training, which a failed run must leave as they are."""
    for relative in ("results/results_avg_std.json", "results/0/1/folder/last.csv",
                     "results/superSimpleNet/folder/1/last.csv"):
        path = case / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"earlier results in {relative}\n")


def write_text(relative: str, text: str | bytes):
    def setup(world: World, case: Path) -> None:
        path = case / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return setup


def with_file_in_the_way(world: World, case: Path) -> None:
    (case / "a_file").write_text("a file, not a folder\n")


def in_case(relative: str) -> Callable[[World, Path], str]:
    return lambda world, case: str(case / relative)


def command_with(build: Callable[[World, Path], list[str]], option: str, value: Callable[[World, Path], str]):
    """`build`'s command with `option` set to a per-case path (replaced when present)."""
    def built(world: World, case: Path) -> list[str]:
        command = build(world, case)
        if option in command:
            command[command.index(option) + 1] = value(world, case)
        else:
            command += [option, value(world, case)]
        return command
    return built


def archive_with(members: dict[str, bytes], name: str, traversal: bool = False):
    """A tar.xz (or zip) archive with `members`; `traversal` adds a member that climbs out."""
    def setup(world: World, case: Path) -> None:
        path = case / name
        if name.endswith(".zip"):
            with zipfile.ZipFile(path, "w") as archive:
                for member, data in members.items():
                    archive.writestr(member, data)
            return
        with tarfile.open(path, "w:xz") as archive:
            entries = dict(members)
            if traversal:
                entries["../../escaped.txt"] = b"outside"
            for member, data in entries.items():
                info = tarfile.TarInfo(member)
                info.size = len(data)
                archive.addfile(info, io.BytesIO(data))
    return setup


def setup_script(script: str, *args: str, setup: Callable[[World, Path], None] | None = None):
    def build(world: World, case: Path) -> list[str]:
        if setup is not None:
            setup(world, case)
        return [f"datamodules/setup/{script}", "--datasets-folder", str(case / "datasets"),
                *[a.replace("{case}", str(case)) for a in args]]
    return build


def ksdd2_with_split(content: bytes) -> Callable[[World, Path], list[str]]:
    """A KolektorSDD2 tree whose split_weakly_246.pyb holds `content`; train.py ksdd2 on it."""
    def build(world: World, case: Path) -> list[str]:
        root = case / "datasets" / "KolektorSDD2"
        for part, first in (("train", 10000), ("test", 20000)):
            for sample_id in range(first, first + 3):
                write_image(root / part / f"{sample_id}.png", seed=sample_id)
                write_mask(root / part / f"{sample_id}_GT.png", defect=sample_id == first + 2)
        for n in (0, 16, 53, 126, 246):
            (root / f"split_weakly_{n}.pyb").write_bytes(content)
        return ["train.py", "ksdd2", "--datasets-folder", str(case / "datasets"), "--results-path",
                str(case / "results"), "--device", "cpu", "--no-progress", "--no-figures", *sets(TINY)]
    return build


def unreadable_image(base: Path) -> None:
    (base / "good" / "g1.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")


def truncated_image(base: Path) -> None:
    path = base / "good" / "g2.png"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])


def empty_image(base: Path) -> None:
    (base / "good" / "g3.png").write_bytes(b"")


def mis_sized_mask(base: Path) -> None:
    write_mask(base / "masks" / "d0.png", defect=True, height=10, width=12)


def unreadable_mask(base: Path) -> None:
    (base / "masks" / "d1.png").write_bytes(b"garbage")


def no_good_images(base: Path) -> None:
    for path in (base / "good").iterdir():
        path.unlink()


def no_layout(base: Path) -> None:
    (base / "good").rename(base / "normal")


def mvtec_without_mask(world: World, case: Path) -> None:
    make_mvtec_category(case / "datasets" / "mvtec" / "bottle")
    (case / "datasets" / "mvtec" / "bottle" / "ground_truth" / "hole" / "001_mask.png").unlink()


def mvtec_mis_sized_mask(world: World, case: Path) -> None:
    make_mvtec_category(case / "datasets" / "mvtec" / "bottle")
    write_mask(case / "datasets" / "mvtec" / "bottle" / "ground_truth" / "hole" / "000_mask.png", defect=True,
               height=10, width=10)


def icpr_layout_checkpoint(world: World, path: Path) -> None:
    """The good checkpoint, without a card, placed in the ICPR layout (no <ratio>/ folder)."""
    torch_save(lambda w: w.good_state)(world, path.parent.parent / "weights.pt")


def mvtec_command(world: World, case: Path) -> list[str]:
    return ["train.py", "mvtec", "--category", "bottle", "--datasets-folder", str(case / "datasets"),
            "--results-path", str(case / "results"), "--device", "cpu", "--no-progress", "--no-figures", *sets(TINY)]


CASES = [
    # --- settings (train.py) ---
    Case("set-noise_std-negative", train("mvtec", "--set", "noise_std=-1"), ("noise_std", "> 0")),
    Case("set-patch_size-even", train("mvtec", "--set", "patch_size=2"), ("patch_size", "odd")),
    Case("set-seg_lr-negative", train("mvtec", "--set", "seg_lr=-0.1"), ("seg_lr", "> 0")),
    Case("set-gamma-negative", train("mvtec", "--set", "gamma=-5"), ("gamma", "(0, 1]")),
    Case("set-perlin_thr-too-large", train("mvtec", "--set", "perlin_thr=5"), ("perlin_thr", "[-1, 1)")),
    Case("set-no_anomaly-bogus", train("mvtec", "--set", "no_anomaly=bogus"), ("no_anomaly", "empty, full, none")),
    Case("set-epochs-not-a-number", train("mvtec", "--set", "epochs=abc"), ("'epochs' must be int",)),
    Case("set-unknown-key", train("mvtec", "--set", "epoch=3"), ("unknown setting 'epoch'",)),
    Case("set-without-equals", train("mvtec", "--set", "epochs"), ("expected key=value",)),
    Case("set-broken-yaml-value", train("mvtec", "--set", "image_size=[64,"), ("not valid YAML",)),
    Case("set-image-size-too-small", train("mvtec", "--set", "image_size=[8,8]"), ("image_size", ">= 32")),
    Case("set-with-a-line-break", train("mvtec", "--set", "epochs\n3"), ("expected key=value",)),
    Case("set-version-as-setting", train("mvtec", "--set", "version=icpr"), ("--version",)),
    Case("config-broken-yaml", with_setup(write_text("bad.yaml", "epochs: [1\n"), command_with(
        train("mvtec"), "--config", in_case("bad.yaml"))), ("bad.yaml", "not valid YAML")),
    Case("config-not-a-mapping", with_setup(write_text("list.yaml", "- epochs\n- 3\n"), command_with(
        train("mvtec"), "--config", in_case("list.yaml"))), ("list.yaml", "mapping")),
    Case("config-not-utf8", with_setup(write_text("binary.yaml", b"\xff\xfe\x00epochs"), command_with(
        train("mvtec"), "--config", in_case("binary.yaml"))), ("binary.yaml", "UTF-8")),
    Case("config-missing", command_with(train("mvtec"), "--config", in_case("absent.yaml")), ("absent.yaml",)),
    Case("config-duplicate-key", with_setup(write_text("twice.yaml", "epochs: 3\nbatch: 4\nepochs: 5\n"), command_with(
        train("mvtec"), "--config", in_case("twice.yaml"))), ("twice.yaml", "'epochs' is given twice", "lines 1 and 3")),
    Case("set-seed-beyond-numpy", train("mvtec", "--set", "seed=99999999999999999999"), ("seed", "4294967295")),
    Case("set-seed-plus-run-id-beyond-numpy", train("mvtec", "--set", "seed=4294967295", "--run-id", "1"),
         ("seed", "run id 1", "4294967294")),
    Case("set-setup-name-climbs-out", train("mvtec", "--set", "setup_name=../elsewhere"), ("setup_name", "plain name")),
    Case("config-unknown-key", with_setup(write_text("typo.yaml", "epoch: 3\n"), command_with(
        train("mvtec"), "--config", in_case("typo.yaml"))), ("typo.yaml", "unknown setting 'epoch'")),
    # --- backbones and their weights files (train.py; docs/backbones.md) ---
    Case("timm-unknown-name", train("mvtec", *sets(["backbone=timm:resnet_18", "layers=[2,3]"])),
         ("timm:resnet_18 is not a timm model", "resnet18")),
    Case("timm-unknown-name-found-before-the-dataset", command_with(train(
        "mvtec", *sets(["backbone=timm:resnet_18", "layers=[2,3]"])), "--datasets-folder", in_case("nowhere")),
        ("timm:resnet_18 is not a timm model",)),  # checked before the (absent) dataset is looked for
    Case("timm-index-out-of-range", train("mvtec", *sets(["backbone=timm:resnet18", "layers=[2,7]"])),
         ("layers [2, 7] do not fit", "4 (512 ch, stride 32)")),
    Case("timm-index-repeated", train("mvtec", *sets(["backbone=timm:resnet18", "layers=[2,2]"])),
         ("layers", "distinct feature indices")),
    Case("timm-layer-names", train("mvtec", "--set", "backbone=timm:efficientnet_b0"),
         ("backbone=timm:efficientnet_b0", "feature indices")),
    Case("backbone-weights-missing", train_with_backbone_file("backbone=timm:resnet18", "layers=[2,3]"),
         ("backbone_weights file", "backbone.pth: not found")),
    Case("backbone-weights-malicious", with_setup(
        backbone_weights_file(lambda: {"conv1.weight": RunsShell()}),
        train_with_backbone_file("backbone=resnet18")), ("backbone.pth", "refused")),
    Case("backbone-weights-of-another-model", with_setup(
        backbone_weights_file(resnet34_state), train_with_backbone_file("backbone=resnet18")),
        ("backbone.pth does not fit", "unexpected key")),
    Case("backbone-weights-with-random", train("mvtec", *sets(["backbone_weights=x.pth"])),
         ("backbone_weights", "pretrained=false")),
    # --- options (train.py) ---
    Case("run-id-negative", train("mvtec", "--run-id", "-1"), ("--run-id",)),
    Case("run-id-twice", train("mvtec", "--run-id", "1", "1"), ("twice",)),
    Case("run-id-not-a-number", train("mvtec", "--run-id", "abc"), ("--run-id", "abc")),
    Case("version-unknown", train("mvtec", "--version", "v3"), ("--version", "v3")),
    Case("dataset-unknown", train("imagenet"), ("imagenet",)),
    Case("device-cuda-without-cuda", command_with(train("mvtec"), "--device", lambda w, c: "cuda"),
         ("--device cuda", "no CUDA"), needs_no_cuda=True),
    Case("device-unknown", command_with(train("mvtec"), "--device", lambda w, c: "tpu"), ("--device tpu",)),
    Case("results-path-empty", command_with(train("folder", "--category", "widget"), "--results-path",
                                            lambda w, c: ""), ("--results-path", "empty path")),
    Case("datasets-folder-empty", command_with(train("mvtec"), "--datasets-folder", lambda w, c: ""),
         ("--datasets-folder", "empty path")),
    Case("results-path-is-a-file", with_setup(with_file_in_the_way, command_with(
        train("folder", "--category", "widget"), "--results-path", in_case("a_file"))), ("--results-path", "a_file")),
    Case("results-path-under-a-file", with_setup(with_file_in_the_way, command_with(
        train("folder", "--category", "widget"), "--results-path", in_case("a_file/sub"))),
        ("--results-path", "a_file")),
    # --- datasets (train.py) ---
    Case("mvtec-not-prepared", command_with(train("mvtec"), "--datasets-folder", in_case("nowhere")),
         ("MVTec AD not found", "prepare_mvtec.py")),
    Case("mvtec-unknown-category", train("mvtec", "--category", "nope"), ("unknown mvtec categories",)),
    Case("mvtec-category-absent", train("mvtec", "--category", "cable"), ("category 'cable' not found",)),
    Case("mvtec-mask-missing", with_setup(mvtec_without_mask, mvtec_command), ("001_mask.png", "missing")),
    Case("mvtec-mask-size-mismatch", with_setup(mvtec_mis_sized_mask, mvtec_command),
         ("000_mask.png", "must have the size of their image")),
    Case("folder-without-category", train("folder"), ("--category",)),
    Case("folder-category-climbs-out", lambda w, c: [  # would train on ../../widget and write outside the results
        "train.py", "folder", "--category", "../../widget", "--datasets-folder", str(w.datasets / "widget" / "good"),
        "--results-path", str(c / "results"), "--device", "cpu", "--no-progress", *sets(TINY)],
        ("--category", "'../../widget'", "plain name")),
    Case("folder-category-hidden", train("folder", "--category", ".widget"), ("--category", "plain name")),
    Case("folder-category-absent", train("folder", "--category", "absent"), ("absent not found",)),
    Case("folder-no-layout", train_own_folder(damage=no_layout), ("neither train/good/",)),
    Case("folder-no-good-images", train_own_folder(damage=no_good_images), ("no good training images",)),
    Case("folder-unreadable-image", train_own_folder(damage=unreadable_image), ("unreadable image good/g1.png",)),
    Case("folder-truncated-image", train_own_folder(damage=truncated_image), ("unreadable image good/g2.png",)),
    Case("folder-empty-image-file", train_own_folder(damage=empty_image), ("unreadable image good/g3.png",)),
    Case("folder-mask-size-mismatch", train_own_folder(damage=mis_sized_mask), ("masks/d0.png is 12x10",)),
    Case("folder-unreadable-mask", train_own_folder(damage=unreadable_mask), ("unreadable mask masks/d1.png",)),
    Case("ksdd2-malicious-split-file", ksdd2_with_split(malicious_pickle()), ("split_weakly_246.pyb",)),
    Case("ksdd2-truncated-split-file", ksdd2_with_split(pickle.dumps(([(10000, True)], [(20000, True)]))[:-5]),
         ("split_weakly_246.pyb", "truncated")),
    Case("ksdd2-mis-shaped-split-file", ksdd2_with_split(pickle.dumps([[(10000, True)]])),
         ("split_weakly_246.pyb", "(train, test)")),
    # --- checkpoints (eval.py) ---
    Case("eval-checkpoint-missing", command_with(eval_(), "--weights-path", in_case("no_weights")),
         ("weights.pt not found", "weights/README.md")),
    Case("eval-icpr-layout-checkpoint-as-journal", eval_with_checkpoint(icpr_layout_checkpoint),
         ("widget/1/weights.pt not found", "widget/weights.pt is there", "--version icpr")),
    Case("eval-checkpoint-garbage", eval_with_checkpoint(bytes_of(b"not a checkpoint at all")), ("weights.pt",)),
    Case("eval-checkpoint-truncated", eval_with_checkpoint(bytes_of(truncated_checkpoint)), ("weights.pt", "corrupt")),
    Case("eval-checkpoint-empty-file", eval_with_checkpoint(bytes_of(b"")), ("weights.pt",)),
    Case("eval-checkpoint-malicious-pickle", eval_with_checkpoint(bytes_of(malicious_pickle())), ("weights.pt",)),
    Case("eval-checkpoint-malicious-torch-file", eval_with_checkpoint(bytes_of(malicious_torch_file)),
         ("weights.pt",)),
    Case("eval-checkpoint-not-a-dict", eval_with_checkpoint(torch_save(lambda w: list(w.good_state.values()))),
         ("not a state dict",)),
    Case("eval-checkpoint-missing-keys",
         eval_with_checkpoint(torch_save(lambda w: dict(list(w.good_state.items())[1:]))),
         ("missing keys",)),
    Case("eval-checkpoint-mis-shaped", eval_with_checkpoint(torch_save(misshaped_state)), ("has shape (3, 3)",)),
    Case("eval-checkpoint-nan", eval_with_checkpoint(torch_save(nan_state)), ("non-finite",)),
    Case("eval-model-card-broken", eval_with_checkpoint(good_checkpoint_with_card("a: [\n")), ("model.yaml",)),
    Case("eval-model-card-foreign", eval_with_checkpoint(good_checkpoint_with_card("- 1\n")),
         ("model.yaml", "not a SuperSimpleNet model.yaml")),
    Case("eval-results-path-under-a-file", with_setup(with_file_in_the_way, command_with(
        eval_(), "--results-path", in_case("a_file/sub"))), ("a_file",)),
    Case("eval-batch-zero", eval_("--batch", "0"), ("--batch",)),
    Case("eval-category-climbs-out", eval_("--category", "../widget"), ("--category", "plain name")),
    Case("eval-model-card-of-other-weights", checkpoint_with_made_card(other_weights_digest),
         ("model.yaml", "describes other weights", "weights.pt")),
    Case("eval-model-card-contradicts-itself", checkpoint_with_made_card(backbone_twice),
         ("model.yaml", "contradicts itself", "backbone", "settings.backbone")),
    Case("eval-journal-card-in-icpr-layout", checkpoint_with_made_card(lambda card: None, folder=""),
         ("says version jims", "widget/1/weights.pt", "move")),
    Case("eval-journal-card-in-icpr-layout-as-icpr", command_with(
        checkpoint_with_made_card(lambda card: None, folder=""), "--version", lambda w, c: "icpr"),
        ("--version icpr layout", "says version jims", "widget/1/weights.pt")),
    # --- export.py ---
    Case("export-output-under-a-file", with_setup(with_file_in_the_way, lambda w, c: export_(
        "--format", "torchscript", "--output", str(c / "a_file" / "m.pt"))(w, c)), ("--output", "a_file")),
    Case("export-output-suffix-of-another-format", lambda w, c: export_(
        "--format", "onnx", "--output", str(c / "model.pt"))(w, c), ("--output", "onnx export is a .onnx file")),
    Case("export-output-is-a-folder", lambda w, c: (c.joinpath("out.onnx").mkdir(), export_(
        "--format", "onnx", "--output", str(c / "out.onnx"))(w, c))[1], ("--output", "is a folder")),
    Case("export-weights-empty-path", export_("--format", "onnx", "--weights", ""), ("--weights", "empty path")),
    # --- predict.py ---
    Case("predict-max-pixels-zero", lambda w, c: ["predict.py", "--weights", str(w.checkpoint), str(c),
                                                   "--output", str(c / "out"), "--max-pixels", "0"],
         ("--max-pixels",)),
    Case("eval-version-unknown", eval_("--version", "v3"), ("--version", "v3")),
    Case("eval-device-cuda-without-cuda", eval_("--device", "cuda"), ("--device cuda",), needs_no_cuda=True),
    Case("eval-bad-setting", eval_("--set", "gamma=-5"), ("gamma",)),
    # --- perf/perf_main.py ---
    Case("perf-gpu-model-path", perf("../escape", "--device", "cpu"), ("gpu_model",)),
    Case("perf-reps-zero", perf("cpu", "--device", "cpu", "--reps", "0"), ("--reps",)),
    Case("perf-one-cycle", perf("cpu", "--device", "cpu", "--cycles", "1"), ("--cycles",)),
    Case("perf-image-size-too-small", perf("cpu", "--device", "cpu", "--image-size", "8", "8"), ("--image-size",)),
    Case("perf-weights-missing", perf("cpu", "--device", "cpu", "--weights", "/nonexistent/weights.pt"),
         ("--weights",)),
    Case("perf-device-cuda-without-cuda", perf("cpu", "--device", "cuda"), ("--device cuda",), needs_no_cuda=True),
    Case("perf-check-without-fast-path", perf("cpu", "--device", "cpu", "--check", "--path", "reference"),
         ("--check",)),
    Case("perf-output-dir-under-a-file", with_setup(with_file_in_the_way, lambda w, c: [
        "perf/perf_main.py", "cpu", "--device", "cpu", "--output-dir", str(c / "a_file" / "sub")]), ("--output-dir",)),
    Case("perf-precision-unknown", perf("cpu", "--device", "cpu", "--precision", "fp64"), ("fp64",)),
    # --- perf/bench_backbones.py ---
    Case("bench-backbones-unknown", lambda w, c: ["perf/bench_backbones.py", "--backbones", "resnet18", "timm:nope_net",
                                                  "--output", str(c / "out.csv")], ("timm:nope_net is not a timm model",)),
    Case("bench-backbones-reps-zero", lambda w, c: ["perf/bench_backbones.py", "--reps", "0"], ("--reps",)),
    # --- dataset preparation scripts ---
    Case("prepare-mvtec-archive-missing", setup_script("prepare_mvtec.py", "--archive", "{case}/absent.tar.xz"),
         ("absent.tar.xz",)),
    Case("prepare-mvtec-archive-garbage", setup_script(
        "prepare_mvtec.py", "--archive", "{case}/garbage.tar.xz",
        setup=write_text("garbage.tar.xz", b"this is not an xz archive")), ("garbage.tar.xz",)),
    Case("prepare-mvtec-archive-traversal", setup_script(
        "prepare_mvtec.py", "--archive", "{case}/evil.tar.xz",
        setup=archive_with({"bottle/train/good/000.png": b"x"}, "evil.tar.xz", traversal=True)), ("evil.tar.xz",)),
    Case("prepare-mvtec-archive-incomplete", setup_script(
        "prepare_mvtec.py", "--archive", "{case}/partial.tar.xz",
        setup=archive_with({"bottle/train/good/000.png": b"x"}, "partial.tar.xz")), ("lacks the categories",)),
    Case("prepare-mvtec-archive-unknown-type", setup_script(
        "prepare_mvtec.py", "--archive", "{case}/data.rar", setup=write_text("data.rar", b"Rar!")),
        ("unknown archive type",)),
    Case("prepare-mvtec-datasets-folder-under-a-file", lambda w, c: (with_file_in_the_way(w, c), [
        "datamodules/setup/prepare_mvtec.py", "--datasets-folder", str(c / "a_file" / "sub"),
        "--archive", str(c / "absent.tar.xz")])[1], ("a_file",)),
    Case("prepare-ksdd2-splits-dir-missing", setup_script("prepare_ksdd2.py", "--splits-dir", "{case}/nosplits"),
         ("--splits-dir",)),
    Case("prepare-ksdd2-malicious-split", setup_script(
        "prepare_ksdd2.py", "--splits-dir", "{case}/splits",
        setup=write_text("splits/split_weakly_16.pyb", malicious_pickle())), ("split_weakly_16.pyb",)),
    Case("prepare-sensum-source-missing", setup_script("prepare_sensum.py", "--source", "{case}/nosource"),
         ("nosource",)),
    Case("prepare-visa-archive-zip-traversal", setup_script(
        "prepare_visa.py", "--archive", "{case}/VisA.zip",
        setup=archive_with({"../escaped.txt": b"outside"}, "VisA.zip")), ("VisA.zip",)),
    Case("prepare-unknown-option", setup_script("prepare_mvtec.py", "--bogus"), ("--bogus",)),
]


# ---------------------------------------------------------------- running and checking


@dataclass
class Outcome:
    returncode: int
    stdout: str
    stderr: str
    before: dict[str, str]  # file (relative to the case folder) -> sha256, before the run
    after: dict[str, str]


def snapshot(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


# A started Python that has imported the heavy libraries (torch, torchvision, timm, numpy, OpenCV, YAML;
# no module of this repository) and, for each command, forks a child that runs the script as
# `python <script> <args>` would: `__main__`, sys.argv, sys.path[0] the script's folder, cwd the
# repository, its own stdout/stderr files; an uncaught exception prints its traceback and exits 1.
# A torch import costs seconds of CPU, and this pays it once per worker instead of once per case.
# SSN_BAD_INPUTS_PLAIN=1 runs every case as a plain `sys.executable <script>` subprocess instead;
# test_forked_and_plain_runs_agree checks that the two agree.
ZYGOTE = r"""
import atexit, json, os, runpy, signal, sys, traceback
import cv2, numpy, timm, torch, torchvision, yaml  # noqa: F401
base_path = list(sys.path[1:])
for line in sys.stdin:
    request = json.loads(line)
    sys.stdout.flush(); sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            signal.alarm(int(os.environ["SSN_CASE_TIMEOUT_S"]))  # a hanging case dies, and says so
            out = os.open(request["out"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
            err = os.open(request["err"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
            os.dup2(out, 1); os.dup2(err, 2)
            os.chdir(request["cwd"])
            script = os.path.abspath(request["argv"][0])
            sys.argv = list(request["argv"])
            sys.path[:] = [os.path.dirname(script), *base_path]
            try:
                runpy.run_path(script, run_name="__main__")
                code = 0
            except SystemExit as stop:
                if stop.code is None or isinstance(stop.code, int):
                    code = stop.code or 0
                else:
                    print(stop.code, file=sys.stderr)
            except BaseException:
                traceback.print_exc()
            atexit._run_exitfuncs()
        finally:
            try:
                sys.stdout.flush(); sys.stderr.flush()
            finally:
                os._exit(code)
    _, status = os.waitpid(pid, 0)
    code = os.waitstatus_to_exitcode(status)
    sys.stdout.write(json.dumps({"rc": code}) + "\n"); sys.stdout.flush()
"""


def case_env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "SSN_CASE_TIMEOUT_S": str(CASE_TIMEOUT_S)}


class Zygote:
    """One forking runner process (see ZYGOTE); `run` is not thread-safe: one per worker thread."""

    def __init__(self):
        self.process = subprocess.Popen([sys.executable, "-c", ZYGOTE], cwd=REPO, env=case_env(), text=True,
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE)

    def run(self, command: list[str], folder: Path) -> tuple[int, str, str]:
        out, err = folder.parent / f"{folder.name}.out", folder.parent / f"{folder.name}.err"
        request = {"argv": command, "cwd": str(REPO), "out": str(out), "err": str(err)}
        self.process.stdin.write(json.dumps(request) + "\n")
        self.process.stdin.flush()
        reply = self.process.stdout.readline()
        if not reply:
            raise RuntimeError("the forking runner died")
        return json.loads(reply)["rc"], out.read_text(errors="replace"), err.read_text(errors="replace")

    def close(self) -> None:
        self.process.stdin.close()
        self.process.wait(timeout=60)


def run_plain(command: list[str], folder: Path) -> tuple[int, str, str]:
    result = subprocess.run([sys.executable, *command], cwd=REPO, capture_output=True, text=True,
                            timeout=CASE_TIMEOUT_S, env=case_env())
    return result.returncode, result.stdout, result.stderr


def run_case(world: World, case: Case, runner: Callable[[list[str], Path], tuple[int, str, str]]) -> Outcome:
    """Build the case's input in its own folder, run it, and snapshot that folder before and after."""
    folder = world.case_dir(case.name)
    existing_results(folder)
    try:
        command = case.build(world, folder)
    except Exception as error:  # a broken case fails its own test, not the whole table
        return Outcome(-1, "", f"the case could not be built: {error!r}", {}, {})
    before = snapshot(folder)
    returncode, stdout, stderr = runner(command, folder)
    return Outcome(returncode, stdout, stderr, before, snapshot(folder))


def run_cases(world: World, cases: list[Case]) -> dict[str, Outcome]:
    """Every case, run once, PARALLEL_CASES at a time, each worker with its own forking runner."""
    if os.environ.get("SSN_BAD_INPUTS_PLAIN") == "1":
        with ThreadPoolExecutor(max_workers=PARALLEL_CASES) as pool:
            futures = {case.name: pool.submit(run_case, world, case, run_plain) for case in cases}
            return {name: future.result() for name, future in futures.items()}
    pending = list(reversed(cases))
    results: dict[str, Outcome] = {}
    lock = threading.Lock()

    def worker() -> None:
        zygote = Zygote()
        try:
            while True:
                with lock:
                    if not pending:
                        return
                    case = pending.pop()
                results[case.name] = run_case(world, case, zygote.run)
        finally:
            zygote.close()

    with ThreadPoolExecutor(max_workers=PARALLEL_CASES) as pool:
        for future in [pool.submit(worker) for _ in range(min(PARALLEL_CASES, len(cases)))]:
            future.result()
    return results


@pytest.fixture(scope="module")
def outcomes(world, request) -> dict[str, Outcome]:
    """The outcome of every case this session selected (`-k nan` runs only the matching cases)."""
    wanted = set()
    for item in request.session.items:
        params = getattr(getattr(item, "callspec", None), "params", {})
        if isinstance(params.get("case"), Case):  # other test files may name a parameter "case" too
            wanted.add(params["case"].name)
        elif item.name == "test_forked_and_plain_runs_agree":
            wanted.update(AGREEMENT_CASES)
    return run_cases(world, [case for case in CASES if case.name in wanted])


def cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def assert_one_line_error(outcome: Outcome, fragments: tuple[str, ...]) -> None:
    shown = f"exit {outcome.returncode}\nstderr:\n{outcome.stderr[-3000:]}"
    assert "Traceback" not in outcome.stderr, shown
    lines = [line for line in outcome.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), shown
    assert outcome.returncode == 2, shown
    for fragment in fragments:
        assert fragment in lines[0], shown


def assert_outputs_untouched(outcome: Outcome) -> None:
    changed = [name for name, digest in outcome.before.items() if outcome.after.get(name) != digest]
    assert not changed, f"changed or lost: {changed}"
    new = sorted(set(outcome.after) - set(outcome.before))
    assert not new, f"new files after a failed run: {new}"
    assert not [name for name in outcome.after if name.endswith(".tmp") or ".part" in name]


AGREEMENT_CASES = ("run-id-negative", "set-gamma-negative", "folder-unreadable-image", "eval-checkpoint-nan")


def test_forked_and_plain_runs_agree(world, outcomes, monkeypatch):
    """A few cases (failing before torch is imported, after it, in the data check and after a model
    ran) give the same exit code and stderr as plain `sys.executable <script>` subprocesses."""
    monkeypatch.setenv("SSN_BAD_INPUTS_PLAIN", "1")
    plain_world = World(world.root / "plain", world.datasets, world.weights, world.good_state)
    plain = run_cases(plain_world, [case for case in CASES if case.name in AGREEMENT_CASES])
    for name in AGREEMENT_CASES:
        forked = outcomes[name]
        shown = f"{name}\nplain:  {plain[name].stderr!r}\nforked: {forked.stderr!r}"
        assert plain[name].returncode == forked.returncode == 2, shown
        assert plain[name].stderr.replace("/plain/cases/", "/cases/") == forked.stderr, shown


def test_there_are_enough_cases():
    assert len(CASES) >= 40
    assert len({case.name for case in CASES}) == len(CASES)


@pytest.mark.parametrize("case", [
    pytest.param(case, id=case.name, marks=[pytest.mark.xfail(strict=True, reason=case.xfail)] if case.xfail else [])
    for case in CASES
])
def test_bad_input_gives_one_error_line_and_keeps_outputs(case, outcomes):
    if case.needs_no_cuda and cuda_available():
        pytest.skip("this machine has CUDA")
    outcome = outcomes[case.name]
    assert_one_line_error(outcome, case.fragments)
    assert_outputs_untouched(outcome)
    assert not Path("/tmp/ssn_pwned").exists(), "a malicious pickle ran code"


# ---------------------------------------------------------------- masks read silently wrong


def write_stored_mask(path: Path, stored: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), stored)
    return path


def stored_masks() -> dict[str, np.ndarray]:
    """The same defect (rows 2-7, columns 3-12 of a 24 x 40 mask) stored five ways."""
    region = (slice(2, 8), slice(3, 13))
    masks = {}
    for name, dtype, value, channels in (("zero255", np.uint8, 255, 0), ("zero_one", np.uint8, 1, 0),
                                         ("sixteen", np.uint16, 1, 0), ("coloured", np.uint8, (40, 0, 200), 3),
                                         ("alpha", np.uint8, (0, 180, 0, 255), 4)):
        stored = np.zeros((24, 40, channels) if channels else (24, 40), dtype=dtype)
        stored[region] = value
        masks[name] = stored
    return masks


@pytest.fixture
def labelled_folder(tmp_path) -> Path:
    """A simple-layout folder whose five defects have masks stored five ways, plus one empty mask."""
    base = tmp_path / "parts"
    for i in range(6):
        write_image(base / "good" / f"g{i}.png", seed=i)
    for i, (name, stored) in enumerate(stored_masks().items()):
        write_image(base / "defect" / f"{name}.png", seed=100 + i)
        write_stored_mask(base / "masks" / f"{name}.png", stored)
    write_image(base / "defect" / "blank.png", seed=200)
    write_stored_mask(base / "masks" / "blank_mask.png", np.zeros((24, 40), np.uint8))
    return base


def test_folder_summary_says_how_masks_are_read_and_reports_empty_masks(labelled_folder):
    from datamodules.folder import validate_folder

    report = validate_folder(labelled_folder.parent, "parts").splitlines()
    assert ("masks: any non-zero pixel is defect; stored as 0/1 (1), 0/255 (2), 16-bit (1), colour (1), "
            "colour with alpha (1)") in report
    warning = [line for line in report if line.startswith("warning: 1 defect mask(s) are empty")]
    assert len(warning) == 1 and "defect-free" in warning[0]
    assert "  empty mask: masks/blank_mask.png (of defect/blank.png)" in report
    # the lines the earlier summary had keep their places
    assert report[6] == "image sizes (h x w): 24x40 (12)" and report[7].startswith("training: fully supervised")


def test_folder_without_empty_masks_has_no_warning(labelled_folder):
    from datamodules.folder import validate_folder

    (labelled_folder / "defect" / "blank.png").unlink()
    report = validate_folder(labelled_folder.parent, "parts")
    assert "empty mask" not in report and "masks: any non-zero pixel is defect" in report


def test_folder_samples_carry_the_nonzero_rule_and_published_ones_do_not(labelled_folder):
    from datamodules.base import Sample
    from datamodules.folder import load_folder

    split = load_folder(labelled_folder.parent, "parts", (24, 40))
    assert {s.mask_rule for s in split.train + split.test} == {"nonzero"}
    assert getattr(Sample("a.png", "", 0), "mask_rule", "published") == "published"


def test_folder_masks_train_and_test_as_defects_whatever_their_storage(labelled_folder):
    from datamodules.base import load_item
    from datamodules.folder import load_folder

    split = load_folder(labelled_folder.parent, "parts", (24, 40))
    expected = np.zeros((24, 40), np.float32)
    expected[2:8, 3:13] = 1.0
    defects = [s for s in split.train + split.test if s.label == 1 and s.mask_path and "blank" not in s.mask_path]
    assert len(defects) == 5
    for sample in defects:
        assert np.array_equal(load_item(sample, (24, 40))["mask"].numpy(), expected), sample.mask_path


def test_published_datasets_keep_mask_over_255(tmp_path):
    """MVTec-layout samples of the published datasets still read grayscale / 255 (a 0/1 mask stays ~empty)."""
    from datamodules.base import load_item
    from datamodules.mvtec import load_mvtec_layout

    base = make_mvtec_category(tmp_path / "bottle")
    stored = stored_masks()["zero_one"]
    write_stored_mask(base / "ground_truth" / "hole" / "000_mask.png", stored)
    split = load_mvtec_layout(base, "mvtec", "bottle", (24, 40))
    sample = next(s for s in split.test if s.mask_path.endswith("000_mask.png"))
    assert np.array_equal(load_item(sample, (24, 40))["mask"].numpy(), stored.astype(np.float32) / 255.0)
