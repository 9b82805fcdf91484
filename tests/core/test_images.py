"""Awkward images load correctly or are refused clearly; PNG output is atomic."""

from __future__ import annotations

import io
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ipa_studio.core import images
from ipa_studio.core.errors import ImageInputError, IPAStudioError
from ipa_studio.core.images import content_hash, load_image, load_mask, read_png_metadata, save_png


def rgb_at(image: Image.Image, xy: tuple[int, int]) -> tuple[int, ...]:
    return tuple(image.getpixel(xy))


def close_to(actual: tuple[int, ...], expected: tuple[int, ...], tol: int = 3) -> bool:
    return all(abs(a - e) <= tol for a, e in zip(actual, expected, strict=True))


def png_header_only(path: Path, width: int, height: int) -> Path:
    """A PNG that claims a huge size but holds almost no data: a decompression bomb's header.

    Nothing is decoded if the size check comes first; if it did not, decoding would fail (or
    allocate gigabytes), so the test also proves the order.
    """

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    body = chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + body)
    return path


# --- orientation and colour modes ----------------------------------------------------------------


def test_exif_orientation_is_applied(tmp_path: Path) -> None:
    # Stored 40×20: left half red, right half blue. Orientation 6 means "rotate 90° clockwise to
    # show", so the upright picture is 20×40 with red on top.
    stored = Image.new("RGB", (40, 20), (0, 0, 255))
    stored.paste((255, 0, 0), (0, 0, 20, 20))
    exif = Image.Exif()
    exif[0x0112] = 6
    path = tmp_path / "phone.jpg"
    stored.save(path, quality=95, exif=exif)

    loaded = load_image(path)

    assert loaded.mode == "RGB"
    assert loaded.size == (20, 40)
    assert close_to(rgb_at(loaded, (10, 5)), (255, 0, 0), tol=10)
    assert close_to(rgb_at(loaded, (10, 35)), (0, 0, 255), tol=10)


def test_exif_orientation_applies_to_images_in_memory(tmp_path: Path) -> None:
    stored = Image.new("RGB", (40, 20), (0, 0, 255))
    exif = Image.Exif()
    exif[0x0112] = 8
    path = tmp_path / "rotated.png"
    stored.save(path, exif=exif)
    with Image.open(path) as opened:
        assert load_image(opened).size == (20, 40)


@pytest.mark.parametrize("fmt", ["JPEG", "TIFF"])
def test_cmyk_becomes_rgb(tmp_path: Path, fmt: str) -> None:
    path = tmp_path / f"print.{fmt.lower()}"
    cmyk = Image.new("CMYK", (16, 16), (0, 255, 255, 0))  # pure red ink mix
    cmyk.paste((0, 0, 0, 255), (8, 0, 16, 16))  # black ink
    cmyk.save(path, format=fmt)

    loaded = load_image(path)

    assert loaded.mode == "RGB"
    assert close_to(rgb_at(loaded, (2, 2)), (255, 0, 0), tol=12)
    assert close_to(rgb_at(loaded, (12, 2)), (0, 0, 0), tol=12)


def test_16_bit_greyscale_is_scaled_not_clipped(tmp_path: Path) -> None:
    values = np.array([[0, 257 * 100, 32768, 65535]], dtype=np.uint16)
    path = tmp_path / "scan16.png"
    Image.fromarray(values).save(path)
    with Image.open(path) as check:
        assert check.mode.startswith("I")  # the file really is 16-bit

    loaded = load_image(path)

    assert loaded.mode == "RGB"
    greys = [rgb_at(loaded, (x, 0))[0] for x in range(4)]
    # Clipping would make everything above 255 white; scaling keeps the gradient.
    assert greys == [0, 100, 128, 255]
    assert all(len(set(rgb_at(loaded, (x, 0)))) == 1 for x in range(4))


def test_32_bit_integer_mode_i_in_memory() -> None:
    values = np.array([[0, 257 * 50, 65535]], dtype=np.int32)
    image = Image.fromarray(values)
    assert image.mode == "I"
    loaded = load_image(image)
    assert [rgb_at(loaded, (x, 0))[0] for x in range(3)] == [0, 50, 255]


def test_big_endian_16_bit_in_memory() -> None:
    image = Image.new("I;16B", (2, 1), 65535)
    assert rgb_at(load_image(image), (0, 0)) == (255, 255, 255)


def test_rgba_is_composited_on_white(tmp_path: Path) -> None:
    image = Image.new("RGBA", (3, 1))
    image.putpixel((0, 0), (255, 0, 0, 255))
    image.putpixel((1, 0), (255, 0, 0, 128))
    image.putpixel((2, 0), (0, 0, 0, 0))  # transparent black must not turn black
    path = tmp_path / "alpha.png"
    image.save(path)

    loaded = load_image(path)

    assert loaded.mode == "RGB"
    assert rgb_at(loaded, (0, 0)) == (255, 0, 0)
    assert close_to(rgb_at(loaded, (1, 0)), (255, 127, 127), tol=2)
    assert rgb_at(loaded, (2, 0)) == (255, 255, 255)


