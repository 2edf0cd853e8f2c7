"""The prepare_* scripts on tiny generated archives in the official layouts (no network)."""

import contextlib
import csv
import errno
import functools
import hashlib
import http.server
import io
import os
import fractions
import pickle
import shutil
import stat
import tarfile
import threading
import time
import zipfile
from pathlib import Path

import cv2
import numpy as np
import pytest

from common.errors import UserError
from datamodules.setup import prepare_ksdd2, prepare_mvtec, prepare_sensum, prepare_visa

VISA_TINY = {  # category -> (train normals, test normals, test anomalies)
    "candle": (3, 2, 2),
    "pcb1": (2, 1, 3),
}


def _write_jpg(path: Path, seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = np.random.default_rng(seed).integers(0, 256, (12, 16, 3), dtype=np.uint8)
    assert cv2.imwrite(str(path), image)


def _write_png(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), array)


def _zero_one_mask(seed: int) -> np.ndarray:
    mask = np.zeros((12, 16), dtype=np.uint8)
    mask[2 + seed % 3 : 7, 3 : 9 + seed % 4] = 1
    return mask


def make_raw_visa(root: Path) -> dict[str, np.ndarray]:
    """A VisA-archive-shaped tree (JPG images, 0/1 PNG masks, split_csv/1cls.csv); returns masks by output path."""
    rows, masks = [], {}
    seed = 0
    for category, (train_normal, test_normal, test_anomalous) in VISA_TINY.items():
        for index in range(train_normal + test_normal):
            seed += 1
            relative = f"{category}/Data/Images/Normal/{index:04d}.JPG"
            _write_jpg(root / relative, seed)
            rows.append([category, "train" if index < train_normal else "test", "normal", relative, ""])
        for index in range(test_anomalous):
            seed += 1
            relative = f"{category}/Data/Images/Anomaly/{index:03d}.JPG"
            mask_relative = f"{category}/Data/Masks/Anomaly/{index:03d}.png"
            _write_jpg(root / relative, seed)
            masks[f"{category}/ground_truth/bad/{index:03d}.png"] = _zero_one_mask(seed)
            _write_png(root / mask_relative, masks[f"{category}/ground_truth/bad/{index:03d}.png"])
            rows.append([category, "test", "anomaly", relative, mask_relative])
    (root / "split_csv").mkdir(parents=True)
    with open(root / "split_csv" / "1cls.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["object", "split", "label", "image", "mask"])
        writer.writerows(rows)
    return masks


def _tar_directory(source: Path, archive: Path, mode: str) -> Path:
    with tarfile.open(archive, mode) as tar:
        for child in sorted(source.iterdir()):
            tar.add(child, arcname=child.name)
    return archive


def test_build_visa_pytorch_layout_counts_and_masks(tmp_path):
    raw = tmp_path / "visa"
    masks = make_raw_visa(raw)
    counts = prepare_visa.build_visa_pytorch(raw, raw / "visa_pytorch")
    assert counts == {
        category: {"train/good": train, "test/good": test_good, "test/bad": test_bad}
        for category, (train, test_good, test_bad) in VISA_TINY.items()
    }
    out = raw / "visa_pytorch"
    for category, (train, test_good, test_bad) in VISA_TINY.items():
        assert len(list((out / category / "train" / "good").glob("*.JPG"))) == train
        assert len(list((out / category / "test" / "good").glob("*.JPG"))) == test_good
        assert len(list((out / category / "test" / "bad").glob("*.JPG"))) == test_bad
    # images are copied byte for byte, keeping name and extension
    assert (out / "candle/test/bad/001.JPG").read_bytes() == (raw / "candle/Data/Images/Anomaly/001.JPG").read_bytes()
    assert (out / "pcb1/train/good/0001.JPG").read_bytes() == (raw / "pcb1/Data/Images/Normal/0001.JPG").read_bytes()
    # one mask per anomalous image, named <image stem>.png, values 0/255 exactly where the source was 1
    assert sorted(str(p.relative_to(out)) for p in out.glob("*/ground_truth/bad/*")) == sorted(masks)
    for relative, source_mask in masks.items():
        stored = cv2.imread(str(out / relative), cv2.IMREAD_UNCHANGED)
        assert stored.dtype == np.uint8 and stored.ndim == 2
        np.testing.assert_array_equal(stored, source_mask * 255)
    assert [p.name for p in raw.iterdir() if p.name.startswith(".")] == []  # no staging left


def test_build_visa_pytorch_rejects_a_bad_csv(tmp_path):
    raw = tmp_path / "visa"
    make_raw_visa(raw)
    (raw / "split_csv" / "1cls.csv").write_text("object,split,image\ncandle,train,x.JPG\n")
    with pytest.raises(UserError, match="lacks columns label, mask"):
        prepare_visa.build_visa_pytorch(raw, raw / "visa_pytorch")
    assert not (raw / "visa_pytorch").exists()


def test_build_visa_pytorch_missing_image_leaves_no_output(tmp_path):
    raw = tmp_path / "visa"
    make_raw_visa(raw)
    (raw / "pcb1/Data/Images/Anomaly/002.JPG").unlink()
    with pytest.raises(UserError, match="002.JPG"):
        prepare_visa.build_visa_pytorch(raw, raw / "visa_pytorch")
    assert not (raw / "visa_pytorch").exists()


def test_prepare_visa_cli_from_archive(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(prepare_visa, "CATEGORIES", tuple(VISA_TINY))
    make_raw_visa(tmp_path / "raw")
    archive = _tar_directory(tmp_path / "raw", tmp_path / "VisA_20220922.tar", "w")
    datasets = tmp_path / "datasets"
    prepare_visa.main(["--datasets-folder", str(datasets), "--archive", str(archive)])
    out = datasets / "visa" / "visa_pytorch"
    assert (datasets / "visa" / "split_csv" / "1cls.csv").is_file()  # raw files stay
    assert len(list((out / "pcb1" / "test" / "bad").iterdir())) == 3
    assert archive.exists()  # a user's --archive is never deleted
    assert "VisA ready" in capsys.readouterr().out
    prepare_visa.main(["--datasets-folder", str(datasets)])
    assert "already prepared" in capsys.readouterr().out


def test_prepare_visa_cli_reports_missing_category(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(prepare_visa, "CATEGORIES", (*VISA_TINY, "cashew"))
    make_raw_visa(tmp_path / "datasets" / "visa")  # already extracted: no archive needed
    with pytest.raises(SystemExit) as exit_info:
        prepare_visa.main(["--datasets-folder", str(tmp_path / "datasets")])
    assert exit_info.value.code == 2
    assert "cashew" in capsys.readouterr().err


def make_mvtec_archive(tmp_path: Path, categories: tuple[str, ...]) -> Path:
    tree = tmp_path / "mvtec_tree"
    for index, category in enumerate(categories):
        _write_png(tree / category / "train" / "good" / "000.png", np.full((8, 8, 3), index, np.uint8))
        _write_png(tree / category / "test" / "good" / "000.png", np.zeros((8, 8, 3), np.uint8))
        _write_png(tree / category / "test" / "crack" / "000.png", np.ones((8, 8, 3), np.uint8))
        _write_png(tree / category / "ground_truth" / "crack" / "000_mask.png", np.full((8, 8), 255, np.uint8))
    (tree / "license.txt").write_text("license")
    return _tar_directory(tree, tmp_path / "mvtec_anomaly_detection.tar.xz", "w:xz")


def test_prepare_mvtec_cli_from_archive(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(prepare_mvtec, "CATEGORIES", ("bottle", "zipper"))
    archive = make_mvtec_archive(tmp_path, ("bottle", "zipper"))
    datasets = tmp_path / "datasets"
    prepare_mvtec.main(["--datasets-folder", str(datasets), "--archive", str(archive)])
    root = datasets / "mvtec"
    for category in ("bottle", "zipper"):
        assert (root / category / "train" / "good" / "000.png").is_file()
        assert (root / category / "test" / "crack" / "000.png").is_file()
        assert (root / category / "ground_truth" / "crack" / "000_mask.png").is_file()
    assert archive.exists()
    assert "MVTec AD ready" in capsys.readouterr().out
    prepare_mvtec.main(["--datasets-folder", str(datasets)])
    assert "already prepared" in capsys.readouterr().out


@pytest.fixture
def file_server(tmp_path):
    """Serves tmp_path/served on 127.0.0.1 (free port); yields its base URL; shut down afterwards."""
    served = tmp_path / "served"
    served.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    handler.log_message = lambda *args: None
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", served
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


@pytest.mark.parametrize("keep", [False, True])
def test_prepare_mvtec_cli_downloads_verifies_and_cleans_up(tmp_path, monkeypatch, file_server, keep):
    base_url, served = file_server
    archive = make_mvtec_archive(served, ("bottle",))
    monkeypatch.setattr(prepare_mvtec, "CATEGORIES", ("bottle",))
    monkeypatch.setattr(prepare_mvtec, "MVTEC_URL", f"{base_url}/{archive.name}")
    monkeypatch.setattr(prepare_mvtec, "MVTEC_SHA256", hashlib.sha256(archive.read_bytes()).hexdigest())
    datasets = tmp_path / "datasets"
    prepare_mvtec.main(["--datasets-folder", str(datasets)] + (["--keep-archive"] if keep else []))
    assert (datasets / "mvtec" / "bottle" / "ground_truth" / "crack" / "000_mask.png").is_file()
    assert (datasets / prepare_mvtec.ARCHIVE_NAME).exists() == keep
    assert not (datasets / (prepare_mvtec.ARCHIVE_NAME + ".part")).exists()


def test_prepare_mvtec_cli_corrupt_download_exits_2(tmp_path, monkeypatch, file_server, capsys):
    base_url, served = file_server
    archive = make_mvtec_archive(served, ("bottle",))
    monkeypatch.setattr(prepare_mvtec, "MVTEC_URL", f"{base_url}/{archive.name}")
    datasets = tmp_path / "datasets"
    with pytest.raises(SystemExit) as exit_info:  # the real published checksum cannot match
        prepare_mvtec.main(["--datasets-folder", str(datasets)])
    assert exit_info.value.code == 2
    assert "corrupt" in capsys.readouterr().err
    assert not (datasets / "mvtec").exists()
    assert list(datasets.iterdir()) == []


def test_prepare_mvtec_cli_incomplete_archive_exits_2(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(prepare_mvtec, "CATEGORIES", ("bottle", "zipper"))
    archive = make_mvtec_archive(tmp_path, ("bottle",))
    with pytest.raises(SystemExit) as exit_info:
        prepare_mvtec.main(["--datasets-folder", str(tmp_path / "datasets"), "--archive", str(archive)])
    assert exit_info.value.code == 2
    last_line = capsys.readouterr().err.strip().splitlines()[-1]  # earlier lines: checksum warning, progress
    assert last_line.startswith("error: ") and "zipper" in last_line


def test_prepare_mvtec_cli_missing_archive_path_exits_2(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        prepare_mvtec.main(["--datasets-folder", str(tmp_path), "--archive", str(tmp_path / "nope.tar.xz")])
    assert exit_info.value.code == 2
    assert "nope.tar.xz" in capsys.readouterr().err


def make_ksdd2_zip(path: Path) -> Path:
    """train: 3 normal + 2 defective, test: 1 + 1; `<id>.png` and `<id>_GT.png` at the zip's top level."""
    defective = {"train": {"10003", "10004"}, "test": {"20001"}}
    ids = {"train": ["10000", "10001", "10002", "10003", "10004"], "test": ["20000", "20001"]}
    with zipfile.ZipFile(path, "w") as zip_file:
        for part, part_ids in ids.items():
            for sample_id in part_ids:
                image = np.full((16, 8, 3), int(sample_id) % 200, np.uint8)
                mask = np.zeros((16, 8), np.uint8)
                if sample_id in defective[part]:
                    mask[4:9, 2:5] = 255
                zip_file.writestr(f"{part}/{sample_id}.png", cv2.imencode(".png", image)[1].tobytes())
                zip_file.writestr(f"{part}/{sample_id}_GT.png", cv2.imencode(".png", mask)[1].tobytes())
    return path


def test_prepare_ksdd2_cli_from_archive_writes_splits(tmp_path, capsys):
    archive = make_ksdd2_zip(tmp_path / "KolektorSDD2.zip")
    datasets = tmp_path / "datasets"
    prepare_ksdd2.main(["--datasets-folder", str(datasets), "--archive", str(archive)])
    root = datasets / "KolektorSDD2"
    assert prepare_ksdd2.image_count(root, "train") == 5 and prepare_ksdd2.image_count(root, "test") == 2
    assert (root / "train" / "10003_GT.png").is_file()
    names = sorted(p.name for p in root.glob("split_weakly_*.pyb"))
    assert names == sorted(f"split_weakly_{n}.pyb" for n in (0, 16, 53, 126, 246))
    train, test = pickle.loads((root / "split_weakly_0.pyb").read_bytes())
    assert sorted(str(i) for i, _ in train) == ["10000", "10001", "10002", "10003", "10004"]
    assert sorted(str(i) for i, _ in test) == ["20000", "20001"]
    assert "KolektorSDD2 ready" in capsys.readouterr().out
    prepare_ksdd2.main(["--datasets-folder", str(datasets)])
    assert "already prepared" in capsys.readouterr().out


def test_prepare_ksdd2_cli_copies_published_splits(tmp_path, capsys):
    datasets = tmp_path / "datasets"
    archive = make_ksdd2_zip(tmp_path / "KolektorSDD2.zip")
    published = tmp_path / "published"
    published.mkdir()
    content = ([("10000", True), ("10003", False)], [("20000", True), ("20001", True)])
    (published / "split_weakly_16.pyb").write_bytes(pickle.dumps(content))
    prepare_ksdd2.main(["--datasets-folder", str(datasets), "--archive", str(archive), "--splits-dir", str(published)])
    root = datasets / "KolektorSDD2"
    assert pickle.loads((root / "split_weakly_16.pyb").read_bytes()) == content  # published file wins
    assert (root / "split_weakly_246.pyb").is_file()  # the others are generated


def test_prepare_ksdd2_cli_refuses_unsafe_split_file(tmp_path, capsys):
    datasets = tmp_path / "datasets"
    prepare_ksdd2.main(["--datasets-folder", str(datasets), "--archive", str(make_ksdd2_zip(tmp_path / "k.zip"))])
    published = tmp_path / "published"
    published.mkdir()
    # numpy scalars are accepted now (the official files may hold them); any other object is not
    (published / "split_weakly_16.pyb").write_bytes(pickle.dumps(([(fractions.Fraction(1, 2), True)], [])))
    before = (datasets / "KolektorSDD2" / "split_weakly_16.pyb").read_bytes()
    with pytest.raises(SystemExit) as exit_info:
        prepare_ksdd2.main(["--datasets-folder", str(datasets), "--splits-dir", str(published)])
    assert exit_info.value.code == 2
    assert "split_weakly_16.pyb" in capsys.readouterr().err
    assert (datasets / "KolektorSDD2" / "split_weakly_16.pyb").read_bytes() == before


def make_sensum_copy(root: Path, with_splits: bool = True) -> None:
    for category_index, category in enumerate(("capsule", "softgel")):
        for folder, count in (("negative/data", 3 + category_index), ("positive/data", 2), ("positive/annotation", 2)):
            for index in range(count):
                _write_png(root / category / folder / f"{index:03d}.png", np.zeros((6, 6), np.uint8))
        if with_splits:
            for fold in range(3):
                for relative in ("train/neg.pckl", "train/pos_100.pckl", "test/neg.pckl", "test/pos.pckl"):
                    path = root / "sensum_splits" / category / str(fold) / relative
                    path.parent.mkdir(parents=True, exist_ok=True)
                    path.write_bytes(pickle.dumps([(0, True)]))


def test_prepare_sensum_copies_and_summarises(tmp_path, capsys):
    source = tmp_path / "my_copy" / "SensumSODF"
    make_sensum_copy(source)
    datasets = tmp_path / "datasets"
    prepare_sensum.main(["--datasets-folder", str(datasets), "--source", str(source.parent)])
    target = datasets / "SensumSODF"
    assert (target / "softgel" / "negative" / "data" / "003.png").is_file()
    out = capsys.readouterr().out
    assert "capsule: 3 negative, 2 positive, 2 annotations" in out
    assert "softgel: 4 negative, 2 positive, 2 annotations" in out
    assert [p.name for p in datasets.iterdir()] == ["SensumSODF"]  # no staging left


def test_prepare_sensum_lists_what_is_missing(tmp_path, capsys):
    source = tmp_path / "copy"
    make_sensum_copy(source, with_splits=False)
    with pytest.raises(SystemExit) as exit_info:
        prepare_sensum.main(["--datasets-folder", str(tmp_path / "datasets"), "--source", str(source)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "sensum_splits/capsule/0/train/neg.pckl" in err
    assert "sensum_splits/softgel/2/test/pos.pckl" in err


def test_prepare_sensum_without_copy_says_how_to_get_it(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        prepare_sensum.main(["--datasets-folder", str(tmp_path)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "request" in err and "--source" in err


# --- a failed run leaves nothing under the final name; errors are one line; folder checks come first ---


@contextlib.contextmanager
def umask(value: int):
    previous = os.umask(value)
    try:
        yield
    finally:
        os.umask(previous)


def error_lines(err: str) -> list[str]:
    """The `error:` lines of stderr (progress bars also write there, with carriage returns)."""
    return [line for line in err.replace("\r", "\n").splitlines() if line.startswith("error:")]


def assert_one_error_line(capsys, *fragments: str) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = error_lines(err)
    assert len(lines) == 1, err
    assert err.rstrip().endswith(lines[0])  # nothing (no continuation line) after it
    for fragment in fragments:
        assert fragment in lines[0]
    return lines[0]


def run_exit_code(main, argv) -> int:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    return exit_info.value.code


def test_prepare_mvtec_wrong_archive_leaves_nothing_and_the_next_run_works(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(prepare_mvtec, "CATEGORIES", ("bottle", "zipper"))
    datasets = tmp_path / "datasets"
    partial = make_mvtec_archive(tmp_path / "partial", ("bottle",))
    assert run_exit_code(prepare_mvtec.main, ["--datasets-folder", str(datasets), "--archive", str(partial)]) == 2
    line = assert_one_error_line(capsys, "zipper", str(partial))
    assert ".staging-" not in line  # the user is shown the archive, not a deleted temporary folder
    assert list(datasets.iterdir()) == []  # no mvtec/bottle, no staging folder
    complete = make_mvtec_archive(tmp_path / "complete", ("bottle", "zipper"))
    prepare_mvtec.main(["--datasets-folder", str(datasets), "--archive", str(complete)])
    assert "MVTec AD ready" in capsys.readouterr().out
    assert sorted(p.name for p in datasets.iterdir()) == ["mvtec"]
    assert (datasets / "mvtec" / "zipper" / "ground_truth" / "crack" / "000_mask.png").is_file()


def test_prepare_mvtec_damaged_archive_is_one_line_and_leaves_nothing(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(prepare_mvtec, "CATEGORIES", ("bottle",))
    datasets = tmp_path / "datasets"
    folder = tmp_path / "odd\nname"  # a line break in the path must not split the message
    folder.mkdir()
    damaged = folder / prepare_mvtec.ARCHIVE_NAME
    good = make_mvtec_archive(tmp_path, ("bottle",))
    damaged.write_bytes(good.read_bytes()[: len(good.read_bytes()) // 2])  # truncated download
    assert run_exit_code(prepare_mvtec.main, ["--datasets-folder", str(datasets), "--archive", str(damaged)]) == 2
    assert_one_error_line(capsys, "cannot extract", "odd name")
    assert list(datasets.iterdir()) == []
    prepare_mvtec.main(["--datasets-folder", str(datasets), "--archive", str(good)])
    assert (datasets / "mvtec" / "bottle" / "train" / "good" / "000.png").is_file()


def test_prepare_mvtec_completes_an_earlier_partial_folder_and_clears_stale_staging(tmp_path, monkeypatch):
    monkeypatch.setattr(prepare_mvtec, "CATEGORIES", ("bottle", "zipper"))
    datasets = tmp_path / "datasets"
    root = datasets / "mvtec"
    (root / "bottle" / "train" / "good").mkdir(parents=True)
    (root / "bottle" / "test").mkdir()
    (root / "bottle" / "ground_truth").mkdir()
    (root / "my_notes.txt").write_text("mine")
    stale = datasets / ".mvtec.staging-killed"  # left by a killed earlier run
    (stale / "bottle").mkdir(parents=True)
    old = time.time() - 3600
    os.utime(stale, (old, old))
    archive = make_mvtec_archive(tmp_path, ("zipper",))
    prepare_mvtec.main(["--datasets-folder", str(datasets), "--archive", str(archive)])
    assert (root / "zipper" / "test" / "crack" / "000.png").is_file()
    assert (root / "my_notes.txt").read_text() == "mine"
    assert sorted(p.name for p in datasets.iterdir()) == ["mvtec"]


def test_prepare_mvtec_folder_gets_the_umask_mode(tmp_path, monkeypatch):
    monkeypatch.setattr(prepare_mvtec, "CATEGORIES", ("bottle",))
    archive = make_mvtec_archive(tmp_path, ("bottle",))
    datasets = tmp_path / "datasets"
    datasets.mkdir()
    with umask(0o022):
        prepare_mvtec.main(["--datasets-folder", str(datasets), "--archive", str(archive)])
    assert stat.S_IMODE(os.stat(datasets / "mvtec").st_mode) == 0o755  # not a temporary folder's 0700


def make_ksdd2_like_zip_without_images(path: Path) -> Path:
    with zipfile.ZipFile(path, "w") as zip_file:
        zip_file.writestr("readme.txt", "not KolektorSDD2")
        zip_file.writestr("train/notes.txt", "no images here")
    return path


def test_prepare_ksdd2_wrong_archive_leaves_nothing_and_the_next_run_works(tmp_path, capsys):
    datasets = tmp_path / "datasets"
    wrong = make_ksdd2_like_zip_without_images(tmp_path / "wrong.zip")
    assert run_exit_code(prepare_ksdd2.main, ["--datasets-folder", str(datasets), "--archive", str(wrong)]) == 2
    assert_one_error_line(capsys, "no train/ and test/ images", str(wrong))
    assert list(datasets.iterdir()) == []
    prepare_ksdd2.main(["--datasets-folder", str(datasets), "--archive", str(make_ksdd2_zip(tmp_path / "k.zip"))])
    assert "KolektorSDD2 ready" in capsys.readouterr().out
    assert prepare_ksdd2.image_count(datasets / "KolektorSDD2", "train") == 5


def test_prepare_ksdd2_checks_the_splits_dir_before_extracting(tmp_path, capsys):
    datasets = tmp_path / "datasets"
    archive = make_ksdd2_zip(tmp_path / "k.zip")
    code = run_exit_code(
        prepare_ksdd2.main,
        ["--datasets-folder", str(datasets), "--archive", str(archive), "--splits-dir", str(tmp_path / "absent")],
    )
    assert code == 2
    assert_one_error_line(capsys, "--splits-dir")
    assert not (datasets / "KolektorSDD2").exists()


def test_prepare_visa_bad_archive_leaves_nothing_and_the_next_run_works(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(prepare_visa, "CATEGORIES", tuple(VISA_TINY))
    make_raw_visa(tmp_path / "raw")
    good = _tar_directory(tmp_path / "raw", tmp_path / "VisA_20220922.tar", "w")
    (tmp_path / "raw" / "pcb1" / "Data" / "Images" / "Anomaly" / "002.JPG").unlink()
    broken = _tar_directory(tmp_path / "raw", tmp_path / "broken.tar", "w")
    datasets = tmp_path / "datasets"
    assert run_exit_code(prepare_visa.main, ["--datasets-folder", str(datasets), "--archive", str(broken)]) == 2
    line = assert_one_error_line(capsys, f"{broken}:pcb1/Data/Images/Anomaly/002.JPG")
    assert ".staging-" not in line
    assert list(datasets.iterdir()) == []  # no raw visa/ that a rerun would take for a good extraction
    prepare_visa.main(["--datasets-folder", str(datasets), "--archive", str(good)])
    assert "VisA ready" in capsys.readouterr().out
    assert len(list((datasets / "visa" / "visa_pytorch" / "pcb1" / "test" / "bad").iterdir())) == 3


def test_prepare_visa_archive_without_split_file_is_refused(tmp_path, capsys):
    datasets = tmp_path / "datasets"
    archive = _tar_with_files(tmp_path / "other.tar", {"candle/readme.txt": b"not visa"})
    assert run_exit_code(prepare_visa.main, ["--datasets-folder", str(datasets), "--archive", str(archive)]) == 2
    assert_one_error_line(capsys, "split_csv/1cls.csv", "not VisA")
    assert list(datasets.iterdir()) == []


def test_prepare_visa_incomplete_categories_build_no_visa_pytorch(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(prepare_visa, "CATEGORIES", (*VISA_TINY, "cashew"))
    make_raw_visa(tmp_path / "datasets" / "visa")
    assert run_exit_code(prepare_visa.main, ["--datasets-folder", str(tmp_path / "datasets")]) == 2
    assert_one_error_line(capsys, "cashew")
    assert not (tmp_path / "datasets" / "visa" / "visa_pytorch").exists()
    assert [p.name for p in (tmp_path / "datasets" / "visa").iterdir() if p.name.startswith(".")] == []


def test_prepare_visa_disk_failure_is_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(prepare_visa, "CATEGORIES", tuple(VISA_TINY))
    make_raw_visa(tmp_path / "datasets" / "visa")

    def disk_full(source, destination):
        raise OSError(errno.ENOSPC, "No space left on device", str(destination))

    monkeypatch.setattr(prepare_visa.shutil, "copyfile", disk_full)
    assert run_exit_code(prepare_visa.main, ["--datasets-folder", str(tmp_path / "datasets")]) == 2
    assert_one_error_line(capsys, "No space left on device", "free disk space")
    assert not (tmp_path / "datasets" / "visa" / "visa_pytorch").exists()


def test_build_visa_pytorch_gets_the_umask_mode(tmp_path):
    raw = tmp_path / "visa"
    make_raw_visa(raw)
    with umask(0o027):
        prepare_visa.build_visa_pytorch(raw, raw / "visa_pytorch")
    assert stat.S_IMODE(os.stat(raw / "visa_pytorch").st_mode) == 0o750


def _tar_with_files(archive: Path, members: dict[str, bytes]) -> Path:
    with tarfile.open(archive, "w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return archive


def test_prepare_sensum_incomplete_source_copies_nothing_and_the_next_run_works(tmp_path, capsys):
    datasets = tmp_path / "datasets"
    incomplete = tmp_path / "incomplete"
    make_sensum_copy(incomplete, with_splits=False)
    assert run_exit_code(prepare_sensum.main, ["--datasets-folder", str(datasets), "--source", str(incomplete)]) == 2
    assert_one_error_line(capsys, "nothing was copied")
    assert list(datasets.iterdir()) == []  # no half SensumSODF that would block the next --source
    complete = tmp_path / "complete"
    make_sensum_copy(complete)
    prepare_sensum.main(["--datasets-folder", str(datasets), "--source", str(complete)])
    assert "SensumSODF ready" in capsys.readouterr().out


def test_prepare_sensum_failed_copy_is_one_line_and_leaves_nothing(tmp_path, monkeypatch, capsys):
    source = tmp_path / "copy"
    make_sensum_copy(source)
    datasets = tmp_path / "datasets"
    real_copytree = shutil.copytree

    def copytree_with_unreadable_files(src, dst, *args, **kwargs):
        real_copytree(src, dst, *args, **kwargs)  # most files arrive, two do not
        if Path(src) != source:  # copytree calls itself for subfolders
            return dst
        raise shutil.Error([
            (f"{src}/capsule/a.png", f"{dst}/capsule/a.png", "[Errno 13] Permission denied:\n'a.png'"),
            (f"{src}/capsule/b.png", f"{dst}/capsule/b.png", "[Errno 13] Permission denied: 'b.png'"),
        ])

    monkeypatch.setattr(prepare_sensum.shutil, "copytree", copytree_with_unreadable_files)
    assert run_exit_code(prepare_sensum.main, ["--datasets-folder", str(datasets), "--source", str(source)]) == 2
    assert_one_error_line(capsys, "cannot copy 2 file(s)", "a.png", "Permission denied")
    assert list(datasets.iterdir()) == []


def test_prepare_sensum_refuses_a_source_holding_the_destination(tmp_path, capsys):
    make_sensum_copy(tmp_path / "data")
    code = run_exit_code(
        prepare_sensum.main, ["--datasets-folder", str(tmp_path / "data"), "--source", str(tmp_path / "data")]
    )
    assert code == 2
    assert_one_error_line(capsys, "contains the destination")
    assert not (tmp_path / "data" / "SensumSODF").exists()


SCRIPTS_WRITING_THE_DATASETS_FOLDER = {
    "mvtec": (prepare_mvtec, "MVTEC_URL", []),
    "visa": (prepare_visa, "VISA_URL", []),
    "ksdd2": (prepare_ksdd2, "KSDD2_URL", []),
    "sensum": (prepare_sensum, None, ["--source", "{source}"]),
}


@pytest.mark.parametrize("script", sorted(SCRIPTS_WRITING_THE_DATASETS_FOLDER))
@pytest.mark.parametrize("problem", ["is a file", "cannot be created"])
def test_unusable_datasets_folder_is_reported_before_any_download(tmp_path, monkeypatch, capsys, script, problem):
    module, url_name, extra = SCRIPTS_WRITING_THE_DATASETS_FOLDER[script]
    if url_name:  # a download attempt would fail with a different message
        monkeypatch.setattr(module, url_name, "http://127.0.0.1:9/never-contacted")
    source = tmp_path / "sensum_copy"
    make_sensum_copy(source)
    blocker = tmp_path / "blocker"
    blocker.write_text("a file")
    datasets = blocker if problem == "is a file" else blocker / "datasets"
    argv = ["--datasets-folder", str(datasets)] + [a.format(source=source) for a in extra]
    assert run_exit_code(module.main, argv) == 2
    assert_one_error_line(capsys, f"--datasets-folder {datasets} {problem}")
    assert blocker.read_text() == "a file"


def test_build_visa_pytorch_unreadable_csv_is_a_user_error(tmp_path):
    raw = tmp_path / "visa"
    make_raw_visa(raw)
    (raw / "split_csv" / "1cls.csv").write_bytes(b"object,split,label,image,mask\n\xff\xfe\xfa,train\n")
    with pytest.raises(UserError, match="not a readable CSV") as error:
        prepare_visa.build_visa_pytorch(raw, raw / "visa_pytorch")
    assert "\n" not in str(error.value)
    assert not (raw / "visa_pytorch").exists()
