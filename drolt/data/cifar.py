"""CIFAR-10 / CIFAR-100 python releases: find, download, verify and read them into NumPy arrays."""

from __future__ import annotations

import hashlib
import pickle
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np


class DataError(Exception):
    """A data folder or file the user must fix; the message names it, the problem and the fix."""


class UnofficialDataWarning(UserWarning):
    """The files read are not the official release (md5 differs): results from them must say so."""


@dataclass(frozen=True)
class Release:
    """Where one official release lives on the web and on disk, and how its pickles are keyed."""

    title: str
    folder: str
    url: str
    archive: str
    archive_md5: str
    train: dict[str, str]  # file name -> official md5, in reading order
    test: dict[str, str]
    meta: str
    label_key: str
    names_key: str
    num_classes: int


# URLs and md5 sums are torchvision's CIFAR10 / CIFAR100 class attributes (a test pins the match); they are
# written out here because importing torchvision.datasets costs about a second on every load.
RELEASES = {
    "cifar10": Release(
        title="CIFAR-10", folder="cifar-10-batches-py",
        url="https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz", archive="cifar-10-python.tar.gz",
        archive_md5="c58f30108f718f92721af3b95e74349a",
        train={"data_batch_1": "c99cafc152244af753f735de768cd75f", "data_batch_2": "d4bba439e000b95fd0a9bffe97cbabec",
               "data_batch_3": "54ebc095f3ab1f0389bbae665268c751", "data_batch_4": "634d18415352ddfa80567beed471001a",
               "data_batch_5": "482c414d41f54cd18b22e5b47cb7c3cb"},
        test={"test_batch": "40351d587109b95175f43aff81a1287e"},
        meta="batches.meta", label_key="labels", names_key="label_names", num_classes=10),
    "cifar100": Release(
        title="CIFAR-100", folder="cifar-100-python",
        url="https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz", archive="cifar-100-python.tar.gz",
        archive_md5="eb9058c3a382ffc7106e4002c42a8d85",
        train={"train": "16019d7e3df5f24257cddd939b257f8d"},
        test={"test": "f0ef6b0ae62326f3e7ffdfab6717acfc"},
        meta="meta", label_key="fine_labels", names_key="fine_label_names", num_classes=100),
}


@dataclass
class CifarSplits:
    """A full CIFAR release in memory: images uint8 [N, 32, 32, 3] (HWC), labels int64 [N]."""

    name: str
    num_classes: int
    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    class_names: list[str]
    source: str  # "official" when every data file's md5 matches the release, else "unofficial"


def release(name: str) -> Release:
    """Returns the release description for a dataset name ("cifar10" or "cifar100")."""
    if name not in RELEASES:
        raise ValueError(f"unknown dataset {name!r}: choose one of {', '.join(repr(k) for k in RELEASES)}")
    return RELEASES[name]


def fetch_archive(url: str, root: Path, filename: str, md5: str) -> None:
    """Downloads the official archive into root and extracts it there (tests swap this for a fake source)."""
    from torchvision.datasets.utils import download_and_extract_archive  # lazy: a slow import, rarely needed

    download_and_extract_archive(url, download_root=str(root), filename=filename, md5=md5)


def load_cifar(name: str, root: str | Path, download: bool = False) -> CifarSplits:
    """Returns the train and test splits read from <root>/cifar-10-batches-py/ or <root>/cifar-100-python/."""
    if problem := missing_data(name, root, download):
        raise DataError(problem)
    rel = release(name)
    root = Path(root).expanduser()
    folder = root / rel.folder
    if _missing_files(rel, folder):
        _download(rel, root)
        if missing := _missing_files(rel, folder):
            raise DataError(f"the {rel.title} download into {root} finished but {folder} still lacks "
                            f"{', '.join(missing)}. Delete {folder} and try again.")
    unofficial: list[str] = []
    train_images, train_labels = _read_split(rel, folder, rel.train, unofficial)
    test_images, test_labels = _read_split(rel, folder, rel.test, unofficial)
    class_names = _read_class_names(rel, folder / rel.meta)
    if unofficial:
        warnings.warn(f"{folder} is not the official {rel.title} release (md5 differs for {', '.join(unofficial)}; "
                      "e.g. the JPEG-rebuilt copy or synthetic files): results must say so, they are recorded "
                      "with source='unofficial'.", UnofficialDataWarning, stacklevel=2)
    return CifarSplits(name=name, num_classes=rel.num_classes, train_images=train_images, train_labels=train_labels,
                       test_images=test_images, test_labels=test_labels, class_names=class_names,
                       source="unofficial" if unofficial else "official")


def missing_data(name: str, root: str | Path, download: bool = False) -> Optional[str]:
    """Returns why `load_cifar` would stop for want of files (some missing, no download asked for), or None."""
    rel = release(name)
    root = Path(root).expanduser()
    missing = _missing_files(rel, root / rel.folder)
    return _not_found_message(rel, root, root / rel.folder, missing) if missing and not download else None


