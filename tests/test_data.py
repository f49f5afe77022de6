"""CIFAR loading, long-tail subsets (SPEC 1) and the synthetic stand-in data."""

import hashlib
import pickle
import warnings
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from drolt.data import (DataError, UnofficialDataWarning, load_cifar, load_long_tail, long_tail_counts,
                        long_tail_indices, write_synthetic_cifar)
from drolt.data import cifar


def real_shaped_labels(num_classes: int, per_class: int, seed: int = 1) -> np.ndarray:
    """Labels with the release's shape: equal class sizes in a shuffled file order."""
    return np.random.RandomState(seed).permutation(np.repeat(np.arange(num_classes), per_class))


def load_quietly(*args, **kwargs):
    with pytest.warns(UnofficialDataWarning):
        return load_long_tail(*args, **kwargs)


# ---- counts ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("num_classes, rho, total", [
    (10, 100, 12406), (10, 50, 13996), (10, 10, 20431), (100, 100, 10847), (100, 50, 12608), (100, 10, 19573)])
def test_exp_counts_give_the_published_cifar_lt_totals(num_classes, rho, total):
    counts = long_tail_counts(num_classes, 50000 // num_classes, 1 / rho)
    assert sum(counts) == total
    assert counts[0] == 50000 // num_classes


def test_exp_counts_per_class_match_spec_for_rho_100():
    assert long_tail_counts(10, 5000, 0.01) == [5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50]
    c100 = long_tail_counts(100, 500, 0.01)
    assert c100[:4] == [500, 477, 455, 434]
    # SPEC says "last five classes 5 each"; the formula (and the published total 10,847) gives 6 for class 95
    assert c100[-5:] == [6, 5, 5, 5, 5] and min(c100) == 5


def test_exp_counts_truncate_instead_of_rounding():
    # 5000 * 0.01 ** (1/9) = 2997.7...: rounding would give 2998
    assert long_tail_counts(10, 5000, 0.01)[1] == 2997


def test_step_profile_keeps_half_the_classes_at_n_max_and_the_rest_at_n_max_over_rho():
    assert long_tail_counts(10, 5000, 0.01, "step") == [5000] * 5 + [50] * 5
    assert long_tail_counts(100, 500, 0.1, "step") == [500] * 50 + [50] * 50
    assert long_tail_counts(5, 100, 0.1, "step") == [100, 100, 10, 10, 10]


@pytest.mark.parametrize("kwargs, words", [
    (dict(imb_factor=0.0), "imb_factor"), (dict(imb_factor=1.5), "imb_factor"), (dict(imb_factor=100), "1/rho"),
    (dict(profile="linear"), "'exp', 'step'"), (dict(num_classes=1), "num_classes"), (dict(n_max=0), "n_max")])
def test_counts_reject_bad_arguments_with_a_message_naming_them(kwargs, words):
    args = dict(num_classes=10, n_max=5000, imb_factor=0.01, profile="exp") | kwargs
    with pytest.raises(ValueError, match=words):
        long_tail_counts(**args)


def test_balanced_factor_keeps_every_image():
    assert long_tail_counts(10, 5000, 1.0) == [5000] * 10


# ---- which images ----------------------------------------------------------------------------------------------

def independent_choice(labels: np.ndarray, counts: list[int], seed: int) -> np.ndarray:
    """SPEC 1 written a second way: a private legacy generator (same stream as np.random.seed) and permutation."""
    rs = np.random.RandomState(seed)
    chosen = []
    for c, n in enumerate(counts):
        members = [i for i, y in enumerate(labels.tolist()) if y == c]  # file order
        order = rs.permutation(len(members))  # permutation(n) is shuffle(arange(n)): the same swaps
        chosen += [members[k] for k in order[:n]]
    return np.array(chosen)


@pytest.mark.parametrize("seed", [0, 7])
def test_indices_match_an_independent_recomputation_of_the_reference_procedure(seed):
    labels = real_shaped_labels(10, 300)
    counts = long_tail_counts(10, 300, 0.02)
    got = long_tail_indices(labels, counts, seed)
    assert got.dtype == np.int64
    np.testing.assert_array_equal(got, independent_choice(labels, counts, seed))


def test_indices_are_class_sorted_with_the_requested_counts():
    labels = real_shaped_labels(10, 5000)
    counts = long_tail_counts(10, 5000, 0.01)
    kept = labels[long_tail_indices(labels, counts, 0)]
    np.testing.assert_array_equal(kept, np.repeat(np.arange(10), counts))


def test_indices_leave_the_global_numpy_generator_as_the_caller_left_it():
    saved = np.random.get_state()
    try:
        np.random.seed(123)
        long_tail_indices(real_shaped_labels(10, 50), long_tail_counts(10, 50, 0.1), 0)
        after = np.random.random(3)
        np.random.seed(123)
        np.testing.assert_array_equal(after, np.random.random(3))
    finally:
        np.random.set_state(saved)


@pytest.mark.parametrize("num_classes, per_class", [(10, 5000), (100, 500)])
def test_subsets_are_nested_across_rho_and_profile(num_classes, per_class):
    labels = real_shaped_labels(num_classes, per_class)
    subsets = {(rho, profile): long_tail_indices(labels, long_tail_counts(num_classes, per_class, 1 / rho, profile), 0)
               for rho in (100, 50, 10) for profile in ("exp", "step")}
    small, medium, large = (set(subsets[rho, "exp"].tolist()) for rho in (100, 50, 10))
    assert small < medium < large
    # each class keeps a prefix of one fixed permutation, so any two subsets agree on their common prefix
    for c in range(num_classes):
        blocks = [idx[labels[idx] == c] for idx in subsets.values()]
        longest = max(blocks, key=len)
        for block in blocks:
            np.testing.assert_array_equal(block, longest[:len(block)])


def test_indices_reject_a_count_larger_than_the_class():
    with pytest.raises(ValueError, match="class 1 has 3 images but 4"):
        long_tail_indices(np.array([0, 0, 0, 0, 1, 1, 1]), [4, 4], 0)


# ---- reading the release layout ------------------------------------------------------------------------------

@pytest.mark.parametrize("name, num_classes, per_test", [("cifar10", 10, 10), ("cifar100", 100, 2)])
def test_load_cifar_reads_the_release_pickle_layout(synthetic_cifar_root, name, num_classes, per_test):
    with pytest.warns(UnofficialDataWarning):
        splits = load_cifar(name, synthetic_cifar_root)
    assert splits.num_classes == num_classes and len(splits.class_names) == num_classes
    assert splits.train_images.shape == (100 * num_classes, 32, 32, 3) and splits.train_images.dtype == np.uint8
    assert splits.test_images.shape == (per_test * num_classes, 32, 32, 3)
    assert splits.train_labels.dtype == np.int64 and splits.test_labels.dtype == np.int64
    assert np.bincount(splits.train_labels).tolist() == [100] * num_classes
    assert np.bincount(splits.test_labels).tolist() == [per_test] * num_classes
    # the release stores CHW rows: its first 1024 bytes are the red plane of image 0
    rel = cifar.RELEASES[name]
    first_file = synthetic_cifar_root / rel.folder / next(iter(rel.train))
    raw = pickle.loads(first_file.read_bytes(), encoding="latin1")
    np.testing.assert_array_equal(splits.train_images[0, :, :, 0], raw["data"][0, :1024].reshape(32, 32))
    assert splits.train_labels[0] == raw[rel.label_key][0]


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_load_long_tail_gives_nchw_uint8_tensors_of_the_chosen_images(synthetic_cifar_root, name):
    data = load_quietly(name, synthetic_cifar_root, rho=10, subset_seed=3)
    with pytest.warns(UnofficialDataWarning):
        splits = load_cifar(name, synthetic_cifar_root)
    n = sum(data.class_counts)
    assert data.class_counts == long_tail_counts(splits.num_classes, 100, 0.1)
    assert data.train_images.shape == (n, 3, 32, 32) and data.train_images.dtype == torch.uint8
    assert data.train_images.is_contiguous() and data.test_images.is_contiguous()
    assert data.train_labels.dtype == torch.int64 and torch.bincount(data.train_labels).tolist() == data.class_counts
    np.testing.assert_array_equal(data.indices, long_tail_indices(splits.train_labels, data.class_counts, 3))
    expected = torch.from_numpy(splits.train_images[data.indices]).permute(0, 3, 1, 2)
    assert torch.equal(data.train_images, expected)
    assert torch.equal(data.test_images, torch.from_numpy(splits.test_images).permute(0, 3, 1, 2))
    assert torch.equal(data.test_labels, torch.from_numpy(splits.test_labels))
    assert (data.rho, data.profile, data.subset_seed, data.source) == (10.0, "exp", 3, "unofficial")


def test_long_tail_data_to_moves_tensors_into_a_copy(synthetic_cifar_root):
    data = load_quietly("cifar10", synthetic_cifar_root, rho=10)
    moved = data.to("meta")
    assert {t.device.type for t in (moved.train_images, moved.train_labels, moved.test_images, moved.test_labels)} \
        == {"meta"}
    assert data.train_images.device.type == "cpu" and moved.class_counts == data.class_counts


def test_load_long_tail_rejects_a_rho_that_empties_a_class(synthetic_cifar_root):
    # n_max = 100: class 8 would keep int(100 * 200 ** (-8/9)) = 0 images
    with pytest.raises(ValueError, match="class 8 without training images"):
        load_quietly("cifar10", synthetic_cifar_root, rho=200)


@pytest.mark.parametrize("kwargs, words", [(dict(rho=0.5), "rho"), (dict(profile="linear"), "profile")])
def test_load_long_tail_rejects_bad_arguments(synthetic_cifar_root, kwargs, words):
    with pytest.raises(ValueError, match=words):
        load_long_tail("cifar10", synthetic_cifar_root, **(dict(rho=100) | kwargs))


def test_unknown_dataset_name_lists_the_choices(tmp_path):
    with pytest.raises(ValueError, match="'cifar10', 'cifar100'"):
        load_cifar("cifar1000", tmp_path)


# ---- provenance: official or not ------------------------------------------------------------------------------

def test_md5_mismatch_warns_once_naming_the_folder_and_marks_unofficial(synthetic_cifar_root):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        splits = load_cifar("cifar10", synthetic_cifar_root)
    unofficial = [w for w in caught if issubclass(w.category, UnofficialDataWarning)]
    assert len(unofficial) == 1
    assert str(synthetic_cifar_root / "cifar-10-batches-py") in str(unofficial[0].message)
    assert "results must say so" in str(unofficial[0].message)
    assert splits.source == "unofficial"


def test_matching_md5_sums_mark_the_data_official_without_warning(synthetic_cifar_root, monkeypatch):
    rel = cifar.RELEASES["cifar100"]
    folder = synthetic_cifar_root / rel.folder
    def md5s(files):
        return {f: hashlib.md5((folder / f).read_bytes()).hexdigest() for f in files}
    monkeypatch.setitem(cifar.RELEASES, "cifar100", replace(rel, train=md5s(rel.train), test=md5s(rel.test)))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert load_cifar("cifar100", synthetic_cifar_root).source == "official"


def test_official_md5_sums_and_urls_match_torchvision():
    from torchvision.datasets import CIFAR10, CIFAR100
    for rel, tv in [(cifar.RELEASES["cifar10"], CIFAR10), (cifar.RELEASES["cifar100"], CIFAR100)]:
        assert rel.train == dict(tv.train_list) and rel.test == dict(tv.test_list)
        assert (rel.folder, rel.url, rel.archive, rel.archive_md5, rel.meta) == \
            (tv.base_folder, tv.url, tv.filename, tv.tgz_md5, tv.meta["filename"])


# ---- missing data and downloads -------------------------------------------------------------------------------

def test_missing_folder_without_download_names_the_folder_and_the_fix(tmp_path):
    with pytest.raises(DataError) as err:
        load_cifar("cifar10", tmp_path)
    message = str(err.value)
    assert str(tmp_path / "cifar-10-batches-py") in message
    assert "download=True" in message and "--download" in message


def test_root_pointing_at_the_dataset_folder_itself_suggests_its_parent(tmp_path):
    with pytest.raises(DataError, match="pass its parent"):
        load_cifar("cifar100", tmp_path / "cifar-100-python")


def test_download_true_fetches_the_official_archive_through_the_download_source(tmp_path, monkeypatch):
    calls = []
    def fake_fetch(url, root, filename, md5):
        calls.append((url, filename, md5))
        write_synthetic_cifar(root, "cifar10", train_per_class=2, test_per_class=1)
    monkeypatch.setattr(cifar, "fetch_archive", fake_fetch)
    with pytest.warns(UnofficialDataWarning):
        splits = load_cifar("cifar10", tmp_path / "new", download=True)
    assert calls == [("https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz", "cifar-10-python.tar.gz",
                      "c58f30108f718f92721af3b95e74349a")]
    assert len(splits.train_labels) == 20
    with pytest.warns(UnofficialDataWarning):
        load_cifar("cifar10", tmp_path / "new", download=True)
    assert len(calls) == 1  # files present: no second download


def test_failed_download_raises_a_data_error_naming_the_url(tmp_path, monkeypatch):
    def broken_fetch(url, root, filename, md5):
        raise OSError("network unreachable")
    monkeypatch.setattr(cifar, "fetch_archive", broken_fetch)
    with pytest.raises(DataError, match="cifar-100-python.tar.gz.*network unreachable") as err:
        load_cifar("cifar100", tmp_path, download=True)
    assert isinstance(err.value.__cause__, OSError)


def test_download_that_leaves_files_missing_raises_a_data_error(tmp_path, monkeypatch):
    monkeypatch.setattr(cifar, "fetch_archive", lambda url, root, filename, md5: None)
    with pytest.raises(DataError, match="still lacks"):
        load_cifar("cifar10", tmp_path, download=True)


# ---- damaged files ---------------------------------------------------------------------------------------------

def rewrite(path: Path, change) -> None:
    entry = pickle.loads(path.read_bytes(), encoding="latin1")
    change(entry)
    path.write_bytes(pickle.dumps(entry))


DAMAGE = {
    "truncated": lambda p: p.write_bytes(p.read_bytes()[: p.stat().st_size // 2]),
    "garbled": lambda p: p.write_bytes(np.random.RandomState(0).bytes(4000)),
    "not_a_dict": lambda p: p.write_bytes(pickle.dumps([1, 2, 3])),
    "missing_labels": lambda p: rewrite(p, lambda e: e.pop("labels")),
    "wrong_shape": lambda p: rewrite(p, lambda e: e.update(data=e["data"].reshape(-1, 3, 32, 32))),
    "float_pixels": lambda p: rewrite(p, lambda e: e.update(data=e["data"].astype(np.float32))),
    "label_out_of_range": lambda p: rewrite(p, lambda e: e["labels"].__setitem__(0, 10)),
    "negative_label": lambda p: rewrite(p, lambda e: e["labels"].__setitem__(0, -1)),
    "labels_shorter_than_data": lambda p: rewrite(p, lambda e: e["labels"].pop()),
    "text_labels": lambda p: rewrite(p, lambda e: e["labels"].__setitem__(0, "cat")),
}


@pytest.mark.parametrize("damage", DAMAGE)
def test_damaged_file_raises_a_data_error_naming_the_file_and_the_fix(tmp_path, damage):
    folder = write_synthetic_cifar(tmp_path, "cifar10", train_per_class=5, test_per_class=2)
    DAMAGE[damage](folder / "data_batch_3")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UnofficialDataWarning)
        with pytest.raises(DataError) as err:
            load_cifar("cifar10", tmp_path)
    message = str(err.value)
    assert str(folder / "data_batch_3") in message and "download" in message


def test_unreadable_pickle_keeps_the_original_error_as_cause(tmp_path):
    folder = write_synthetic_cifar(tmp_path, "cifar10", train_per_class=5, test_per_class=2)
    DAMAGE["truncated"](folder / "test_batch")
    with pytest.raises(DataError, match="truncated or damaged") as err:
        load_cifar("cifar10", tmp_path)
    assert err.value.__cause__ is not None


def test_cifar100_fine_label_out_of_range_raises_a_data_error(tmp_path):
    folder = write_synthetic_cifar(tmp_path, "cifar100", train_per_class=1, test_per_class=1)
    rewrite(folder / "test", lambda e: e["fine_labels"].__setitem__(0, 100))
    with pytest.raises(DataError, match=r"label 100 is outside 0\.\.99"):
        load_cifar("cifar100", tmp_path)


def test_missing_class_names_raise_a_data_error_naming_the_meta_file(tmp_path):
    folder = write_synthetic_cifar(tmp_path, "cifar10", train_per_class=1, test_per_class=1)
    rewrite(folder / "batches.meta", lambda e: e.pop("label_names"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UnofficialDataWarning)
        with pytest.raises(DataError, match="batches.meta"):
            load_cifar("cifar10", tmp_path)


@pytest.mark.parametrize("damaged, split", [("data_batch_1", "training"), ("test_batch", "test")])
def test_unequal_class_sizes_stop_the_long_tail_loader(tmp_path, damaged, split):
    # e.g. a training batch copied over test_batch: the test set the metrics assume is balanced
    folder = write_synthetic_cifar(tmp_path, "cifar10", train_per_class=20, test_per_class=2)
    rewrite(folder / damaged, lambda e: e["labels"].__setitem__(0, (e["labels"][0] + 1) % 10))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UnofficialDataWarning)
        with pytest.raises(DataError, match=f"{split} set .* unequal class sizes"):
            load_long_tail("cifar10", tmp_path, rho=10)


# ---- synthetic data --------------------------------------------------------------------------------------------

def test_synthetic_classes_are_learnable_by_nearest_class_mean(synthetic_cifar_root):
    with pytest.warns(UnofficialDataWarning):
        splits = load_cifar("cifar100", synthetic_cifar_root)
    train = splits.train_images.reshape(len(splits.train_images), -1).astype(np.float32)
    test = splits.test_images.reshape(len(splits.test_images), -1).astype(np.float32)
    means = np.stack([train[splits.train_labels == c].mean(0) for c in range(100)])  # [C, 3072]
    distances = ((test[:, None] - means[None]) ** 2).sum(-1)  # [m, C]
    accuracy = (distances.argmin(1) == splits.test_labels).mean()
    assert accuracy > 0.9  # chance is 0.01


def test_synthetic_writer_is_deterministic_given_the_seed(tmp_path):
    def write(folder, seed):
        out = write_synthetic_cifar(tmp_path / folder, "cifar10", train_per_class=3, test_per_class=1, seed=seed)
        return {p.name: p.read_bytes() for p in sorted(out.iterdir())}
    first, again, other = write("a", 0), write("b", 0), write("c", 1)
    assert set(first) == {"data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5",
                          "test_batch", "batches.meta"}
    assert first == again
    assert first["data_batch_1"] != other["data_batch_1"]


def test_synthetic_cifar100_carries_fine_and_coarse_labels(synthetic_cifar_root):
    folder = synthetic_cifar_root / "cifar-100-python"
    assert sorted(p.name for p in folder.iterdir()) == ["meta", "test", "train"]
    train = pickle.loads((folder / "train").read_bytes(), encoding="latin1")
    meta = pickle.loads((folder / "meta").read_bytes(), encoding="latin1")
    assert len(train["fine_labels"]) == len(train["coarse_labels"]) == 10000
    assert max(train["coarse_labels"]) == 19 and len(meta["coarse_label_names"]) == 20


def test_code_version_marks_changed_code_not_rewritten_results(tmp_path):
    # `make run` rewrites the committed example report under results/: later runs' code is still the commit.
    import subprocess

    from drolt.provenance import code_version

    def git(*args):
        subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=tmp_path, check=True,
                       capture_output=True)
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "report.md").write_text("old\n")
    (tmp_path / "train.py").write_text("lr = 0.1\n")
    git("init", "-q")
    git("add", ".")
    git("commit", "-qm", "first")
    commit = code_version(tmp_path)
    assert len(commit) == 12 and not commit.endswith("+dirty")
    (tmp_path / "results" / "report.md").write_text("rebuilt\n")
    assert code_version(tmp_path) == commit
    (tmp_path / "train.py").write_text("lr = 0.2\n")
    assert code_version(tmp_path) == commit + "+dirty"
