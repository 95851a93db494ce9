import numpy as np
import pytest

from mmedge.data.images import ImagePreprocessing, load_image, looks_inverted, save_png
from mmedge.errors import ImageDecodeError, InputPathError


def test_png_is_loaded_as_scaled_nchw_float(tmp_path):
    pixels = np.zeros((40, 40), np.uint8)
    pixels[10:30, 18:22] = 255
    save_png(pixels, tmp_path / "d.png")
    x = load_image(tmp_path / "d.png", ImagePreprocessing())
    assert x.shape == (1, 1, 28, 28) and x.dtype == np.float32
    assert x.min() >= 0.0 and x.max() <= 1.0 and x.max() > 0.9
    assert not looks_inverted(x)
    assert looks_inverted(load_image(tmp_path / "d.png", ImagePreprocessing(), invert=True))


def test_file_that_is_not_an_image_is_refused(tmp_path):
    (tmp_path / "x.png").write_bytes(b"not an image at all")
    with pytest.raises(ImageDecodeError, match="does not decode"):
        load_image(tmp_path / "x.png", ImagePreprocessing())


def test_missing_image_is_refused(tmp_path):
    with pytest.raises(InputPathError, match="does not exist"):
        load_image(tmp_path / "nope.png", ImagePreprocessing())


def _sideways_jpeg(path):
    """A JPEG stored 32 wide x 16 high, left half white, tagged EXIF orientation 6 (shown turned 90° clockwise:
    16 wide x 32 high, white on top), as phones write portrait photos."""
    from PIL import Image

    pixels = np.zeros((16, 32), np.uint8)
    pixels[:, :16] = 255
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90° clockwise to display
    Image.fromarray(pixels).convert("RGB").save(path, "JPEG", quality=95, exif=exif)
    return path


def test_jpeg_is_turned_upright_by_its_exif_orientation(tmp_path):
    path = _sideways_jpeg(tmp_path / "portrait.jpg")
    x = load_image(path, ImagePreprocessing(height=32, width=16))[0, 0]  # (32, 16), no resize when upright
    assert x[:16].mean() > 0.9 and x[16:].mean() < 0.1  # white on top, as the phone showed it


def test_user_images_are_decoded_upright(tmp_path):
    from mmedge.data.user import decode_rgb

    pixels = decode_rgb(_sideways_jpeg(tmp_path / "portrait.jpg"))
    assert pixels.shape == (32, 16, 3)
    assert pixels[:16].mean() > 230 and pixels[16:].mean() < 25