def _missing_files(rel: Release, folder: Path) -> list[str]:
    return [f for f in [*rel.train, *rel.test, rel.meta] if not (folder / f).is_file()]


# How a user asks for the download, in each of the ways drolt is run.
DOWNLOAD = "--download for drolt train, data: {download: true} in a grid or config file"


def _not_found_message(rel: Release, root: Path, folder: Path, missing: list[str]) -> str:
    hint = f" ({root} is itself named {rel.folder}: pass its parent {root.parent}.)" if root.name == rel.folder else ""
    return (f"{rel.title} not found: looked in {folder} (missing: {', '.join(missing)}). Pass download=True "
            f"({DOWNLOAD}) to fetch the official release into {root}, or point the data "
            f"folder to the directory that contains {rel.folder}/.{hint}")


def _download(rel: Release, root: Path) -> None:
    try:
        fetch_archive(rel.url, root, rel.archive, rel.archive_md5)
    except Exception as err:  # network, disk, checksum or archive failures all call for the same user action
        raise DataError(f"downloading {rel.title} from {rel.url} into {root} failed ({type(err).__name__}: {err}). "
                        f"Check the network and free disk space, or fetch {rel.archive} by hand and extract it "
                        f"in {root} so that {root / rel.folder} exists.") from err


def _read_split(rel: Release, folder: Path, files: dict[str, str],
                unofficial: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Returns images [N, 32, 32, 3] and labels [N] of a split's files; appends files whose md5 differs."""
    images, labels = [], []
    for file, official_md5 in files.items():
        entry, md5 = _unpickle(folder / file)
        batch_images, batch_labels = _check_batch(rel, folder / file, entry)
        images.append(batch_images)
        labels.append(batch_labels)
        if md5 != official_md5:
            unofficial.append(file)
    return np.concatenate(images), np.concatenate(labels)  # concatenate copies into contiguous arrays


def _fix(path: Path) -> str:
    return f"Delete {path.parent} and download it again ({DOWNLOAD})."


def _unpickle(path: Path) -> tuple[dict, str]:
    """Returns the file's pickled dict and the md5 of its bytes."""
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise DataError(f"{path} could not be read ({err}). Check the file's permissions.") from err
    try:
        entry = pickle.loads(raw, encoding="latin1")  # the release was pickled by Python 2
    except Exception as err:  # a damaged pickle can raise almost anything (EOFError, UnpicklingError, ValueError...)
        raise DataError(f"{path} is not a readable CIFAR pickle, it is truncated or damaged "
                        f"({type(err).__name__}: {err}). {_fix(path)}") from err
    if not isinstance(entry, dict):
        raise DataError(f"{path} holds a {type(entry).__name__}, not the dict of a CIFAR batch file. {_fix(path)}")
    return entry, hashlib.md5(raw).hexdigest()


def _check_batch(rel: Release, path: Path, entry: dict) -> tuple[np.ndarray, np.ndarray]:
    """Returns a batch file's images [n, 32, 32, 3] and labels int64 [n] after checking keys, shapes and ranges."""
    for key in ("data", rel.label_key):
        if key not in entry:
            raise DataError(f"{path} has no {key!r} entry (it has {sorted(entry)}), so it is not a {rel.title} "
                            f"batch file. {_fix(path)}")
    data = entry["data"]
    if not (isinstance(data, np.ndarray) and data.dtype == np.uint8 and data.ndim == 2 and data.shape[1] == 3072):
        got = f"{data.dtype} {list(data.shape)}" if isinstance(data, np.ndarray) else type(data).__name__
        raise DataError(f"{path}: 'data' should be a uint8 array [n, 3072], got {got}. {_fix(path)}")
    try:
        labels = np.asarray(entry[rel.label_key], dtype=np.int64)
    except (TypeError, ValueError) as err:
        raise DataError(f"{path}: {rel.label_key!r} is not a list of integers ({err}). {_fix(path)}") from err
    if labels.shape != (len(data),):
        raise DataError(f"{path}: {rel.label_key!r} has shape {list(labels.shape)} but there are {len(data)} "
                        f"images (one label each expected). {_fix(path)}")
    outside = labels[(labels < 0) | (labels >= rel.num_classes)]
    if len(outside):
        raise DataError(f"{path}: label {outside[0]} is outside 0..{rel.num_classes - 1} ({len(outside)} such "
                        f"labels), so this is not {rel.title}. {_fix(path)}")
    return data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), labels  # CHW rows -> [n, 32, 32, 3]


def _read_class_names(rel: Release, path: Path) -> list[str]:
    entry, _ = _unpickle(path)
    names = entry.get(rel.names_key)
    if not (isinstance(names, list) and len(names) == rel.num_classes and all(isinstance(n, str) for n in names)):
        raise DataError(f"{path}: {rel.names_key!r} should be a list of {rel.num_classes} class names, "
                        f"got {type(names).__name__}. {_fix(path)}")
    return names