def test_palette_with_and_without_transparency(tmp_path: Path) -> None:
    pal = Image.new("P", (2, 1))
    pal.putpalette([0, 0, 0, 0, 255, 0] + [0] * 762)
    pal.putpixel((0, 0), 0)
    pal.putpixel((1, 0), 1)

    plain = tmp_path / "plain.gif"
    pal.save(plain)
    loaded = load_image(plain)
    assert loaded.mode == "RGB"
    assert rgb_at(loaded, (0, 0)) == (0, 0, 0)
    assert rgb_at(loaded, (1, 0)) == (0, 255, 0)

    keyed = tmp_path / "keyed.png"
    pal.save(keyed, transparency=0)  # index 0 (black) is transparent
    loaded = load_image(keyed)
    assert rgb_at(loaded, (0, 0)) == (255, 255, 255)
    assert rgb_at(loaded, (1, 0)) == (0, 255, 0)


def test_la_greyscale_with_alpha(tmp_path: Path) -> None:
    image = Image.new("LA", (2, 1))
    image.putpixel((0, 0), (0, 255))
    image.putpixel((1, 0), (0, 0))
    path = tmp_path / "la.png"
    image.save(path)

    loaded = load_image(path)

    assert loaded.mode == "RGB"
    assert rgb_at(loaded, (0, 0)) == (0, 0, 0)
    assert rgb_at(loaded, (1, 0)) == (255, 255, 255)


@pytest.mark.parametrize("mode", ["L", "1", "I;16", "F", "RGB"])
def test_every_common_mode_gives_rgb(mode: str) -> None:
    assert load_image(Image.new(mode, (4, 4))).mode == "RGB"


# --- refusals ------------------------------------------------------------------------------------


def test_huge_image_is_refused_before_decoding(tmp_path: Path) -> None:
    path = png_header_only(tmp_path / "bomb.png", 10_000, 10_000)  # 100 MP, over the 64 MP limit
    with pytest.warns(Image.DecompressionBombWarning), pytest.raises(ImageInputError) as info:
        load_image(path)
    message = str(info.value)
    assert "'bomb.png'" in message and "too large" in message and "10000×10000" in message


def test_image_over_pillows_own_limit_is_refused(tmp_path: Path) -> None:
    path = png_header_only(tmp_path / "bigger.png", 30_000, 30_000)
    with pytest.raises(ImageInputError, match="too large"):
        load_image(path, max_pixels=10**10)


def test_max_pixels_applies_to_images_in_memory() -> None:
    with pytest.raises(ImageInputError, match="too large"):
        load_image(Image.new("RGB", (100, 100)), max_pixels=5_000)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ImageInputError) as info:
        load_image(tmp_path / "nowhere.png", what="init image")
    assert str(info.value).startswith("The init image 'nowhere.png' could not be found")


def test_text_file_named_png(tmp_path: Path) -> None:
    path = tmp_path / "notes.png"
    path.write_text("these are my notes, not a picture\n")
    with pytest.raises(ImageInputError) as info:
        load_image(path)
    message = str(info.value)
    assert message.startswith("The reference image 'notes.png' could not be read: it is not an image file")
    assert "text" in message and ".png" in message


def test_binary_junk_and_empty_file(tmp_path: Path) -> None:
    junk = tmp_path / "junk.jpg"
    junk.write_bytes(bytes(range(256)) * 4)
    with pytest.raises(ImageInputError, match="not an image file"):
        load_image(junk)
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    with pytest.raises(ImageInputError, match="empty"):
        load_image(empty)


def test_truncated_file(tmp_path: Path) -> None:
    buffer = io.BytesIO()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(buffer, format="PNG")
    path = tmp_path / "cut.png"
    path.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    with pytest.raises(ImageInputError, match="damaged or incomplete"):
        load_image(path)


def test_truncated_image_in_memory_still_lazy(tmp_path: Path) -> None:
    buffer = io.BytesIO()
    rng = np.random.default_rng(1)
    Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(buffer, format="PNG")
    path = tmp_path / "cut.png"
    path.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    with Image.open(path) as lazy, pytest.raises(ImageInputError, match="in memory.*damaged"):
        load_image(lazy)


def test_folder_is_not_an_image(tmp_path: Path) -> None:
    with pytest.raises(ImageInputError, match="is a folder"):
        load_image(tmp_path)


# --- masks ---------------------------------------------------------------------------------------


def test_mask_from_greyscale_and_rgb() -> None:
    rgb = Image.new("RGB", (4, 2), (0, 0, 0))
    rgb.paste((255, 255, 255), (0, 0, 2, 2))
    mask = load_mask(rgb)
    assert mask.mode == "L"
    assert mask.getpixel((0, 0)) == 255 and mask.getpixel((3, 0)) == 0


