"""BucketBatchSampler: similar lengths per batch, exact coverage, equal shards, determinism, resume."""

from __future__ import annotations

import random

import pytest

from captioner.data.sampler import BucketBatchSampler
from captioner.errors import CheckpointError, ConfigError

_rng = random.Random(0)
LENGTHS = [_rng.randint(5, 30) for _ in range(1000)]


def spread(batches: list[list[int]]) -> float:
    return sum(max(LENGTHS[i] for i in b) - min(LENGTHS[i] for i in b) for b in batches) / len(batches)


def test_batches_have_near_uniform_lengths_and_cover_epoch_once():
    sampler = BucketBatchSampler(LENGTHS, batch_size=16, seed=1, chunk_batches=20)
    batches = list(sampler)
    assert len(batches) == len(sampler) == 63
    assert sorted(i for b in batches for i in b) == list(range(1000))
    unbucketed = list(BucketBatchSampler(LENGTHS, batch_size=16, seed=1, bucket=False))
    assert spread(batches) <= 2 < 15 < spread(unbucketed)


def test_deterministic_per_seed_and_epoch():
    a, b = BucketBatchSampler(LENGTHS, 16, seed=3), BucketBatchSampler(LENGTHS, 16, seed=3)
    assert list(a) == list(b)
    a.set_epoch(1)
    assert list(a) != list(b)
    b.set_epoch(1)
    assert list(a) == list(b)
    assert list(BucketBatchSampler(LENGTHS, 16, seed=4)) != list(BucketBatchSampler(LENGTHS, 16, seed=3))


@pytest.mark.parametrize("n, drop_last", [(1000, False), (1000, True), (96, False), (100, True)])
def test_shards_are_disjoint_and_equal_length(n, drop_last):
    ranks = [
        BucketBatchSampler(LENGTHS[:n], 16, seed=0, num_replicas=2, rank=r, drop_last=drop_last)
        for r in (0, 1)
    ]
    shards = [list(s) for s in ranks]
    assert len(shards[0]) == len(shards[1]) == len(ranks[0]) == len(ranks[1])
    seen = [[i for b in s for i in b] for s in shards]
    if n == 96:  # 6 full batches split evenly: disjoint and covering exactly
        assert not set(seen[0]) & set(seen[1])
        assert sorted(seen[0] + seen[1]) == list(range(n))
    elif drop_last:  # whole batches dropped to equalise: disjoint, no repeats
        assert not set(seen[0]) & set(seen[1]) and all(len(b) == 16 for s in shards for b in s)
    else:  # 63 batches -> one repeated to make 64: everything covered
        assert set(seen[0]) | set(seen[1]) == set(range(n))


def test_resume_mid_epoch_continues_exactly():
    full = BucketBatchSampler(LENGTHS, 16, seed=5)
    full.set_epoch(2)
    expected = list(full)
    state = full.state_dict(batches_done=10)
    resumed = BucketBatchSampler(LENGTHS, 16, seed=5)
    resumed.load_state_dict(state)
    resumed.set_epoch(2)  # the loop calls set_epoch for the resumed epoch; the offset is kept
    assert len(resumed) == len(expected) - 10
    assert list(resumed) == expected[10:]
    assert len(resumed) == len(expected)  # next pass is a full epoch again
    with pytest.raises(CheckpointError, match="batch_size"):
        BucketBatchSampler(LENGTHS, 32, seed=5).load_state_dict(state)


def test_invalid_arguments_raise_config_error():
    with pytest.raises(ConfigError, match="rank=2"):
        BucketBatchSampler(LENGTHS, 16, num_replicas=2, rank=2)
    with pytest.raises(ConfigError, match="batch_size=0"):
        BucketBatchSampler(LENGTHS, 0)


