"""Camera image decoding of the node's inputs: CompressedImage (JPEG / PNG through Pillow), YUV 4:2:2
and Bayer raw encodings, with clear errors for what cannot be decoded."""

import io

import numpy as np
import pytest
from PIL import Image as PILImage
from sensor_msgs.msg import CompressedImage, Image

from occ_audit_ros import paths
from occ_audit_ros.nodes.conversions import rgb_from_compressed_msg, rgb_from_image_msg




def test_compressed_jpeg_of_the_real_keyframe_and_png():
    path = next((paths.nuscenes_keyframe_dir() / "samples" / "CAM_FRONT").glob("*.jpg"))
    expected = np.asarray(PILImage.open(path).convert("RGB"))
    rgb = rgb_from_compressed_msg(CompressedImage(format="jpeg", data=path.read_bytes()))
    assert rgb.shape == (900, 1600, 3) and np.array_equal(rgb, expected)
    buf = io.BytesIO()
    PILImage.fromarray(expected[:50, :80]).save(buf, format="PNG")
    rgb = rgb_from_compressed_msg(CompressedImage(format="rgb8; png compressed", data=buf.getvalue()))
    assert np.array_equal(rgb, expected[:50, :80])  # lossless
    with pytest.raises(ValueError, match="neither JPEG nor PNG"):
        rgb_from_compressed_msg(CompressedImage(format="jpeg", data=b"garbage"))
    with pytest.raises(ValueError, match="depth image"):
        rgb_from_compressed_msg(CompressedImage(format="16UC1; compressedDepth png", data=buf.getvalue()))
    with pytest.raises(ValueError, match="does not decode"):
        rgb_from_compressed_msg(CompressedImage(format="jpeg", data=path.read_bytes()[:200]))


def _bt601_yuv(rgb: np.ndarray):
    r, g, b = (rgb[..., i].astype(np.float64) for i in range(3))
    y = 16 + 0.257 * r + 0.504 * g + 0.098 * b
    u = 128 - 0.148 * r - 0.291 * g + 0.439 * b
    v = 128 + 0.439 * r - 0.368 * g - 0.071 * b
    return y, u, v


@pytest.mark.parametrize("encoding,order", [("yuv422", "UYVY"), ("yuv422_yuy2", "YUYV")])
def test_yuv422_round_trip(encoding, order):
    rng = np.random.default_rng(0)
    rgb = rng.integers(30, 220, (6, 4, 3)).astype(np.uint8).repeat(2, axis=1)  # pairs share chroma
    y, u, v = _bt601_yuv(rgb)
    packed = np.zeros((6, 4, 4))
    planes = {"Y0": y[:, 0::2], "Y1": y[:, 1::2], "U": u[:, 0::2], "V": v[:, 0::2]}
    names = ["U", "Y0", "V", "Y1"] if order == "UYVY" else ["Y0", "U", "Y1", "V"]
    for i, n in enumerate(names):
        packed[..., i] = planes[n]
    msg = Image(height=6, width=8, encoding=encoding, step=16, data=np.rint(packed).astype(np.uint8).tobytes())
    out = rgb_from_image_msg(msg)
    assert out.shape == (6, 8, 3) and np.abs(out.astype(int) - rgb.astype(int)).max() <= 3


@pytest.mark.parametrize("encoding", ["bayer_rggb8", "bayer_bggr8", "bayer_gbrg8", "bayer_grbg8"])
def test_bayer_demosaic_of_a_flat_colour_and_errors(encoding):
    colour = {"R": 200, "G": 120, "B": 40}
    pattern = encoding.split("_")[1][:4].upper()
    raw = np.zeros((4, 6), np.uint8)
    for k, c in enumerate(pattern):
        raw[k // 2::2, k % 2::2] = colour[c]
    out = rgb_from_image_msg(Image(height=4, width=6, encoding=encoding, step=6, data=raw.tobytes()))
    assert out.shape == (4, 6, 3) and (out == [200, 120, 40]).all()
    with pytest.raises(ValueError, match="not even"):
        rgb_from_image_msg(Image(height=3, width=6, encoding=encoding, step=6, data=raw[:3].tobytes()))
    with pytest.raises(ValueError, match="unsupported colour encoding 'bayer_rggb16'"):
        rgb_from_image_msg(Image(height=4, width=6, encoding="bayer_rggb16", step=12, data=bytes(48)))
