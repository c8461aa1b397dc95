"""Built-in data sets and user data, as float32 tensors (2-D points, or images (N, C, H, W) in [-1, 1])."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..core.errors import UsageError
from ..models.mixture import GaussianMixture, mog3

BUILTIN = ("mog3", "moons", "swissroll", "digits")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")


def mixture(name: str) -> GaussianMixture:
    """The exact mixture behind a built-in name: `mog3` (2-D, the tutorial's) or `mog3d` (3-D, anisotropic)."""
    if name == "mog3d":
        from ..models.mixture import mog3d

        return mog3d()
    if name != "mog3":
        raise UsageError(f"no exact mixture for {name!r} (mog3, mog3d)")
    return mog3()


def load(name: str, n: int | None = None, seed: int = 42, image_size: int | None = None) -> torch.Tensor:
    """A built-in data set by name, or a user file/folder: .npy, .npz, or a folder of images."""
    if name == "mog3":
        # the tutorial's data: 300 points drawn with seed 42
        g = torch.Generator().manual_seed(seed)
        return mog3().sample(300 if n is None else n, generator=g).float()
    if name == "moons":
        from sklearn.datasets import make_moons

        x, _ = make_moons(n_samples=2000 if n is None else n, noise=0.06, random_state=seed)
        return torch.from_numpy(((x - [0.5, 0.25]) * 1.5).astype(np.float32))
    if name == "swissroll":
        from sklearn.datasets import make_swiss_roll

        x, _ = make_swiss_roll(n_samples=2000 if n is None else n, noise=0.4, random_state=seed)
        return torch.from_numpy((x[:, [0, 2]] / 5.0).astype(np.float32))
    if name == "digits":
        x = digits()[0]
        return x if n is None else x[:n]
    if name.startswith("data:"):
        return load_data_uri(name)
    path = Path(name)
    if path.suffix in (".npy", ".npz") and path.is_file():
        return _load_array(path)
    if path.is_dir():
        return load_image_folder(path, image_size)
    raise UsageError(f"unknown dataset {name!r}: use one of {', '.join(BUILTIN)}, a .npy/.npz file or an image folder")


def labels(name: str, n: int | None = None) -> torch.Tensor:
    """Class labels 0 … K−1 of a labelled data set (built-in digits, or an .npz with arrays 'x' and 'y')."""
    path = Path(name)
    if name == "digits":
        y = digits()[1]
    elif path.suffix == ".npz" and path.is_file():
        with np.load(path, allow_pickle=False) as z:
            if "y" not in z:
                raise UsageError(f"{path} has no 'y' array of class labels")
            arr = z["y"]
        if arr.dtype.kind not in "iu" or arr.ndim != 1 or (arr.size and arr.min() < 0):
            raise UsageError(f"{path}: 'y' must be a 1-D array of non-negative integer labels")
        y = torch.from_numpy(arr.astype(np.int64))
    else:
        raise UsageError(f"{name!r} has no class labels: conditional training takes digits or an .npz with x and y")
    return y if n is None else y[:n]


def digits() -> tuple[torch.Tensor, torch.Tensor]:
    """sklearn's 8×8 digits as (N, 1, 8, 8) in [-1, 1] and their labels."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.from_numpy((d.images / 16.0 * 2.0 - 1.0).astype(np.float32))[:, None]
    return x, torch.from_numpy(d.target.astype(np.int64))


def _load_array(path: Path) -> torch.Tensor:
    try:
        if path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as z:
                keys = list(z.keys())
                if not keys:
                    raise UsageError(f"{path} holds no arrays")
                arr = z["x"] if "x" in keys else z[keys[0]]
        else:
            arr = np.load(path, allow_pickle=False)
    except ValueError as e:
        raise UsageError(f"cannot read {path}: {e}") from None
    return _rows_of(arr, str(path))


def _rows_of(arr: np.ndarray, where: str) -> torch.Tensor:
    """A numeric, finite (N, ...) array as float32 rows; one line naming `where` otherwise."""
    if arr.dtype.kind not in "fiu" or arr.ndim < 2 or arr.shape[0] < 1:
        raise UsageError(f"{where}: expected a numeric array (N, ...) with N >= 1, got {arr.dtype} {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise UsageError(f"{where} contains NaN or inf")
    return torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32))


#: what a base64 data URI may hold (uploads to the server): one image, or an .npy array (never unpickled)
DATA_URI_TYPES = ("image/png", "image/jpeg", "application/x-npy")


def load_data_uri(uri: str) -> torch.Tensor:
    """`data:TYPE;base64,PAYLOAD` as rows: a PNG/JPEG image as (1, C, H, W) in [-1, 1], or an .npy array."""
    import base64
    import binascii
    import io

    head, sep, payload = uri.partition(",")
    kind = head[5:].removesuffix(";base64")
    if not sep or not head.endswith(";base64") or kind not in DATA_URI_TYPES:
        raise UsageError(f"a data URI is data:TYPE;base64,PAYLOAD with TYPE one of {', '.join(DATA_URI_TYPES)}")
    try:
        raw = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise UsageError("the data URI's payload is not valid base64") from None
    if kind == "application/x-npy":
        try:
            arr = np.load(io.BytesIO(raw), allow_pickle=False)
        except (ValueError, OSError, EOFError) as e:
            raise UsageError(f"the data URI holds no readable .npy array ({str(e).splitlines()[0]})") from None
        return _rows_of(arr, "the data URI's array")
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(raw)) as im:
            arr = _image_array(im, None)
    except (UnidentifiedImageError, OSError) as e:
        raise UsageError(f"the data URI holds no readable {kind} image ({type(e).__name__})") from None
    return _images_tensor([arr])


def _image_array(im, image_size: int | None) -> np.ndarray:
    """A PIL image as an (H, W) or (H, W, 3) float32 array, resized when asked."""
    from PIL import Image

    im = im.convert("L" if im.mode in ("L", "1", "I", "F") else "RGB")
    if image_size is not None:
        im = im.resize((image_size, image_size), Image.BICUBIC)
    return np.asarray(im, dtype=np.float32)


def _images_tensor(arrays: list[np.ndarray]) -> torch.Tensor:
    x = np.stack(arrays)
    x = x[:, None] if x.ndim == 3 else x.transpose(0, 3, 1, 2)
    return torch.from_numpy(x / 127.5 - 1.0)


def load_image_folder(path: Path, image_size: int | None = None) -> torch.Tensor:
    """All images in a folder, resized to image_size (if given), as (N, C, H, W) in [-1, 1]."""
    from PIL import Image

    files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise UsageError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {path}")
    arrays, modes = [], set()
    for f in files:
        try:
            with Image.open(f) as im:
                arrays.append(_image_array(im, image_size))
                modes.add(arrays[-1].ndim)
        except OSError as e:
            raise UsageError(f"cannot read image {f}: {e}") from None
    if len(modes) > 1:
        raise UsageError(f"{path} mixes grayscale and colour images; convert them or pass one kind")
    shapes = {a.shape for a in arrays}
    if len(shapes) > 1:
        raise UsageError(f"images in {path} have mixed sizes {sorted(shapes)}; pass --image-size to resize")
    return _images_tensor(arrays)
