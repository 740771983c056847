"""Binary images: OMNIGLOT, Burda's chardata.mat, Fashion-MNIST and user arrays, with dynamic binarisation."""

from __future__ import annotations

import functools
import gzip
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from lagvae.config import ConfigError, DataConfig
from lagvae.data.batches import IndexBatches
from lagvae.data.corpus import default_data_root

OMNIGLOT_FILES = ("images_background.npz", "images_evaluation.npz")
OMNIGLOT_SIZES = (24_345, 8_070)  # train (validation included) / test, as in Burda et al.'s chardata.mat
OMNIGLOT_VAL = 1_345  # validation images cut from the training part, as in He et al. (2019)
FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")  # Debian package dataset-fashion-mnist
FASHION_VAL = 5_000
IMAGE_SIZE = 28
_EVAL_SEED_OFFSET = 1  # validation/test are binarised once with data.seed + this (kept apart from the split)


@dataclass
class ImageSet:
    """Images [N, 1, H, W] float32. `dynamic`: values are probabilities, re-binarised at every draw
    (training); otherwise they are already 0/1 (validation and test, binarised once at load time)."""

    images: Tensor
    dynamic: bool = False

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def head(self, n: int) -> ImageSet:
        return ImageSet(self.images[:n], self.dynamic)

    def first(self, n: int) -> Tensor:
        """The first n images as a batch; a dynamic set is binarised with a fixed seed so this is repeatable."""
        return _binarise(self.images[:n], torch.Generator().manual_seed(0)) if self.dynamic else self.images[:n]

    def batches(self, batch_size: int, *, shuffle: bool, generator: torch.Generator | None = None) -> ImageBatches:
        return ImageBatches(self, batch_size, shuffle=shuffle, generator=generator)


def _binarise(probs: Tensor, generator: torch.Generator) -> Tensor:
    """One Bernoulli draw per pixel (dynamic binarisation, Salakhutdinov & Murray 2008)."""
    return torch.bernoulli(probs, generator=generator)


class ImageBatches(IndexBatches):
    """Minibatches of one image split; a dynamic split draws fresh binary pixels from `generator` each time."""

    data: ImageSet

    def _gather(self, idx: Tensor) -> Tensor:
        x = self.data.images[idx]
        return _binarise(x, self.generator) if self.data.dynamic else x


@dataclass
class ImageSplits:
    """Grey-level (probability) arrays of the three splits and a description of how they were made."""

    train: np.ndarray
    val: np.ndarray
    test: np.ndarray
    stats: dict


def to_sets(raw: ImageSplits, seed: int) -> tuple[ImageSet, ImageSet, ImageSet]:
    """Training stays grey (binarised per minibatch); validation and test are binarised once with a fixed seed."""
    gen = torch.Generator().manual_seed(seed + _EVAL_SEED_OFFSET)
    as_tensor = lambda a: torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32)).unsqueeze(1)  # noqa: E731
    return (
        ImageSet(as_tensor(raw.train), dynamic=True),
        ImageSet(_binarise(as_tensor(raw.val), gen)),
        ImageSet(_binarise(as_tensor(raw.test), gen)),
    )


def box_weights(n_in: int, n_out: int) -> np.ndarray:
    """[n_out, n_in] area weights: output cell i averages input [i s, (i+1) s), s = n_in / n_out, with pixels
    weighted by the fraction of them inside the cell (an exact box filter for non-integer ratios)."""
    scale = n_in / n_out
    lo = np.arange(n_out)[:, None] * scale
    px = np.arange(n_in)[None, :]
    overlap = np.clip(np.minimum(lo + scale, px + 1) - np.maximum(lo, px), 0.0, None)
    return (overlap / scale).astype(np.float32)


def downsample(images: np.ndarray, size: int = IMAGE_SIZE, chunk: int = 2048) -> np.ndarray:
    """[N, H, W] -> [N, size, size] grey levels by the box (area-averaging) filter of `box_weights`."""
    rows, cols = box_weights(images.shape[1], size), box_weights(images.shape[2], size)
    out = np.empty((images.shape[0], size, size), dtype=np.float32)
    for start in range(0, len(images), chunk):  # chunks bound the float copy (105x105 floats are 44 kB each)
        part = images[start : start + chunk].astype(np.float32)
        out[start : start + chunk] = rows @ part @ cols.T
    return np.clip(out, 0.0, 1.0, out=out)  # float rounding can overshoot 1 by an ulp; Bernoulli draws need [0, 1]


