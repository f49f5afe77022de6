import pytest
import torch

from drolt.sampling import ClassAwareSampler, ShuffledEpochs, batches, make_sampler, parse_sampler

COUNTS = [50, 20, 7, 3]


def _labels(counts=COUNTS):
    # Interleave classes so a sampler cannot rely on a class-sorted dataset.
    labels = torch.cat([torch.full((n,), c) for c, n in enumerate(counts)])
    return labels[torch.randperm(len(labels), generator=torch.Generator().manual_seed(5))]


def test_pass_length_is_max_count_times_classes_and_last_batch_is_short():
    sampler = ClassAwareSampler(_labels(), 4, samples_per_class=4, seed=0)
    stream = sampler.next_pass()
    assert len(stream) == 50 * 4
    sizes = [len(b) for b in batches(stream, 128)]
    assert sizes == [128, 72]


def test_cifar_lt_pass_is_391_batches_of_128():
    counts = [5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50]
    sampler = ClassAwareSampler(_labels(counts), 10, 4, seed=0)
    sizes = [len(b) for b in batches(sampler.next_pass(), 128)]
    assert len(sizes) == 391 and sizes[-1] == 50000 - 390 * 128


def test_stream_is_made_of_k_blocks_of_one_class_each():
    labels = _labels()
    stream = ClassAwareSampler(labels, 4, 4, seed=1).next_pass()
    blocks = labels[stream].view(-1, 4)
    assert (blocks == blocks[:, :1]).all()


def test_class_order_cycles_through_every_class_before_repeating():
    labels = _labels()
    stream = ClassAwareSampler(labels, 4, 4, seed=2).next_pass()
    block_classes = labels[stream].view(-1, 4)[:48, 0].view(-1, 4)  # 4 classes per cycle
    assert all(sorted(row.tolist()) == [0, 1, 2, 3] for row in block_classes)


def test_each_class_iterator_visits_all_its_images_before_repeating_across_passes():
    labels = _labels()
    sampler = ClassAwareSampler(labels, 4, 4, seed=3)
    stream = torch.cat([sampler.next_pass() for _ in range(3)])
    rare = stream[labels[stream] == 3]            # class 3 has 3 images
    wraps = rare[: len(rare) // 3 * 3].view(-1, 3)
    members = torch.nonzero(labels == 3).flatten().sort().values
    assert all(torch.equal(row.sort().values, members) for row in wraps)
    # re-shuffled at each wrap: not every wrap in the same order
    assert len({tuple(row.tolist()) for row in wraps}) > 1


def test_state_dict_resumes_the_exact_stream():
    labels = _labels()
    a = ClassAwareSampler(labels, 4, 4, seed=4)
    a.next_pass()
    state = a.state_dict()
    expected = a.next_pass()
    b = ClassAwareSampler(labels, 4, 4, seed=99)
    b.load_state_dict(state)
    assert torch.equal(b.next_pass(), expected)


def test_same_seed_same_stream_and_different_seed_differs():
    labels = _labels()
    first = ClassAwareSampler(labels, 4, 4, seed=7).next_pass()
    assert torch.equal(first, ClassAwareSampler(labels, 4, 4, seed=7).next_pass())
    assert not torch.equal(first, ClassAwareSampler(labels, 4, 4, seed=8).next_pass())


def test_shuffled_epochs_are_permutations_and_resume_exactly():
    s = ShuffledEpochs(10, seed=0)
    p = s.next_pass()
    assert sorted(p.tolist()) == list(range(10))
    state = s.state_dict()
    expected = s.next_pass()
    t = ShuffledEpochs(10, seed=1)
    t.load_state_dict(state)
    assert torch.equal(t.next_pass(), expected)


def test_sampler_names_parse_and_bad_names_are_rejected_with_the_allowed_forms():
    assert parse_sampler("resample,4") == ("resample", 4)
    assert isinstance(make_sampler("shuffle", _labels(), 4, 0), ShuffledEpochs)
    with pytest.raises(ValueError, match="resample,K"):
        parse_sampler("resample4")


def test_class_with_no_image_is_a_clear_error():
    with pytest.raises(ValueError, match=r"classes \[2\]"):
        ClassAwareSampler(torch.tensor([0, 1, 3]), 4, 4, seed=0)


def test_a_units_initialisation_sampling_and_augmentation_draw_different_numbers():
    # Generators seeded alike draw alike, and on a CPU all three are one algorithm: with one seed for all,
    # a unit's shuffle order repeated the numbers of its initial weights and of its augmentation.
    from drolt.seeds import stream_seed
    from drolt.training import augment_generator
    seed = 3
    torch.manual_seed(stream_seed(seed, "init"))  # as train_stage1 seeds a unit's model
    init = torch.rand(8)
    augment = torch.rand(8, generator=augment_generator(torch.device("cpu"), seed))
    for sampler in (ShuffledEpochs(100, seed), ClassAwareSampler(torch.arange(10).repeat(3), 10, 4, seed)):
        order = torch.rand(8, generator=sampler.gen)
        assert not torch.equal(order, init) and not torch.equal(order, augment)
    assert not torch.equal(init, augment)
