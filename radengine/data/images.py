"""Natural images in the ImageFolder layout: find them, decode them to RGB, resize and crop.

Layout (as torchvision's ``ImageFolder``)::

    root/
      <class_a>/ img1.jpg, sub/img2.png, ...
      <class_b>/ ...

Class ids are the indices of the sorted class-folder names. Pillow is imported inside the
functions so that ``import radengine`` works without it (``pip install "radengine[images]"``).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from radengine.data.nifti import Skipped
from radengine.errors import UserError

__all__ = [
    "IMAGE_EXTENSIONS",
    "ImageFolderError",
    "ImageReadError",
    "load_image",
    "resize_shorter_center_crop",
    "scan_image_folder",
]

#: File extensions taken as images (compared case-insensitively).
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")

_IMAGES_EXTRA = 'install the images extra: pip install "radengine[images]" (Pillow)'
_LAYOUT = "expected root/<class name>/<image files> (one subfolder per class, ImageFolder layout)"

#: A resize kernel: ``resize(img_uint8_hwc, out_h, out_w) -> uint8 (out_h, out_w, 3)``.
ResizeFn = Callable[[np.ndarray, int, int], np.ndarray]


class ImageFolderError(UserError, ValueError):
    """A folder that is not in the ImageFolder layout (still a ValueError for callers that
    catch that)."""


class ImageReadError(Exception):
    """An image file that could not be decoded.

    Attributes:
        path: The file.
        reason: What went wrong (the decoder's message).
    """

    def __init__(self, path: str | Path, reason: str) -> None:
        self.path = os.fspath(path)
        self.reason = reason
        super().__init__(f"cannot read image {self.path}: {reason}")

    def __reduce__(self) -> tuple[Any, ...]:
        # Worker processes send exceptions back pickled; the default would call
        # __init__(message) and fail on the missing argument.
        return (type(self), (self.path, self.reason))


def _hidden(name: str) -> bool:
    # .DS_Store, .ipynb_checkpoints, ._AppleDouble files: never data.
    return name.startswith(".")


def scan_image_folder(
    root: str | Path,
) -> tuple[list[tuple[str, int]], list[str], list[Skipped]]:
    """List the images of an ImageFolder tree with their class ids.

    Files are not opened here (decoding errors surface in :func:`load_image`). Class folders
    are walked recursively; symbolic links to folders inside them are not followed (a link
    cycle cannot hang the walk). Hidden files and folders (name starting with ``.``) are
    ignored.

    Args:
        root: The folder holding one subfolder per class.

    Returns:
        ``(samples, classes, skipped)``: ``(path, class_id)`` pairs sorted by class and then
        path; the sorted class names (``class_id`` indexes them); the files not taken (files
        directly in ``root``, other extensions) and class folders without images, each with
        its reason.

    Raises:
        ImageFolderError: ``root`` is not a directory or has no class subfolders.
    """
    root = os.fspath(root)
    if not os.path.isdir(root):
        raise ImageFolderError(f"image folder {root!r} is not a directory; {_LAYOUT}")

    skipped: list[Skipped] = []
    classes: list[str] = []
    with os.scandir(root) as entries:
        for entry in sorted(entries, key=lambda e: e.name):
            if _hidden(entry.name):
                continue
            if entry.is_dir():
                classes.append(entry.name)
            else:
                skipped.append(
                    Skipped(entry.path, "file directly in the root, not in a class folder", _LAYOUT)
                )
    if not classes:
        raise ImageFolderError(f"image folder {root!r} has no class subfolders; {_LAYOUT}")

    samples: list[tuple[str, int]] = []
    for class_id, name in enumerate(classes):
        found: list[str] = []
        for dirpath, dirnames, filenames in os.walk(os.path.join(root, name)):
            dirnames[:] = sorted(d for d in dirnames if not _hidden(d))
            for f in filenames:
                if _hidden(f):
                    continue
                path = os.path.join(dirpath, f)
                if f.lower().endswith(IMAGE_EXTENSIONS):
                    found.append(path)
                else:
                    skipped.append(
                        Skipped(
                            path,
                            f"not an image file name (extensions: {' '.join(IMAGE_EXTENSIONS)})",
                        )
                    )
        if not found:
            skipped.append(Skipped(os.path.join(root, name), f"class {name!r} has no images"))
        samples.extend((p, class_id) for p in sorted(found))
    return samples, classes, sorted(skipped, key=lambda s: s.path)


def load_image(path: str | Path) -> np.ndarray:
    """Decode an image file to uint8 RGB ``(H, W, 3)``, upright.

    The EXIF orientation tag is applied (a phone photo stored sideways comes out as shown).
    Conversions: grayscale, palette, CMYK and the like through Pillow's RGB conversion; an
    alpha channel is dropped (as torchvision's default loader does); 16-bit grayscale is
    scaled from [0, 65535] to [0, 255] (Pillow's own conversion would clip it); 32-bit float
    grayscale is rounded and clipped to [0, 255]. Of an animated image, the first frame.

    Args:
        path: The image file.

    Returns:
        uint8 array ``(H, W, 3)``, C-contiguous.

    Raises:
        ImageReadError: The file is missing, not an image, truncated or otherwise undecodable.
        ImportError: Pillow is not installed.
    """
    try:
        from PIL import Image, ImageOps
    except ImportError as e:
        raise ImportError(f"reading images needs Pillow: {_IMAGES_EXTRA}") from e

    path = os.fspath(path)
    try:
        with Image.open(path) as im:
            im.load()  # decode now, inside the try: truncation only shows up here
            im = ImageOps.exif_transpose(im)
            out = _to_rgb(im)
    except FileNotFoundError as e:
        raise ImageReadError(path, "no such file") from e
    # Pillow signals bad data with several types: UnidentifiedImageError (an OSError),
    # OSError ("image file is truncated"), SyntaxError/ValueError from some plugins, and
    # DecompressionBombError for absurd sizes.
    except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError) as e:
        raise ImageReadError(path, f"{type(e).__name__}: {e}") from e
    if out.ndim != 3 or out.shape[2] != 3 or out.dtype != np.uint8 or 0 in out.shape:
        raise ImageReadError(path, f"decoded to an unexpected array {out.shape} {out.dtype}")
    return np.ascontiguousarray(out)


def _to_rgb(im: Any) -> np.ndarray:
    """A loaded PIL image as a uint8 RGB array (see :func:`load_image` for the rules)."""
    mode = im.mode
    if mode == "RGB":
        return np.asarray(im)
    if mode.startswith("I;16") or mode == "I":
        # 16-bit grayscale (PNG loads as I;16 or I): scale the full range, don't clip.
        a = np.asarray(im).astype(np.float64)
        a = np.rint(np.clip(a, 0, 65535) / 257.0).astype(np.uint8)
        return np.repeat(a[:, :, None], 3, axis=2)
    if mode == "F":
        a = np.rint(np.clip(np.nan_to_num(np.asarray(im, dtype=np.float64)), 0, 255))
        return np.repeat(a.astype(np.uint8)[:, :, None], 3, axis=2)
    return np.asarray(im.convert("RGB"))


def _pil_bilinear(image: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """Pillow's antialiased bilinear resize (the filter widens when downscaling)."""
    try:
        from PIL import Image
    except ImportError as e:
        raise ImportError(f"the default resize needs Pillow: {_IMAGES_EXTRA}") from e

    resized = Image.fromarray(image).resize(
        (out_w, out_h), Image.Resampling.BILINEAR, reducing_gap=None
    )
    return np.asarray(resized)


def resize_shorter_center_crop(
    image: np.ndarray, size: int, resize: ResizeFn | None = None
) -> np.ndarray:
    """Resize so the shorter side is ``size``, then crop the central ``size x size`` square.

    The arithmetic is torchvision's ``Resize(size)`` + ``CenterCrop(size)``: the longer side
    becomes ``int(size * long / short)`` (truncated) and the crop starts at
    ``round((side - size) / 2)``, so a store matches the usual ImageNet preprocessing.

    Args:
        image: uint8 ``(H, W, 3)``.
        size: Output side, pixels (> 0).
        resize: ``resize(img_uint8_hwc, out_h, out_w) -> uint8 (out_h, out_w, 3)``; default
            Pillow's antialiased bilinear (``Image.resize(..., BILINEAR, reducing_gap=None)``).

    Returns:
        uint8 ``(size, size, 3)``, C-contiguous.

    Raises:
        ValueError: Bad ``image`` or ``size``, or ``resize`` returned the wrong array.
    """
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8:
        raise ValueError(f"image must be a uint8 numpy array, got {_describe_array(image)}")
    if image.ndim != 3 or image.shape[2] != 3 or image.shape[0] < 1 or image.shape[1] < 1:
        raise ValueError(f"image must have shape (H, W, 3) with H, W >= 1, got {image.shape}")
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 1:
        raise ValueError(f"size must be a positive integer, got {size!r}")
    size = int(size)
    h, w = image.shape[:2]
    if h <= w:
        out_h, out_w = size, int(size * w / h)
    else:
        out_h, out_w = int(size * h / w), size

    if (out_h, out_w) != (h, w):
        fn = _pil_bilinear if resize is None else resize
        resized = fn(np.ascontiguousarray(image), out_h, out_w)
        if (
            not isinstance(resized, np.ndarray)
            or resized.dtype != np.uint8
            or resized.shape != (out_h, out_w, 3)
        ):
            raise ValueError(
                f"resize returned {_describe_array(resized)}, "
                f"expected uint8 of shape {(out_h, out_w, 3)}"
            )
    else:
        resized = image  # already the target size: resampling would only blur it
    top = round((out_h - size) / 2.0)
    left = round((out_w - size) / 2.0)
    return np.ascontiguousarray(resized[top : top + size, left : left + size])


def _describe_array(a: object) -> str:
    if isinstance(a, np.ndarray):
        return f"{a.dtype} array of shape {a.shape}"
    return type(a).__name__
