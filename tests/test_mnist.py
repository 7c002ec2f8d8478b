"""The IDX reader on small files written byte by byte in the test."""

import gzip
import struct

import pytest
import torch

from dnncourse.mnist import load_mnist, read_idx, write_idx


def _idx_bytes(type_code, shape, payload):
    return bytes([0, 0, type_code, len(shape)]) + struct.pack(f">{len(shape)}I", *shape) + payload


def test_reads_raw_and_gzip_ubyte_files(tmp_path):
    payload = bytes(range(6))
    raw = tmp_path / "a-idx2-ubyte"
    raw.write_bytes(_idx_bytes(0x08, (2, 3), payload))
    zipped = tmp_path / "a-idx2-ubyte.gz"
    zipped.write_bytes(gzip.compress(_idx_bytes(0x08, (2, 3), payload)))
    for path in (raw, zipped):
        t = read_idx(path)
        assert t.dtype == torch.uint8 and t.shape == (2, 3)
        assert t.tolist() == [[0, 1, 2], [3, 4, 5]]


def test_big_endian_multi_byte_types(tmp_path):
    path = tmp_path / "ints"
    path.write_bytes(_idx_bytes(0x0C, (2,), struct.pack(">2i", -2, 70000)))
    assert read_idx(path).tolist() == [-2, 70000]
    path.write_bytes(_idx_bytes(0x0E, (1,), struct.pack(">d", 0.1)))
    t = read_idx(path)
    assert t.dtype == torch.float64 and t.item() == 0.1


@pytest.mark.parametrize("dtype", [torch.uint8, torch.int16, torch.float32])
def test_write_read_round_trip(tmp_path, dtype):
    t = (torch.arange(24).reshape(2, 3, 4) - 5).clamp(min=0 if dtype == torch.uint8 else -5)
    t = t.to(dtype)
    for name in ("x.idx", "x.idx.gz"):
        back = read_idx(write_idx(tmp_path / name, t))
        assert back.dtype == dtype and torch.equal(back, t)


def test_clear_errors_for_broken_files(tmp_path):
    path = tmp_path / "bad"
    path.write_bytes(b"\x01\x02\x08\x01" + struct.pack(">I", 1) + b"\x00")
    with pytest.raises(ValueError, match="two zero bytes"):
        read_idx(path)
    path.write_bytes(_idx_bytes(0x0A, (1,), b"\x00"))
    with pytest.raises(ValueError, match="unknown IDX type code 0x0A"):
        read_idx(path)
    path.write_bytes(_idx_bytes(0x08, (2, 3), bytes(5)))
    with pytest.raises(ValueError, match="needs 6 bytes of data, found 5"):
        read_idx(path)
    path.write_bytes(_idx_bytes(0x08, (2,), bytes(3)))
    with pytest.raises(ValueError, match="needs 2 bytes of data, found 3"):
        read_idx(path)
    path.write_bytes(b"\x00\x00\x08\x03\x00")
    with pytest.raises(ValueError, match="ends early"):
        read_idx(path)
    path.write_bytes(b"\x1f\x8bnot really gzip")
    with pytest.raises(ValueError, match="gzip"):
        read_idx(path)


def _write_mnist(root, split, images, labels, gz=True):
    prefix = "train" if split == "train" else "t10k"
    suffix = ".gz" if gz else ""
    write_idx(root / f"{prefix}-images-idx3-ubyte{suffix}", images)
    write_idx(root / f"{prefix}-labels-idx1-ubyte{suffix}", labels)


def test_load_mnist_scales_images_and_checks_consistency(tmp_path):
    images = torch.randint(0, 256, (5, 28, 28), dtype=torch.uint8)
    labels = torch.tensor([0, 9, 3, 3, 1], dtype=torch.uint8)
    _write_mnist(tmp_path, "test", images, labels, gz=False)
    X, y = load_mnist(tmp_path, "test", device="cpu")
    assert X.shape == (5, 1, 28, 28) and X.dtype == torch.float32
    torch.testing.assert_close(X[:, 0] * 255, images.float())
    assert y.dtype == torch.int64 and y.tolist() == [0, 9, 3, 3, 1]
    _write_mnist(tmp_path, "train", images, labels[:4])
    with pytest.raises(ValueError, match="5 images but 4 labels"):
        load_mnist(tmp_path, "train", device="cpu")
    _write_mnist(tmp_path, "train", images, torch.tensor([0, 1, 2, 3, 12], dtype=torch.uint8))
    with pytest.raises(ValueError, match=r"0\.\.9"):
        load_mnist(tmp_path, "train", device="cpu")


def test_load_mnist_missing_files_and_bad_split(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not download"):
        load_mnist(tmp_path, "train")
    with pytest.raises(ValueError, match="split"):
        load_mnist(tmp_path, "validation")