def test_image_batches_hold_whole_images_about_batch_size_captions_sharded_and_resumable():
    from captioner.data.sampler import ImageBatchSampler

    images = [k // 5 for k in range(500)]  # 100 images x 5 captions, items of an image together
    _rng.shuffle(images)  # ... or anywhere: the sampler finds each image's items
    sampler = ImageBatchSampler(images, batch_size=32, seed=0)
    batches = list(sampler)
    assert sampler.state_dict()["batch_size"] == 6  # round(32 / 5) images a batch
    assert len(batches) == len(sampler) == 17 and sorted(i for b in batches for i in b) == list(range(500))
    for b in batches:
        owners = [images[i] for i in b]
        assert all(owners.count(o) == 5 for o in owners)  # every caption of each image it holds
        assert owners == sorted(owners, key=owners.index)  # an image's items come one after another
    assert sorted(len(b) for b in batches) == [20] + [30] * 16  # the one short batch is shuffled in too
    again = ImageBatchSampler(images, batch_size=32, seed=0)
    again.set_epoch(1)
    assert list(again) != batches and list(ImageBatchSampler(images, batch_size=32, seed=0)) == batches
    shards = [list(ImageBatchSampler(images, 32, seed=0, num_replicas=2, rank=r)) for r in (0, 1)]
    assert len(shards[0]) == len(shards[1]) == 9
    assert not {images[i] for b in shards[0][:8] for i in b} & {images[i] for b in shards[1][:8] for i in b}
    resumed = ImageBatchSampler(images, batch_size=32, seed=0)
    resumed.load_state_dict(sampler.state_dict(batches_done=4))
    assert list(resumed) == batches[4:]


def test_image_batches_are_bucketed_by_each_images_longest_caption():
    """A batch is padded to its longest caption: images bucketed by theirs pad little (shapes scenes of
    1-4 objects: unbucketed image batches ran the decoder at half the captions/s)."""
    from captioner.data.sampler import ImageBatchSampler

    images = [k // 5 for k in range(1000)]  # 200 images x 5 captions
    _rng.shuffle(images)
    longest = {o: _rng.randint(5, 30) for o in range(200)}
    lengths = [longest[o] - _rng.randint(0, 2) * (k % 2) for k, o in enumerate(images)]
    per_image = {o: max(n for n, p in zip(lengths, images) if p == o) for o in range(200)}

    def padding(sampler):
        return sum(max(lengths[i] for i in b) * len(b) - sum(lengths[i] for i in b) for b in sampler)

    bucketed = ImageBatchSampler(images, 32, lengths=lengths, seed=0)
    plain = ImageBatchSampler(images, 32, seed=0)
    batches = list(bucketed)
    assert sorted(i for b in batches for i in b) == list(range(1000))  # whole images, each once
    for b in batches:
        owners = {images[i] for i in b}
        assert all(sum(images[i] == o for i in b) == 5 for o in owners)
    spread = [max(per_image[images[i]] for i in b) - min(per_image[images[i]] for i in b) for b in batches]
    assert sum(spread) / len(spread) < 3 and padding(bucketed) < padding(plain) / 3
    assert list(ImageBatchSampler(images, 32, lengths=lengths, seed=0, bucket=False)) == list(plain)
    with pytest.raises(ConfigError, match="999 lengths for 1000 items"):
        ImageBatchSampler(images, 32, lengths=lengths[:-1])


def test_once_per_image_yields_every_image_once_an_epoch_as_its_first_item_and_resumes():
    from captioner.data.sampler import OncePerImageSampler

    images = [k // 5 for k in range(500)]  # 100 images x 5 captions
    _rng.shuffle(images)
    first = {}
    for i, owner in enumerate(images):
        first.setdefault(owner, i)
    sampler = OncePerImageSampler(images, batch_size=16, seed=0)
    batches = list(sampler)
    assert len(batches) == len(sampler) == 7 and sorted(len(b) for b in batches) == [4] + [16] * 6
    assert sorted(i for b in batches for i in b) == sorted(first.values())  # each image once, first item
    assert all(len({images[i] for i in b}) == len(b) for b in batches)  # distinct images in a batch
    sampler.set_epoch(1)
    assert list(sampler) != batches  # reshuffled per epoch
    resumed = OncePerImageSampler(images, batch_size=16, seed=0)
    resumed.load_state_dict(OncePerImageSampler(images, 16, seed=0).state_dict(batches_done=3))
    assert list(resumed) == batches[3:]
    with pytest.raises(ConfigError, match="no items"):
        OncePerImageSampler([], 4)
