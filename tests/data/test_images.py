"""Tests of the ImageFolder reader (radengine.data.images): scan, decode, resize + crop."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

Image = pytest.importorskip("PIL.Image")

from radengine.data.images import (  # noqa: E402 - after the importorskip above
    ImageReadError,
    load_image,
    resize_shorter_center_crop,
    scan_image_folder,
)

RED, GREEN, BLUE = (255, 0, 0), (0, 255, 0), (0, 0, 255)


def solid(h: int, w: int, colour=(10, 200, 30)) -> np.ndarray:
    return np.broadcast_to(np.array(colour, np.uint8), (h, w, 3)).copy()


def stripes(h: int, w: int) -> np.ndarray:
    """Red, green, blue vertical thirds (w divisible by 3)."""
    img = np.zeros((h, w, 3), np.uint8)
    img[:, : w // 3] = RED
    img[:, w // 3 : 2 * w // 3] = GREEN
    img[:, 2 * w // 3 :] = BLUE
    return img


@pytest.fixture
def folder(tmp_path):
    """An ImageFolder with every colour mode, a rotated JPEG and bad files."""
    root = tmp_path / "root"
    for name in ["dog", "cat", "zebra", "empty"]:
        (root / name).mkdir(parents=True)
    rgb = stripes(12, 18)
    Image.fromarray(rgb).save(root / "cat" / "b_rgb.png")
    Image.fromarray(rgb).save(root / "cat" / "a_rgb.JPG", quality=95)
    Image.fromarray(rgb[:, :, 0]).convert("L").save(root / "cat" / "c_gray.png")
    (root / "cat" / "sub").mkdir()
    Image.fromarray(rgb).convert("P").save(root / "cat" / "sub" / "d_palette.png")
    rgba = np.dstack([rgb, np.full(rgb.shape[:2], 128, np.uint8)])
    Image.fromarray(rgba).save(root / "dog" / "rgba.png")
    Image.fromarray(rgb).save(root / "dog" / "pic.bmp")
    Image.fromarray(rgb).save(root / "dog" / "pic.webp", lossless=True)
    # A phone-style JPEG: pixels stored landscape, EXIF Orientation 6 = rotate 90 deg clockwise
    # to display.
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(solid(8, 16, RED)).save(root / "zebra" / "rotated.jpeg", exif=exif)
    # Bad files: a truncated PNG and a text file with an image name.
    full = root / "zebra" / "whole.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), np.uint8)).save(full)
    data = full.read_bytes()
    (root / "zebra" / "truncated.png").write_bytes(data[: len(data) // 2])
    full.unlink()
    (root / "zebra" / "text.jpg").write_text("not an image\n")
    # Not images / not in a class / hidden: skipped or ignored.
    (root / "dog" / "notes.txt").write_text("x")
    (root / "stray.png").write_bytes(b"")
    (root / ".hidden").mkdir()
    (root / "cat" / ".DS_Store").write_bytes(b"x")
    return root


def test_scan_classes_labels_and_order(folder):
    samples, classes, skipped = scan_image_folder(folder)
    assert classes == ["cat", "dog", "empty", "zebra"]
    rel = [(str(p).removeprefix(str(folder) + "/"), c) for p, c in samples]
    assert rel == [
        ("cat/a_rgb.JPG", 0),
        ("cat/b_rgb.png", 0),
        ("cat/c_gray.png", 0),
        ("cat/sub/d_palette.png", 0),
        ("dog/pic.bmp", 1),
        ("dog/pic.webp", 1),
        ("dog/rgba.png", 1),
        ("zebra/rotated.jpeg", 3),
        ("zebra/text.jpg", 3),
        ("zebra/truncated.png", 3),
    ]
    reasons = {s.path.removeprefix(str(folder) + "/"): s.reason for s in skipped}
    assert set(reasons) == {"dog/notes.txt", "stray.png", "empty"}
    assert "class folder" in reasons["stray.png"] and "no images" in reasons["empty"]
    assert scan_image_folder(str(folder)) == (samples, classes, skipped)  # str root, same


def test_scan_without_class_folders_raises(tmp_path):
    (tmp_path / "a.png").write_bytes(b"")
    with pytest.raises(ValueError, match="no class subfolders") as info:
        scan_image_folder(tmp_path)
    assert str(tmp_path) in str(info.value) and "root/<class name>/" in str(info.value)
    with pytest.raises(ValueError, match="not a directory"):
        scan_image_folder(tmp_path / "missing")


def test_load_modes_give_rgb_uint8(folder):
    want = stripes(12, 18)
    for rel in ["cat/b_rgb.png", "cat/sub/d_palette.png", "dog/rgba.png", "dog/pic.bmp"]:
        img = load_image(folder / rel)
        assert img.dtype == np.uint8 and img.shape == (12, 18, 3) and img.flags.c_contiguous
        np.testing.assert_array_equal(img, want, err_msg=rel)
    webp = load_image(str(folder / "dog" / "pic.webp"))
    np.testing.assert_array_equal(webp, want)
    jpeg = load_image(folder / "cat" / "a_rgb.JPG")
    assert jpeg.shape == (12, 18, 3)
    assert np.abs(jpeg.astype(int) - want).mean() < 12  # lossy, but the colours survive
    gray = load_image(folder / "cat" / "c_gray.png")
    np.testing.assert_array_equal(gray, np.repeat(want[:, :, :1], 3, axis=2))


def test_exif_orientation_applied(folder):
    img = load_image(folder / "zebra" / "rotated.jpeg")
    assert img.shape == (16, 8, 3)  # stored 8 x 16, displayed upright as 16 x 8
    assert (np.abs(img.astype(int) - RED) < 40).all()


def test_sixteen_bit_grayscale_is_scaled_not_clipped(tmp_path):
    ramp = np.array([[0, 257, 32896, 65535]], dtype=np.uint16)
    path = tmp_path / "deep.png"
    Image.fromarray(ramp).save(path)
    img = load_image(path)
    np.testing.assert_array_equal(img[0, :, 0], [0, 1, 128, 255])
    assert (img[..., 0] == img[..., 2]).all()


@pytest.mark.parametrize("name", ["truncated.png", "text.jpg", "absent.png"])
def test_corrupt_files_raise_image_read_error(folder, name):
    path = folder / "zebra" / name
    with pytest.raises(ImageReadError) as info:
        load_image(path)
    assert info.value.path == str(path) and str(path) in str(info.value)
    assert info.value.reason
    # Ingest workers send it back across processes.
    again = pickle.loads(pickle.dumps(info.value))
    assert (again.path, again.reason, str(again)) == (
        info.value.path,
        info.value.reason,
        str(info.value),
    )


@pytest.mark.parametrize("hw", [(40, 60), (60, 40), (33, 33), (7, 300), (500, 16)])
def test_resize_crop_shape_and_solid_colour(hw):
    out = resize_shorter_center_crop(solid(*hw), 16)
    assert out.shape == (16, 16, 3) and out.dtype == np.uint8 and out.flags.c_contiguous
    assert (out == np.array((10, 200, 30), np.uint8)).all()


def test_landscape_crop_is_centred():
    # 60 x 180 stripes -> 20 x 60 (thirds of 20) -> crop columns 20..39: green, with the
    # antialiasing filter bleeding a little red/blue into the outermost columns, equally.
    out = resize_shorter_center_crop(stripes(60, 180), 20).astype(int)
    assert (out[:, 1:-1] == GREEN).all()
    assert (out[:, 0, 0] == out[:, -1, 2]).all() and (out[:, 0, 0] < 64).all()
    # 60 x 90 -> 20 x 30 (thirds of 10) -> crop columns 5..24: red 5, green 10, blue 5, with
    # bilinear blending only at the two boundaries, mirror-symmetric.
    out = resize_shorter_center_crop(stripes(60, 90), 20)
    assert (out[:, :4] == RED).all() and (out[:, 6:14] == GREEN).all()
    assert (out[:, 16:] == BLUE).all()
    np.testing.assert_array_equal(out[:, ::-1, ::-1], out)  # mirror + swap red/blue


def test_portrait_crop_is_centred_and_marker_survives():
    img = solid(300, 100, (0, 0, 0))
    img[140:160, 40:60] = (255, 255, 255)  # a marker in the middle
    img[:100] = RED  # the top third is cropped away
    out = resize_shorter_center_crop(img, 50)
    assert not (out == RED).all(axis=2).any()
    ys, xs = np.nonzero(out[:, :, 1] > 128)
    assert abs(ys.mean() - 24.5) < 1 and abs(xs.mean() - 24.5) < 1


def test_custom_resize_is_used_and_checked():
    calls = []

    def nearest(img, out_h, out_w):
        calls.append((img.shape, out_h, out_w))
        rows = np.arange(out_h) * img.shape[0] // out_h
        cols = np.arange(out_w) * img.shape[1] // out_w
        return img[rows][:, cols]

    out = resize_shorter_center_crop(stripes(30, 90), 10, resize=nearest)
    assert calls == [((30, 90, 3), 10, 30)]
    assert (out == GREEN).all()
    # Already the target size: no resampling at all.
    calls.clear()
    img = np.random.default_rng(1).integers(0, 255, (10, 14, 3), np.uint8)
    np.testing.assert_array_equal(resize_shorter_center_crop(img, 10, nearest), img[:, 2:12])
    assert calls == []

    with pytest.raises(ValueError, match="resize returned"):
        resize_shorter_center_crop(stripes(30, 90), 10, resize=lambda im, h, w: im)


@pytest.mark.parametrize(
    "image, size",
    [
        (np.zeros((4, 4, 3), np.float32), 2),
        (np.zeros((4, 4), np.uint8), 2),
        (np.zeros((4, 4, 4), np.uint8), 2),
        (np.zeros((0, 4, 3), np.uint8), 2),
        (np.zeros((4, 4, 3), np.uint8), 0),
        (np.zeros((4, 4, 3), np.uint8), 2.0),
    ],
)
def test_resize_crop_bad_input(image, size):
    with pytest.raises(ValueError):
        resize_shorter_center_crop(image, size)