def _seeded_split(n: int, n_test: int, n_val: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Indices (train, val, test) from one permutation with `seed`: the first n - n_test are the training
    part, whose last n_val are validation; the last n_test are test."""
    order = np.random.default_rng(seed).permutation(n)
    train_part, test = order[: n - n_test], order[n - n_test :]
    return train_part[: len(train_part) - n_val], train_part[len(train_part) - n_val :], test


@functools.lru_cache(maxsize=2)
def _omniglot_28(folder: str) -> np.ndarray:
    """All 32,460 OMNIGLOT images as 28x28 ink probabilities (cached: downsampling takes seconds)."""
    parts = []
    for name in OMNIGLOT_FILES:
        with np.load(Path(folder) / name) as f:
            images = f["images"]
        parts.append(downsample(~images.reshape(-1, *images.shape[-2:])))  # True is background: ink is ~images
    return np.concatenate(parts)


def omniglot_images(config: DataConfig) -> ImageSplits:
    """OMNIGLOT from ../shared/data/omniglot (or data.path: that folder, its parent, or a chardata.mat file).

    The 105x105 originals (background then evaluation set, character-major) are box-filtered to 28x28
    grey levels. One permutation with data.seed orders all 32,460: its last 8,070 are test, the 24,345
    before them are the training part (45 images are left out so the sizes are the paper's), and the last
    1,345 of the training part are validation, leaving 23,000 to train on.
    """
    if config.path and Path(config.path).suffix == ".mat":
        return chardata_images(Path(config.path), config.seed)
    root = Path(config.path) if config.path else default_data_root()
    candidates = [root, root / "omniglot"] if root is not None else []
    folder = next((c for c in candidates if all((c / n).exists() for n in OMNIGLOT_FILES)), None)
    if folder is None:
        where = root / "omniglot" if root is not None else "../shared/data/omniglot"
        raise ConfigError(
            f"OMNIGLOT not found at {where} (needs {' and '.join(OMNIGLOT_FILES)}, see ../shared/data/README.md); "
            "set data.path=FOLDER, or data.path=chardata.mat from Burda et al.'s iwae repository"
        )
    images = _omniglot_28(str(folder))
    n_train, n_test = OMNIGLOT_SIZES
    train, val, test = _seeded_split(n_train + n_test, n_test, OMNIGLOT_VAL, config.seed)
    stats = _stats(f"omniglot {folder}", "box filter 105->28; seeded permutation", images[train], images[val])
    return ImageSplits(images[train], images[val], images[test], {**stats, "test": len(test)})


def chardata_images(path: Path, seed: int) -> ImageSplits:
    """Burda et al.'s chardata.mat: `data` (784 x 24,345) and `testdata` (784 x 8,070), each column one 28x28
    image in Fortran (column-major) order. Validation: the last 1,345 of a seeded permutation of `data`."""
    try:
        from scipy.io import loadmat
    except ImportError:
        raise ConfigError(f"reading {path.name} needs scipy: pip install scipy") from None
    if not path.is_file():
        raise ConfigError(f"data.path {path} does not exist")
    mat = loadmat(str(path))
    missing = [k for k in ("data", "testdata") if k not in mat]
    if missing:
        raise ConfigError(f"{path} lacks {', '.join(missing)}; expected Burda et al.'s chardata.mat")

    def images(columns: np.ndarray) -> np.ndarray:
        return columns.T.reshape(-1, IMAGE_SIZE, IMAGE_SIZE).transpose(0, 2, 1).astype(np.float32)

    train_part, test = images(mat["data"]), images(mat["testdata"])
    order = np.random.default_rng(seed).permutation(len(train_part))
    train, val = train_part[order[:-OMNIGLOT_VAL]], train_part[order[-OMNIGLOT_VAL:]]
    _check_range(train_part, path)
    stats = _stats(f"chardata {path}", "given train/test; validation from a seeded permutation", train, val)
    return ImageSplits(train, val, test, {**stats, "test": len(test)})


def read_idx(path: Path) -> np.ndarray:
    """An IDX file (MNIST format, gzipped or not) as a uint8 array."""
    raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    ndim = raw[3]
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def fashion_mnist_images(config: DataConfig) -> ImageSplits:
    """Fashion-MNIST grey levels / 255 from IDX files (data.path, else /usr/share/datasets/fashion-mnist).

    The 10,000 t10k images are test; validation is the last 5,000 of a seeded permutation of the 60,000 train.
    """
    folder = Path(config.path) if config.path else FASHION_DIR
    found = {}
    for split, stem in (("train", "train-images"), ("test", "t10k-images")):
        hits = sorted(folder.glob(f"{stem}*idx3*")) if folder.is_dir() else []
        if not hits:
            raise ConfigError(
                f"Fashion-MNIST not found in {folder} (no {stem}-idx3-ubyte[.gz]); "
                "apt-get install dataset-fashion-mnist, or set data.path=FOLDER"
            )
        found[split] = read_idx(hits[0]).astype(np.float32) / 255.0
    order = np.random.default_rng(config.seed).permutation(len(found["train"]))
    train, val = found["train"][order[:-FASHION_VAL]], found["train"][order[-FASHION_VAL:]]
    stats = _stats(f"fashion-mnist {folder}", "t10k is test; validation from a seeded permutation", train, val)
    return ImageSplits(train, val, found["test"], {**stats, "test": len(found["test"])})


def _check_range(images: np.ndarray, source: Path | str) -> None:
    if not np.isfinite(images).all():
        raise ConfigError(f"{source} holds NaN or infinite values; pixels must be probabilities in [0, 1]")
    lo, hi = float(images.min()), float(images.max())
    if lo < 0 or hi > 1:
        raise ConfigError(f"{source} has values in [{lo:g}, {hi:g}]; pixels must be in [0, 1] (scale 0-255 by 1/255)")


def read_image_array(path: Path) -> np.ndarray:
    """A user's images as float32 [N, H, W] in [0, 1]: a .npy, a .npz (key `images`, or its only array) or a
    folder of PNGs (grey level = mean of the colour channels, alpha ignored; files in name order)."""
    if not path.exists():
        raise ConfigError(f"image data {path} does not exist (give a .npy, .npz or a folder of PNGs)")
    if path.is_dir():
        import matplotlib.image as mpimg

        files = sorted(path.glob("*.png"))
        if not files:
            raise ConfigError(f"{path} holds no .png files")
        pngs = [mpimg.imread(f) for f in files]
        greys = [p[..., :3].mean(-1) if p.ndim == 3 else p for p in pngs]
        if len({g.shape for g in greys}) > 1:
            raise ConfigError(f"the PNGs in {path} differ in size; every image must have the same height and width")
        images = np.stack(greys)
    elif path.suffix == ".npy":
        images = _load_npy(path)
    elif path.suffix == ".npz":
        with np.load(path, allow_pickle=False) as f:
            keys = list(f.keys())
            if "images" not in keys and len(keys) != 1:
                raise ConfigError(f"{path} holds {keys}; name the array `images` or store only one")
            images = f["images" if "images" in keys else keys[0]]
    else:
        raise ConfigError(f"{path}: expected a .npy, a .npz or a folder of PNGs")
    if images.ndim != 3:
        raise ConfigError(f"{path} has shape {images.shape}; expected N x H x W")
    if images.size == 0:
        raise ConfigError(f"{path} holds no pixels (shape {images.shape}); expected N x H x W images")
    if images.dtype.kind not in "biuf":
        raise ConfigError(f"{path} holds {images.dtype} values; expected numbers in [0, 1]")
    images = images.astype(np.float32)
    _check_range(images, path)
    return images


def _load_npy(path: Path) -> np.ndarray:
    """A .npy file's array; an empty, corrupt or object file is one line saying which (numpy would call random
    bytes "pickled data", which they are not, and an object array would need pickle, which lagvae never runs)."""
    with path.open("rb") as f:
        if f.read(6) != b"\x93NUMPY":
            raise ConfigError(f"{path} is not a .npy file (no NumPy header); it is empty, damaged or of another kind")
    try:
        return np.load(path, allow_pickle=False)
    except ValueError as err:
        if "Object arrays" in str(err) or "pickled" in str(err):
            raise ConfigError(f"{path} holds Python objects, not numbers; save a numeric array (N x H x W)") from None
        raise ConfigError(f"{path} is a damaged .npy file ({str(err).strip()[:120]})") from None
    except (OSError, EOFError) as err:
        raise ConfigError(f"{path} is a damaged .npy file ({str(err).strip()[:120] or type(err).__name__})") from None


def user_images(config: DataConfig) -> ImageSplits:
    """The user's images from data.path. One permutation with data.seed orders them: the last tenth (at least
    one image) is test, the tenth before it validation, the rest training. Non-binary values are probabilities."""
    if not config.path:
        raise ConfigError("the images dataset needs data.path=FILE.npy, FILE.npz or a folder of PNGs")
    images = read_image_array(Path(config.path))
    n = len(images)
    if n < 3:
        raise ConfigError(f"{config.path} holds {n} images; need at least 3 (train, validation, test)")
    n_eval = max(1, n // 10)
    train, val, test = _seeded_split(n, n_eval, n_eval, config.seed)
    split = "seeded permutation: last tenth test, tenth before validation"
    stats = _stats(f"images {config.path}", split, images[train], images[val])
    return ImageSplits(images[train], images[val], images[test], {**stats, "test": len(test)})


def _stats(source: str, split: str, train: np.ndarray, val: np.ndarray) -> dict:
    """What the run folder records about the data; `image_shape` is what sampling needs."""
    shape = list(train.shape[1:])
    return {"source": source, "split": split, "image_shape": shape, "train": len(train), "val": len(val)}
