"""The export formats and where their files go: torch-free, so that export.py checks its output
before torch is imported and long before an export that takes minutes."""

from pathlib import Path

from common.errors import UserError
from common.fileio import check_writable_dir

FORMATS = ("onnx", "openvino", "torchscript")
PRECISIONS = ("fp32", "fp16")
SUFFIXES = {"onnx": ".onnx", "openvino": ".xml", "torchscript": ".torchscript.pt"}  # of the default file name
ACCEPTED_SUFFIXES = {"onnx": ".onnx", "openvino": ".xml", "torchscript": ".pt"}  # what predict.py --model reads


def default_output(weights: Path, export_format: str, precision: str) -> Path:
    """`<weights folder>/model[_fp16].onnx|.xml|.torchscript.pt`."""
    suffix = "_fp16" if precision == "fp16" else ""
    return Path(weights).parent / f"model{suffix}{SUFFIXES[export_format]}"


def check_output(output: Path, export_format: str) -> Path:
    """`output` when an export in `export_format` can be written there: its suffix fits the format
    (predict.py --model tells the runtime by it) and its folder is, or can become, a writable folder.
    Otherwise a UserError naming --output."""
    output = Path(output)
    wanted = ACCEPTED_SUFFIXES[export_format]
    if output.suffix.lower() != wanted:
        extra = " (with its .bin beside it)" if export_format == "openvino" else ""
        raise UserError(f"--output {output}: a {export_format} export is a {wanted} file{extra}; "
                        f"e.g. {output.with_suffix(wanted).name}")
    if output.is_dir():
        raise UserError(f"--output {output} is a folder; give the file to write, e.g. {output / ('model' + wanted)}")
    check_writable_dir(output.parent, "--output's folder")
    return output
