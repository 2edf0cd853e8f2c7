"""The one image reader and preprocessing used by every dataset, train, eval and perf.

Order matters for matching the published numbers (docs/method.md, "Data pipeline"): the image is resized
as uint8 with OpenCV bilinear, then normalised; masks use OpenCV nearest neighbour.

Masks are read by one of two rules:
- "published" (MVTec AD, VisA, KolektorSDD2, SensumSODF): the file as 8-bit grayscale / 255,
  exactly as the published code reads them (docs/method.md, "Data pipeline").
- "nonzero" (the user's own folders): every pixel with any non-zero value is defect (1.0), the
  rest 0.0, whatever the file stores: 0/255, 0/1 (labelling tools, VisA's raw files), 16-bit,
  or a colour mask (any non-zero colour channel). With an alpha channel, a fully transparent
  pixel is background; a mask whose colour channels are all zero is read from its alpha
  channel (black strokes on a transparent canvas).
"""

import re
import warnings
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from common.errors import UserError

# OpenCV logs its decoders' complaints about a damaged file ("[ WARN:0@...] global grfmt_png.cpp
# ...") on stderr; every unreadable file is reported by our own one-line error instead.
cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)


def is_image_file(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith(".")


def list_images(folder: Path) -> list[Path]:
    """Image files directly in `folder`, sorted by name (splits never depend on the file system); [] if absent."""
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if is_image_file(p))


def read_rgb(path: Path | str) -> np.ndarray:
    """Read an image file as RGB uint8, H x W x 3."""
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise UserError(f"cannot read image {path}: the file is missing, empty or not an image; replace or remove it")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


PUBLISHED_MASK_RULE, NONZERO_MASK_RULE = "published", "nonzero"
MASK_RULES = (PUBLISHED_MASK_RULE, NONZERO_MASK_RULE)


def header_size(path: Path | str) -> tuple[int, int] | None:
    """(height, width) from the file's header, nothing decoded; None when Pillow cannot tell (a format
    it does not know, a damaged file: the decoder reports that). Beyond Pillow's own bomb limit the
    size is taken from its refusal."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                return image.height, image.width
    except Image.DecompressionBombError as error:
        found = re.search(r"\((\d+) pixels\)", str(error))
        pixels = int(found[1]) if found else Image.MAX_IMAGE_PIXELS * 2 + 1
        return pixels, 1  # only the product is known
    except (OSError, ValueError, SyntaxError):
        return None


def mis_sized_mask_error(image_path: Path | str, image_size: tuple[int, int], mask_path: Path | str,
                         mask_size: tuple[int, int]) -> UserError:
    return UserError(
        f"mask {mask_path} is {mask_size[1]}x{mask_size[0]} but its image {image_path} is "
        f"{image_size[1]}x{image_size[0]}; masks must have the size of their image"
    )


def check_mask_sizes(pairs: list[tuple[str, str]]) -> None:
    """Every (image, mask) pair's sizes from the files' headers, before anything trains: a mask of
    another size is the UserError that reading the pair would give later (after a whole training)."""
    for image_path, mask_path in pairs:
        image_size, mask_size = header_size(image_path), header_size(mask_path)
        if image_size is not None and mask_size is not None and image_size != mask_size:
            raise mis_sized_mask_error(image_path, image_size, mask_path, mask_size)


def _unreadable_mask(path: Path | str) -> UserError:
    return UserError(f"cannot read mask {path}: the file is missing, empty or not an image; replace or remove it")


def read_raw_mask(path: Path | str) -> np.ndarray:
    """The mask file as stored: H x W or H x W x C (BGR / BGRA), 8- or 16-bit or float."""
    mask = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if mask is None or mask.size == 0:
        raise _unreadable_mask(path)
    return mask


def defect_pixels(raw: np.ndarray) -> np.ndarray:
    """The "nonzero" rule on a stored mask (see the module docstring): bool H x W, True = defect."""
    if raw.ndim == 2:
        return raw != 0
    if raw.shape[2] == 4:
        colour, opaque = np.any(raw[..., :3] != 0, axis=2), raw[..., 3] != 0
        return colour & opaque if colour.any() else opaque
    return np.any(raw != 0, axis=2)


def mask_storage(raw: np.ndarray) -> str:
    """How a stored mask encodes its defects, in words: "0/255", "0/1", "8-bit grey levels",
    "16-bit", "float", "colour" or "colour with alpha" (for the folder summary)."""
    if raw.ndim == 3:
        return "colour with alpha" if raw.shape[2] == 4 else "colour"
    if raw.dtype == np.uint16:
        return "16-bit"
    if raw.dtype != np.uint8:
        return "float" if np.issubdtype(raw.dtype, np.floating) else str(raw.dtype)
    values = set(np.unique(raw).tolist())
    if values <= {0, 255}:
        return "0/255"
    if values <= {0, 1}:
        return "0/1"
    return "8-bit grey levels"


def read_mask(path: Path | str, rule: str = PUBLISHED_MASK_RULE) -> np.ndarray:
    """Read a ground-truth mask as float32 H x W in [0, 1].

    `rule` "published": 8-bit grayscale / 255 (the published datasets); "nonzero": 1.0 where any
    stored value is non-zero, else 0.0 (the user's own folders; see the module docstring)."""
    if rule == PUBLISHED_MASK_RULE:
        mask = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
        if mask is None:
            raise _unreadable_mask(path)
        return mask.astype(np.float32) / 255.0
    if rule == NONZERO_MASK_RULE:
        return defect_pixels(read_raw_mask(path)).astype(np.float32)
    raise ValueError(f"unknown mask rule {rule!r}; expected one of {MASK_RULES}")


def image_to_tensor_array(image: np.ndarray, image_size: tuple[int, int]) -> np.ndarray:
    """RGB uint8 H x W x 3 -> normalised float32 3 x h x w, resized as uint8 with INTER_LINEAR."""
    height, width = image_size
    if image.shape[:2] != (height, width):
        image = cv2.resize(image, (width, height), interpolation=cv2.INTER_LINEAR)
    normalised = (image.astype(np.float32) / 255.0 - IMAGENET_MEAN) / IMAGENET_STD
    return np.ascontiguousarray(normalised.transpose(2, 0, 1))


def mask_to_array(mask: np.ndarray, image_size: tuple[int, int]) -> np.ndarray:
    """Mask float32 H x W in [0, 1] -> float32 h x w, resized with INTER_NEAREST."""
    height, width = image_size
    if mask.shape[:2] != (height, width):
        mask = cv2.resize(mask, (width, height), interpolation=cv2.INTER_NEAREST)
    return np.ascontiguousarray(mask.astype(np.float32))


def read_sample(
    image_path: Path | str, mask_path: Path | str | None, label: int, mask_rule: str = PUBLISHED_MASK_RULE
) -> tuple[np.ndarray, np.ndarray]:
    """Read one sample at its stored size: (RGB uint8 H x W x 3, mask float32 H x W).

    A normal sample (label 0) or one without a mask file gets an all-zero mask; the mask is read
    with `mask_rule` (see `read_mask`). A mask whose size differs from its image is an error,
    never silently resized.
    """
    image = read_rgb(image_path)
    if label == 0 or not mask_path:
        return image, np.zeros(image.shape[:2], dtype=np.float32)
    mask = read_mask(mask_path, mask_rule)
    if mask.shape[:2] != image.shape[:2]:
        raise mis_sized_mask_error(image_path, image.shape[:2], mask_path, mask.shape[:2])
    return image, mask