def test_mask_uses_varying_alpha() -> None:
    # Red strokes on a transparent layer: opaque = repaint, whatever the stroke colour.
    layer = Image.new("RGBA", (4, 2), (0, 0, 0, 0))
    layer.paste((255, 0, 0, 255), (0, 0, 2, 2))
    mask = load_mask(layer)
    assert mask.getpixel((0, 0)) == 255 and mask.getpixel((3, 0)) == 0


def test_mask_with_constant_alpha_uses_brightness() -> None:
    opaque = Image.new("RGBA", (2, 1), (255, 255, 255, 255))
    opaque.putpixel((1, 0), (0, 0, 0, 255))
    mask = load_mask(opaque)
    assert mask.getpixel((0, 0)) == 255 and mask.getpixel((1, 0)) == 0


def test_mask_16_bit_and_resize(tmp_path: Path) -> None:
    path = tmp_path / "mask16.png"
    Image.fromarray(np.full((8, 8), 65535, dtype=np.uint16)).save(path)
    mask = load_mask(path, size=(32, 16))
    assert mask.mode == "L" and mask.size == (32, 16)
    assert mask.getextrema() == (255, 255)


def test_mask_errors_name_the_mask(tmp_path: Path) -> None:
    with pytest.raises(ImageInputError, match="^The mask 'm.png' could not be found"):
        load_mask(tmp_path / "m.png")


# --- saving, metadata, hashing -------------------------------------------------------------------


def test_save_png_round_trips_metadata(tmp_path: Path) -> None:
    meta = {
        "parameters": "a cat, 'quoted'\nNegative prompt: dog",
        "ipa-studio": '{"prompt": "猫 — café"}',  # not Latin-1: needs an iTXt chunk
    }
    out = save_png(Image.new("RGB", (8, 8), (1, 2, 3)), tmp_path / "sub" / "out.png", meta)

    assert out == tmp_path / "sub" / "out.png"
    assert read_png_metadata(out) == meta
    assert rgb_at(load_image(out), (0, 0)) == (1, 2, 3)
    assert sorted(p.name for p in out.parent.iterdir()) == ["out.png"]


def test_save_png_converts_modes_png_cannot_hold(tmp_path: Path) -> None:
    out = save_png(Image.new("CMYK", (4, 4), (0, 0, 0, 0)), tmp_path / "c.png", {})
    assert load_image(out).getpixel((0, 0)) == (255, 255, 255)


def test_save_png_respects_umask(tmp_path: Path) -> None:
    if os.name != "posix":
        pytest.skip("POSIX permissions")
    out = save_png(Image.new("RGB", (2, 2)), tmp_path / "perm.png", {})
    umask = os.umask(0)
    os.umask(umask)
    assert out.stat().st_mode & 0o777 == 0o666 & ~umask


def test_failed_write_keeps_existing_file_and_leaves_no_temp(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "result.png"
    save_png(Image.new("RGB", (4, 4), (0, 128, 0)), target, {"parameters": "good"})
    good_bytes = target.read_bytes()

    def save_half_then_fail(self: Image.Image, fp: object, *args: object, **kwargs: object) -> None:
        fp.write(b"\x89PNG\r\n\x1a\n half a picture")  # type: ignore[attr-defined]
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Image.Image, "save", save_half_then_fail)
    with pytest.raises(IPAStudioError, match="No space left on device"):
        save_png(Image.new("RGB", (4, 4), (255, 0, 0)), target, {"parameters": "bad"})

    assert target.read_bytes() == good_bytes
    assert [p.name for p in tmp_path.iterdir()] == ["result.png"]


def test_failed_rename_removes_temp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(images.os, "replace", refuse)
    with pytest.raises(IPAStudioError, match="could not be saved"):
        save_png(Image.new("RGB", (4, 4)), tmp_path / "x.png", {})
    assert list(tmp_path.iterdir()) == []


def test_read_png_metadata_of_other_formats_and_non_images(tmp_path: Path) -> None:
    jpg = tmp_path / "photo.jpg"
    Image.new("RGB", (4, 4)).save(jpg)
    assert read_png_metadata(jpg) == {}
    text = tmp_path / "t.png"
    text.write_text("hello")
    with pytest.raises(ImageInputError, match="not an image file"):
        read_png_metadata(text)


def test_content_hash_depends_on_pixels_only(tmp_path: Path) -> None:
    image = Image.new("RGB", (8, 8), (10, 20, 30))
    path = tmp_path / "a.png"
    save_png(image, path, {"parameters": "anything"})

    assert content_hash(load_image(path)) == content_hash(image)
    assert content_hash(image) != content_hash(Image.new("RGB", (8, 8), (10, 20, 31)))
    assert content_hash(image) != content_hash(Image.new("RGB", (4, 16), (10, 20, 30)))
    assert content_hash(image) != content_hash(image.convert("RGBA"))
    assert len(content_hash(image)) == 64
