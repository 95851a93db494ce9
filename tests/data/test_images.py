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
