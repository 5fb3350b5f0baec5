"""Decoding untrusted bytes: every served format to RGB, orientation applied, hostile files refused exactly."""

from __future__ import annotations

import io
import os
import struct
import sys
import warnings
import zlib
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from PIL import Image

from handler.decode import SERVED_FORMATS, configure_pillow, decode, sniff_format
from handler.exceptions import BadRequestError, PayloadTooLargeError, UnsupportedMediaTypeError

ORIENTATION = 0x0112


def encode(image: Image.Image, fmt: str, **params: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **params)
    return buffer.getvalue()


def solid(colour: tuple[int, ...], size: tuple[int, int] = (40, 30), mode: str = "RGB") -> Image.Image:
    return Image.new(mode, size, colour)


def centre(image: Image.Image) -> tuple[int, ...]:
    return image.getpixel((image.width // 2, image.height // 2))  # type: ignore[return-value]


def close(actual: tuple[int, ...], expected: tuple[int, ...], tolerance: int = 6) -> bool:
    return all(abs(a - e) <= tolerance for a, e in zip(actual, expected))


@pytest.mark.parametrize("fmt", SERVED_FORMATS)
def test_each_served_format_decodes_to_rgb(fmt: str) -> None:
    # GIVEN an orange 40x30 image in a served format
    data = encode(solid((230, 120, 20)), fmt)
    # WHEN decoded
    image = decode(data).image
    # THEN it is an RGB image of the same size and colour
    assert image.mode == "RGB" and image.size == (40, 30)
    assert close(centre(image), (230, 120, 20), tolerance=12)


@pytest.mark.parametrize("orientation, size", [(1, (40, 20)), (3, (40, 20)), (6, (20, 40)), (8, (20, 40))])
def test_exif_orientation_is_applied(orientation: int, size: tuple[int, int]) -> None:
    # GIVEN a 40x20 JPEG, red on its left half, tagged with an EXIF orientation
    pixels = np.zeros((20, 40, 3), np.uint8)
    pixels[:, :20] = (255, 0, 0)
    exif = Image.Exif()
    exif[ORIENTATION] = orientation
    data = encode(Image.fromarray(pixels), "JPEG", exif=exif.tobytes(), quality=95)
    # WHEN decoded
    image = decode(data).image
    # THEN the pixels are upright: rotated 90 degrees for 6/8, and red lands where the tag says
    assert image.size == size
    top_left = centre(image.crop((0, 0, 4, 4)))
    red_top_left = {1: True, 3: False, 6: True, 8: False}[orientation]  # 6: turn clockwise
    assert (top_left[0] > 200 and top_left[1] < 60) is red_top_left


def test_large_jpeg_is_decoded_at_reduced_size_but_never_below_the_target() -> None:
    # GIVEN a 2000x1500 JPEG photo
    data = encode(Image.fromarray(np.random.default_rng(0).integers(0, 255, (1500, 2000, 3), np.uint8)), "JPEG")
    # WHEN decoded with a 224x224 draft target
    image = decode(data, draft=(224, 224)).image
    # THEN libjpeg scaled it down (1/4 here) and both edges still cover the target
    assert image.size == (500, 375)
    # AND without a draft target it is decoded in full
    assert decode(data).image.size == (2000, 1500)
    # AND `decode` says which happened (the preprocessing's bit-exact resize is for full decodes only)
    assert decode(data, draft=(224, 224)).reduced and not decode(data).reduced
    assert not decode(encode(Image.new("RGB", (300, 200)), "JPEG"), draft=(224, 224)).reduced  # under 2x


def test_draft_target_follows_the_exif_rotation() -> None:
    # GIVEN a 1600x400 landscape JPEG tagged as rotated (orientation 6: upright it is 400x1600)
    exif = Image.Exif()
    exif[ORIENTATION] = 6
    data = encode(solid((10, 200, 10), (1600, 400)), "JPEG", exif=exif.tobytes())
    # WHEN decoded toward an upright 100x400 (w x h) target
    image = decode(data, draft=(100, 400)).image
    # THEN the reduction (1/4) was computed on the rotated axes: upright and exactly the target
    # (on the unrotated axes the height would be under twice the target and nothing reduced: 400x1600)
    assert image.size == (100, 400)


def test_pixel_limit_is_checked_on_the_header_even_when_decoding_reduced() -> None:
    # GIVEN a 2000x1500 (3 MP) JPEG that a 224x224 draft would decode at 500x375
    data = encode(solid((40, 80, 120), (2000, 1500)), "JPEG")
    # WHEN decoded with the draft and a 1 MP limit
    # THEN 413: the limit is on the image sent, not on the pixels the reduced decode would make
    with pytest.raises(PayloadTooLargeError) as caught:
        decode(data, draft=(224, 224), max_pixels=1_000_000)
    assert caught.value.code == "image_too_large" and "2000x1500" in caught.value.message


def test_truncated_jpeg_is_refused_when_decoding_reduced() -> None:
    # GIVEN a noisy 1200x900 JPEG cut at two thirds (libjpeg at 1/4 scale still reads every byte)
    noisy = Image.fromarray(np.random.default_rng(2).integers(0, 255, (900, 1200, 3), np.uint8))
    data = encode(noisy, "JPEG")
    # WHEN decoded with a draft target  THEN not_an_image, never a partly grey picture
    with pytest.raises(BadRequestError) as caught:
        decode(data[: len(data) * 2 // 3], draft=(224, 224))
    assert caught.value.code == "not_an_image"


def test_large_grayscale_jpeg_is_reduced_and_becomes_rgb() -> None:
    # GIVEN a 1000x800 grayscale JPEG
    data = encode(solid(77, (1000, 800), mode="L"), "JPEG")  # type: ignore[arg-type]
    # WHEN decoded toward 224x224  THEN reduced to 1/2 and RGB grey
    image = decode(data, draft=(224, 224)).image
    assert image.size == (500, 400) and image.mode == "RGB" and close(centre(image), (77, 77, 77), tolerance=2)


def test_large_cmyk_jpeg_becomes_rgb_with_a_draft_target() -> None:
    # GIVEN a 1000x800 CMYK JPEG of pure magenta (the draft applies to RGB and L only)
    data = encode(solid((0, 255, 0, 0), (1000, 800), mode="CMYK"), "JPEG", quality=95)
    # WHEN decoded toward 224x224  THEN RGB magenta, whole
    image = decode(data, draft=(224, 224)).image
    assert image.mode == "RGB" and image.size == (1000, 800) and close(centre(image), (255, 0, 255), tolerance=10)


def test_small_jpeg_is_not_reduced() -> None:
    # GIVEN a JPEG less than twice the target on one edge
    data = encode(solid((0, 0, 255), (400, 300)), "JPEG")
    # WHEN decoded with a 224x224 target  THEN full size
    assert decode(data, draft=(224, 224)).image.size == (400, 300)


def test_cmyk_jpeg_becomes_rgb() -> None:
    # GIVEN a CMYK JPEG of pure cyan
    data = encode(solid((255, 0, 0, 0), mode="CMYK"), "JPEG", quality=95)
    # WHEN decoded  THEN RGB cyan
    image = decode(data).image
    assert image.mode == "RGB" and close(centre(image), (0, 255, 255), tolerance=10)


def test_sixteen_bit_grayscale_png_is_scaled_not_clipped() -> None:
    # GIVEN a 16-bit grayscale PNG at half intensity (32768 of 65535)
    data = encode(Image.fromarray(np.full((8, 8), 32768, np.uint16)), "PNG")
    assert Image.open(io.BytesIO(data)).mode.startswith("I")
    # WHEN decoded  THEN mid-grey (Pillow's own convert would clip it to white)
    assert decode(data).image.getpixel((1, 1)) == (128, 128, 128)


def test_sixteen_bit_rgb_png_decodes() -> None:
    # GIVEN a 16-bit-per-channel RGB PNG written by hand (Pillow cannot write one)
    height, width = 4, 6
    rows = b"".join(b"\x00" + struct.pack(">HHH", 65535, 32768, 0) * width for _ in range(height))
    data = _png(width, height, bit_depth=16, colour_type=2, raw=rows)
    # WHEN decoded  THEN 8-bit RGB of the same colour
    image = decode(data).image
    assert image.mode == "RGB" and close(centre(image), (255, 128, 0), tolerance=1)


def test_palette_png_transparency_is_composited_on_white() -> None:
    # GIVEN a palette PNG whose left half uses a fully transparent palette entry
    image = Image.new("P", (20, 10), 1)
    image.putpalette([0, 0, 0, 200, 30, 30] + [0] * 762)
    image.paste(0, (0, 0, 10, 10))
    data = encode(image, "PNG", transparency=0)
    # WHEN decoded
    decoded = decode(data).image
    # THEN transparent pixels are white and opaque ones keep their colour
    assert decoded.getpixel((2, 5)) == (255, 255, 255)
    assert decoded.getpixel((15, 5)) == (200, 30, 30)


@pytest.mark.parametrize("mode, colour", [("RGBA", (0, 0, 255, 0)), ("LA", (0, 0))])
def test_alpha_is_composited_on_white(mode: str, colour: tuple[int, ...]) -> None:
    # GIVEN a fully transparent image with an alpha channel  WHEN decoded  THEN white
    assert decode(encode(solid(colour, mode=mode), "PNG")).image.getpixel((3, 3)) == (255, 255, 255)


@pytest.mark.parametrize("mode, colour", [("L", 90), ("1", 1)])
def test_grayscale_and_bilevel_become_rgb(mode: str, colour: int) -> None:
    image = decode(encode(solid(colour, mode=mode), "PNG")).image  # type: ignore[arg-type]
    expected = 90 if mode == "L" else 255
    assert image.mode == "RGB" and image.getpixel((0, 0)) == (expected,) * 3


def test_animated_gif_gives_its_first_frame() -> None:
    # GIVEN a two-frame GIF: red, then blue
    frames = [solid((255, 0, 0)), solid((0, 0, 255))]
    buffer = io.BytesIO()
    frames[0].save(buffer, "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    # WHEN decoded  THEN the first frame (red)
    assert close(centre(decode(buffer.getvalue()).image), (255, 0, 0))


def test_progressive_jpeg_and_grayscale_jpeg() -> None:
    assert decode(encode(solid((20, 40, 60)), "JPEG", progressive=True)).image.mode == "RGB"
    assert decode(encode(solid(128, mode="L"), "JPEG")).image.getpixel((1, 1)) == (128, 128, 128)  # type: ignore[arg-type]


@pytest.mark.parametrize("size", [(30000, 1), (1, 1), (1, 30000)])
def test_extreme_aspect_ratios_decode(size: tuple[int, int]) -> None:
    # GIVEN a 30000x1 (or 1x1) PNG  WHEN decoded  THEN it is served, not refused
    assert decode(encode(solid((1, 2, 3), size), "PNG")).image.size == size


def test_image_that_is_also_something_else_is_decoded_as_the_image() -> None:
    # GIVEN a JPEG with a ZIP archive appended (a polyglot)
    data = encode(solid((9, 9, 9)), "JPEG") + b"PK\x03\x04" + os.urandom(64)
    # WHEN decoded  THEN the image part is what counts
    assert decode(data).image.size == (40, 30)


def test_decompression_bomb_header_is_refused_before_decoding() -> None:
    # GIVEN a tiny PNG whose header claims 100000x100000 pixels
    data = _png(100_000, 100_000, bit_depth=1, colour_type=0, raw=b"\x00" * 10)
    assert len(data) < 200
    # WHEN decoded  THEN 413 image_too_large (and no 10-gigapixel allocation)
    with pytest.raises(PayloadTooLargeError) as caught:
        decode(data)
    assert caught.value.code == "image_too_large"


def test_pixel_limit_is_configurable() -> None:
    # GIVEN a 100x100 image and a 5000-pixel limit  WHEN decoded  THEN image_too_large
    with pytest.raises(PayloadTooLargeError) as caught:
        decode(encode(solid((0, 0, 0), (100, 100)), "PNG"), max_pixels=5000)
    assert caught.value.code == "image_too_large" and "5,000" in caught.value.message


def test_pillow_bomb_warning_is_an_error_too(monkeypatch: pytest.MonkeyPatch) -> None:
    # GIVEN Pillow's own guard set to 2000 pixels (it only *warns* between 2000 and 4000)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 2000)
    # WHEN a 50x50 = 2500-pixel image is decoded with a generous limit of our own
    # THEN the warning is treated as a refusal
    with pytest.raises(PayloadTooLargeError):
        decode(encode(solid((0, 0, 0), (50, 50)), "PNG"), max_pixels=10**9)


def test_the_warning_band_is_refused_whatever_the_warning_filters(monkeypatch: pytest.MonkeyPatch) -> None:
    # GIVEN Pillow's guard at 2000 pixels and every DecompressionBombWarning ignored (filters are
    # process-wide: another thread, or a library, may have changed them)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 2000)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        # WHEN a 2500-pixel image is decoded  THEN it is still refused, naming Pillow's limit
        with pytest.raises(PayloadTooLargeError) as caught:
            decode(encode(solid((0, 0, 0), (50, 50)), "PNG"), max_pixels=10**9)
    assert caught.value.code == "image_too_large" and "2,000" in caught.value.message


def test_configure_pillow_sets_the_limit_and_makes_the_warning_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    # GIVEN a configured limit (the filter it installs is undone with the test's warning state)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", Image.MAX_IMAGE_PIXELS)
    with warnings.catch_warnings():
        warnings.simplefilter("default")
        configure_pillow(3000)
        # THEN Pillow uses it, and its warning band raises instead of warning
        assert Image.MAX_IMAGE_PIXELS == 3000
        with pytest.raises(Image.DecompressionBombWarning):
            Image.open(io.BytesIO(encode(solid((0, 0, 0), (60, 60)), "PNG")))


def test_two_threads_decoding_at_once_each_get_their_own_answer(monkeypatch: pytest.MonkeyPatch) -> None:
    # GIVEN Pillow's guard at 2000 pixels: a 50x50 PNG is in its warning band (a bomb to us),
    # a 40x30 one is fine; no process-wide "error" filter, so only decode's own check counts
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 2000)
    bomb, good = encode(solid((0, 0, 0), (50, 50)), "PNG"), encode(solid((1, 2, 3)), "PNG")

    def answer(data: bytes) -> str:
        try:
            return f"{decode(data, max_pixels=10**9).image.size}"
        except PayloadTooLargeError as exc:
            return exc.code

    # WHEN two threads decode them at the same time, many times over, switching threads often
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with ThreadPoolExecutor(max_workers=2) as pool:
                answers = list(pool.map(answer, [bomb, good] * 1000))
    finally:
        sys.setswitchinterval(interval)
    # THEN every bomb is refused and every good image decoded, never one the other's answer
    assert answers == ["image_too_large", "(40, 30)"] * 1000


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_truncated_images_are_not_an_image(fmt: str) -> None:
    # GIVEN a noisy image cut in half
    noisy = Image.fromarray(np.random.default_rng(1).integers(0, 255, (64, 64, 3), np.uint8))
    data = encode(noisy, fmt)
    # WHEN decoded  THEN not_an_image (never half an image)
    with pytest.raises(BadRequestError) as caught:
        decode(data[: len(data) // 2])
    assert caught.value.code == "not_an_image"


@pytest.mark.parametrize("data", [
    b"",
    os.urandom(512),
    b"hello, I am a dog",
    b"<!doctype html><html><body>dog</body></html>",
    b"%PDF-1.7\n1 0 obj\n<<>>\nendobj\n",
    b'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"/>',
    b"BM this is not a bitmap at all, only text",
    b"\xff\xd8\xff" + b"\x00" * 40,
    b"\x89PNG\r\n\x1a\n" + b"\x00" * 40,
    b"GIF89a" + b"\x01" * 20,
    b"RIFF\x10\x00\x00\x00WEBPVP8 " + b"\x00" * 10,
])
def test_non_images_are_not_an_image(data: bytes) -> None:
    # GIVEN bytes that are not a decodable served image (empty, random, text, HTML, PDF, SVG, fake headers)
    # WHEN decoded  THEN 400 not_an_image
    with pytest.raises(BadRequestError) as caught:
        decode(data)
    assert caught.value.status == 400 and caught.value.code == "not_an_image"


@pytest.mark.parametrize("data, fmt", [
    (encode(solid((1, 2, 3)), "TIFF"), "TIFF"),
    (b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic", "HEIC"),
    (b"\x00\x00\x00\x1cftypavif\x00\x00\x00\x00avifmif1", "AVIF"),
    (b"\x00\x00\x01\x00\x01\x00\x10\x10", "ICO/PSD"),
])
def test_recognised_but_unserved_formats_are_415(data: bytes, fmt: str) -> None:
    # GIVEN a TIFF, HEIC, AVIF or ICO file
    assert sniff_format(data) == fmt
    # WHEN decoded  THEN 415: a real image, but a format this function does not serve
    with pytest.raises(UnsupportedMediaTypeError) as caught:
        decode(data)
    assert caught.value.status == 415 and fmt in caught.value.message


def _png(width: int, height: int, *, bit_depth: int, colour_type: int, raw: bytes) -> bytes:
    """A PNG built chunk by chunk, so its header can say anything."""
    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    header = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")
