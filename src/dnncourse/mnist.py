"""Reading MNIST-format (IDX) files from a local path.

Lecture section: "Hyperparameter search, data augmentation" (more data helps; MNIST is
the classic testbed, LeCun et al., 1998). The course never downloads anything: if you
have the four MNIST files (``train-images-idx3-ubyte.gz`` and friends), point
:func:`load_mnist` at their folder; the bundled 8x8 digits
(:func:`dnncourse.datasets.load_digits`) need nothing.

The IDX format (big-endian): a 4-byte magic number ``0x00 0x00 T D`` with the data type
code ``T`` and the number of dimensions ``D``, then ``D`` 4-byte sizes, then the values
in row-major order. Files may be gzip-compressed (detected from their first bytes).
"""

import gzip
import struct
from pathlib import Path

import numpy as np
import torch

from dnncourse.devices import default_device

# IDX type code -> (big-endian numpy dtype, torch dtype)
IDX_TYPES = {
    0x08: (np.dtype(">u1"), torch.uint8),
    0x09: (np.dtype(">i1"), torch.int8),
    0x0B: (np.dtype(">i2"), torch.int16),
    0x0C: (np.dtype(">i4"), torch.int32),
    0x0D: (np.dtype(">f4"), torch.float32),
    0x0E: (np.dtype(">f8"), torch.float64),
}
_GZIP_MAGIC = b"\x1f\x8b"


def _read_bytes(path: Path) -> bytes:
    raw = path.read_bytes()
    if raw[:2] == _GZIP_MAGIC:
        try:
            return gzip.decompress(raw)
        except (OSError, EOFError) as err:
            raise ValueError(f"{path}: looks gzip-compressed but cannot be decompressed") from err
    return raw


def read_idx(path: str | Path) -> torch.Tensor:
    """Read one IDX file (raw or gzip) into a tensor of its stored type and shape.

    Raises ``ValueError`` with the reason when the magic number, the type code, or the
    number of bytes does not fit the format.

    Example:
        >>> labels = read_idx("mnist/train-labels-idx1-ubyte.gz")   # uint8, shape (60000,)
    """
    path = Path(path)
    data = _read_bytes(path)
    if len(data) < 4:
        raise ValueError(f"{path}: {len(data)} bytes, too short for an IDX header")
    zero, type_code, ndim = data[:2], data[2], data[3]
    if zero != b"\x00\x00":
        raise ValueError(
            f"{path}: not an IDX file, the magic number must start with two zero bytes, "
            f"got 0x{data[:4].hex()}"
        )
    if type_code not in IDX_TYPES:
        known = ", ".join(f"0x{c:02X}" for c in IDX_TYPES)
        raise ValueError(f"{path}: unknown IDX type code 0x{type_code:02X} (known: {known})")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise ValueError(f"{path}: header announces {ndim} dimensions but the file ends early")
    shape = struct.unpack(f">{ndim}I", data[4:header])
    np_dtype, torch_dtype = IDX_TYPES[type_code]
    expected = int(np.prod(shape, dtype=np.int64)) * np_dtype.itemsize
    if len(data) - header != expected:
        raise ValueError(
            f"{path}: shape {shape} of {np_dtype.name} needs {expected} bytes of data, "
            f"found {len(data) - header}"
        )
    array = np.frombuffer(data, dtype=np_dtype, offset=header).reshape(shape)
    return torch.from_numpy(array.astype(np_dtype.newbyteorder("="))).to(torch_dtype)


def write_idx(path: str | Path, tensor: torch.Tensor, compress: bool | None = None) -> Path:
    """Write ``tensor`` as an IDX file (gzip if ``compress``, default: name ends in .gz)."""
    path = Path(path)
    codes = {torch_dtype: code for code, (_, torch_dtype) in IDX_TYPES.items()}
    if tensor.dtype not in codes:
        raise ValueError(f"IDX cannot store dtype {tensor.dtype}; use one of {list(codes)}")
    code = codes[tensor.dtype]
    array = tensor.detach().cpu().numpy().astype(IDX_TYPES[code][0])
    data = bytes([0, 0, code, tensor.dim()]) + struct.pack(f">{tensor.dim()}I", *tensor.shape)
    data += array.tobytes()
    compress = path.suffix == ".gz" if compress is None else compress
    path.write_bytes(gzip.compress(data) if compress else data)
    return path


def _find(root: Path, stem: str) -> Path:
    candidates = [root / stem, root / f"{stem}.gz", root / stem.replace("-idx", ".idx")]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(
        f"MNIST file {stem}[.gz] not found in {root} (looked for "
        f"{', '.join(c.name for c in candidates)}); the course does not download data: "
        "copy the files there or use dnncourse.datasets.load_digits()"
    )


def load_mnist(
    root: str | Path,
    split: str = "train",
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Images ``(N, 1, 28, 28)`` scaled to [0, 1] and int64 labels from a local folder.

    Args:
        root: the folder with ``train-images-idx3-ubyte[.gz]``,
            ``train-labels-idx1-ubyte[.gz]``, ``t10k-images-idx3-ubyte[.gz]`` and
            ``t10k-labels-idx1-ubyte[.gz]``.
        split: ``"train"`` (60000 images) or ``"test"`` (the ``t10k`` files).
        device: where the tensors go (default :func:`dnncourse.default_device`).
        dtype: type of the images.

    Example:
        >>> X, y = load_mnist("~/data/mnist", "test")
        >>> X.shape, y[:3]
    """
    prefix = {"train": "train", "test": "t10k"}.get(split)
    if prefix is None:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    root = Path(root).expanduser()
    images = read_idx(_find(root, f"{prefix}-images-idx3-ubyte"))
    labels = read_idx(_find(root, f"{prefix}-labels-idx1-ubyte"))
    if images.dim() != 3 or images.dtype != torch.uint8:
        raise ValueError(
            f"MNIST images must be uint8 (N, H, W), got {images.dtype} {tuple(images.shape)}"
        )
    if labels.dim() != 1 or labels.dtype != torch.uint8:
        raise ValueError(f"MNIST labels must be uint8 (N,), got {labels.dtype} {labels.shape}")
    if len(images) != len(labels):
        raise ValueError(f"{len(images)} images but {len(labels)} labels")
    if len(labels) and int(labels.max()) > 9:
        raise ValueError(f"MNIST labels are digits 0..9, found {int(labels.max())}")
    device = default_device() if device is None else device
    X = (images.to(dtype) / 255.0).unsqueeze(1).to(device)
    return X, labels.long().to(device)


__all__ = ["load_mnist", "read_idx", "write_idx"]
