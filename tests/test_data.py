"""build_splits, fractions, permutations, augmentation and loaders on real data (digits, MNIST test set)."""

from __future__ import annotations

import random

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
import torch

from mixer_core.config import DataConfig, RunConfig
from mixer_core.data import DataError, build_mixup, build_splits, make_loader
from mixer_core.data.facts import dataset_facts, estimated_train_size
from mixer_core.data.fractions import (
    SUBSET_RANK,
    carve_held_out,
    fraction_count,
    in_fraction,
    subset_ranks,
    train_split_size,
    training_positions,
)
from mixer_core.data.permutations import apply_permutation, permutation_index
from shipped_data import MNIST



@pytest.fixture(scope="module")
def mnist_splits():
    return build_splits(DataConfig(name="mnist_idx", path=str(MNIST)))


def test_digits_splits_are_disjoint_normalised_and_cover_the_source():
    splits = build_splits(DataConfig())
    assert (splits.num_classes, splits.image_shape) == (10, (1, 8, 8))
    assert len(splits.train) + len(splits.val) + len(splits.test) == 1797
    assert (len(splits.test), len(splits.val)) == (359, 144)  # test_fraction 0.2 of 1797, val 0.1 of the rest
    assert splits.train_size == len(splits.train)
    keys = [set(split.keys) for split in (splits.train, splits.val, splits.test)]
    assert not (keys[0] & keys[1] or keys[0] & keys[2] or keys[1] & keys[2])
    images, labels = make_loader(splits.test, 512, shuffle=False, seed=0).__iter__().__next__()
    assert images.dtype == torch.float32 and images.shape == (359, 1, 8, 8)
    assert images.min() == -1.0 and images.max() == 1.0
    assert set(labels.tolist()) == set(range(10))


def test_evaluation_keeps_the_first_max_examples_of_validation_and_test_whatever_the_fraction():
    full = build_splits(DataConfig())
    for fraction in (0.1, 1.0):
        bounded = build_splits(DataConfig(fraction=fraction), max_eval_examples=50)
        assert bounded.val.keys == full.val.keys[:50] and bounded.test.keys == full.test.keys[:50]
        assert bounded.train_size == build_splits(DataConfig(fraction=fraction)).train_size


def test_mnist_idx_gives_the_real_test_set_split_and_resized(mnist_splits):
    assert (len(mnist_splits.train), len(mnist_splits.val), len(mnist_splits.test)) == (7200, 800, 2000)
    assert mnist_splits.image_shape == (1, 28, 28)
    image, label = mnist_splits.test[0]
    assert image.shape == (1, 28, 28) and 0 <= label < 10
    resized = build_splits(DataConfig(name="mnist_idx", path=str(MNIST), image_size=32))
    assert resized.image_shape == (1, 32, 32) and resized.test[0][0].shape == (1, 32, 32)
    assert resized.test.keys == mnist_splits.test.keys  # resizing never changes which examples are where


@pytest.mark.parametrize("trial", range(20))
def test_fraction_subsets_are_nested_exact_and_reproducible(trial):
    rng = random.Random(trial)
    keys = [f"shard{rng.randrange(100)}/{rng.getrandbits(40):x}" for _ in range(rng.randrange(50, 5000))]
    keys = list(dict.fromkeys(keys))
    fractions = sorted(rng.uniform(0.01, 1.0) for _ in range(4)) + [1.0]
    ranks = subset_ranks(keys)
    chosen = [set(np.flatnonzero(ranks < fraction).tolist()) for fraction in fractions]
    for smaller, larger in zip(chosen, chosen[1:]):
        assert smaller <= larger
    for fraction, subset in zip(fractions, chosen):
        assert len(subset) == fraction_count(len(keys), fraction)
        assert 0 <= len(subset) - fraction * len(keys) < 1
    # the choice depends on the keys only, not on their order (shards may be listed in any order)
    shuffled = keys[:]
    rng.shuffle(shuffled)
    picked = {shuffled[i] for i in np.flatnonzero(subset_ranks(shuffled) < fractions[0])}
    assert picked == {keys[i] for i in chosen[0]}


def test_train_fractions_are_nested_and_leave_val_and_test_alone(mnist_splits):
    by_fraction = {f: build_splits(DataConfig(name="mnist_idx", path=str(MNIST), fraction=f)) for f in (0.03, 0.1, 0.3)}
    by_fraction[1.0] = mnist_splits
    train_keys = {f: set(splits.train.keys) for f, splits in by_fraction.items()}
    assert train_keys[0.03] < train_keys[0.1] < train_keys[0.3] < train_keys[1.0]
    for fraction, splits in by_fraction.items():
        assert splits.train_size == round(fraction * 7200)
        assert splits.val.keys == mnist_splits.val.keys and splits.test.keys == mnist_splits.test.keys


@pytest.mark.parametrize("fraction", [1.0, 0.1, 0.001])
@pytest.mark.parametrize("name", ["digits", "mnist_idx"])
def test_the_training_size_known_before_loading_is_the_one_build_splits_makes(name, fraction):
    cfg = DataConfig(name=name, path=str(MNIST) if name == "mnist_idx" else None, fraction=fraction, val_fraction=0.15)
    assert dataset_facts(cfg).image_shape == build_splits(cfg).image_shape
    assert estimated_train_size(cfg) == build_splits(cfg).train_size


@pytest.mark.parametrize("has_test_split", [False, True])
@pytest.mark.parametrize("has_val_split", [False, True])
def test_selection_and_sizes_come_from_one_rule_in_memory_on_parquet_and_before_loading(has_test_split, has_val_split):
    keys = [f"example-{index}" for index in range(503)]
    cfg = DataConfig(fraction=0.3, val_fraction=0.15, test_fraction=0.2)
    held_out = carve_held_out(keys, has_test_split, has_val_split, cfg)
    assert (held_out.test is None) == has_test_split and (len(held_out.val) == 0) == has_val_split
    chosen = training_positions(keys, held_out.train, cfg.fraction)
    assert len(chosen) == train_split_size(len(keys), has_test_split, has_val_split, cfg)
    rows = pa.table({SUBSET_RANK: subset_ranks([keys[p] for p in held_out.train])})
    assert rows.filter(in_fraction(pc.field(SUBSET_RANK), cfg.fraction)).num_rows == len(chosen)


def test_permutations_are_fixed_and_keep_the_pixels():
    base = build_splits(DataConfig(name="mnist_idx", path=str(MNIST), image_size=32))
    original = torch.stack([base.test[i][0] for i in range(4)])
    patch = 8
    for kind in ("patches", "pixels_within_patches", "patches_and_pixels_within_patches", "pixels"):
        cfg = DataConfig(name="mnist_idx", path=str(MNIST), image_size=32, permutation=kind, permutation_patch_size=patch)
        splits = build_splits(cfg)
        index = permutation_index(kind, 32, 32, patch, seed=0)
        permuted = torch.stack([splits.test[i][0] for i in range(4)])
        assert torch.equal(permuted, apply_permutation(original, index))
        assert not torch.equal(permuted, original)
        assert torch.equal(torch.sort(permuted.flatten(1)).values, torch.sort(original.flatten(1)).values)
        # train and validation go through the very same permutation
        assert splits.train.permutation is splits.test.permutation is splits.val.permutation
        patches = lambda x: x.unfold(2, patch, patch).unfold(3, patch, patch).reshape(4, -1, patch * patch)
        sorted_patches = lambda x: torch.sort(patches(x), dim=2).values
        if kind == "patches":  # the patches themselves survive, only their order changes
            assert sorted(map(tuple, patches(permuted)[0].tolist())) == sorted(map(tuple, patches(original)[0].tolist()))
        if kind == "pixels_within_patches":  # each patch keeps its place and its pixels
            assert torch.equal(sorted_patches(permuted), sorted_patches(original))
        if kind == "patches_and_pixels_within_patches":  # the paper's "patch + pixel": every patch's pixels,
            moved = sorted(map(tuple, sorted_patches(permuted)[0].tolist()))  # elsewhere, in one new order
            assert moved == sorted(map(tuple, sorted_patches(original)[0].tolist()))
            assert not torch.equal(sorted_patches(permuted), sorted_patches(original))
            within = permutation_index("pixels_within_patches", 32, 32, patch, seed=0)
            assert not torch.equal(index, within) and not torch.equal(index, permutation_index("patches", 32, 32, patch, 0))
    other_seed = permutation_index("pixels", 32, 32, None, seed=1)
    assert not torch.equal(other_seed, permutation_index("pixels", 32, 32, None, seed=0))


def test_patch_permutation_needs_a_patch_size_dividing_the_image():
    with pytest.raises(DataError, match="permutation_patch_size"):
        build_splits(DataConfig(permutation="patches"))
    with pytest.raises(DataError, match="not divisible by patch size 3"):
        build_splits(DataConfig(permutation="patches", permutation_patch_size=3))


def test_a_run_config_permutes_the_mixers_own_patches_unless_it_names_a_size():
    """Every path that reads a run config (in memory, streamed, sweep trial, `mixer train`) gets the size from it."""
    run = RunConfig.model_validate({"model": {"variant": "S/16"}, "data": {"permutation": "patches", "image_size": 32}})
    assert run.data.permuted_patch_size == 16 and build_splits(run.data).image_shape == (1, 32, 32)
    # the dump stays what the user wrote, so another variant re-validated from it gets its own patch size
    dumped = run.model_dump()
    assert dumped["data"]["permutation_patch_size"] is None
    dumped["model"]["variant"] = "Ti/4"
    assert RunConfig.model_validate(dumped).data.permuted_patch_size == 4
    named = RunConfig.model_validate({"data": {"permutation_patch_size": 2}})
    assert named.data.permuted_patch_size == 2
    assert RunConfig.model_validate({"model": {"timm_model": "resnet18"}}).data.permuted_patch_size is None
    data = DataConfig()
    assert RunConfig(data=data).data.permuted_patch_size == 4 and data.permuted_patch_size is None


def test_flip_mirrors_or_keeps_each_image_and_only_train_is_augmented():
    plain = build_splits(DataConfig())
    flipped = build_splits(DataConfig(augment={"flip": True}))
    torch.manual_seed(0)
    images, _ = flipped.train.batch(list(range(256)))
    reference, _ = plain.train.batch(list(range(256)))
    mirrored = torch.tensor([torch.equal(a, b.flip(-1)) for a, b in zip(images, reference)])
    kept = torch.tensor([torch.equal(a, b) for a, b in zip(images, reference)])
    assert bool((mirrored | kept).all()) and 50 < int(mirrored.sum()) < 206
    assert torch.equal(flipped.test.batch([0, 1])[0], plain.test.batch([0, 1])[0])


def test_inception_crop_and_randaugment_give_varied_valid_images():
    cfg = DataConfig(image_size=16, augment={"inception_crop": True, "flip": True, "randaugment_magnitude": 9})
    splits = build_splits(cfg)
    torch.manual_seed(0)
    random.seed(0)
    first, labels = splits.train.batch(list(range(64)))
    second, _ = splits.train.batch(list(range(64)))
    assert first.shape == (64, 1, 16, 16) and torch.isfinite(first).all()
    assert first.min() >= -1.0 and first.max() <= 1.0
    assert not torch.equal(first, second)  # fresh randomness per draw
    assert torch.equal(labels, splits.train.labels[:64])


def test_inception_crop_boxes_follow_the_paper_ranges_and_the_crop_shows_its_box():
    from mixer_core.data.transforms import Augmentation, inception_crop_boxes

    torch.manual_seed(0)
    boxes = inception_crop_boxes(2000, 28, 20)
    top, left, height, width = boxes.unbind(1)
    area = height * width / (28 * 20)
    assert (top >= 0).all() and (left >= 0).all() and (top + height <= 28).all() and (left + width <= 20).all()
    assert area.min() >= 0.08 - 1e-6 and area.max() <= 1.0 + 1e-6
    assert 0.4 < area.mean() < 0.65  # the area is drawn uniformly from [0.08, 1]
    # an image whose pixel value is its column index: each crop must show the columns of its own box
    ramp = torch.arange(20, dtype=torch.uint8).expand(64, 1, 28, 20)
    torch.manual_seed(1)
    top, left, height, width = inception_crop_boxes(64, 28, 20).unbind(1)
    torch.manual_seed(1)
    crops = Augmentation(DataConfig(augment={"inception_crop": True}).augment, 16, 1)(ramp)
    assert crops.shape == (64, 1, 16, 16)
    centre = left + width / 2 - 0.5  # pixel j covers [j, j+1): its value j sits at centre j + 0.5
    assert torch.allclose(crops.mean(dim=(1, 2, 3)), centre, atol=0.05)
    assert (crops.amin(dim=(1, 2, 3)) >= left - 0.5 - 1e-4).all() and (crops.amax(dim=(1, 2, 3)) <= left + width).all()


def test_mixup_comes_from_timm_and_mixes_the_batch():
    assert build_mixup(DataConfig(), 10) is None
    mixup = build_mixup(DataConfig(augment={"mixup": 0.5}), 10)
    images, labels = torch.randn(8, 1, 8, 8), torch.arange(8)
    mixed, targets = mixup(images.clone(), labels)
    assert targets.shape == (8, 10) and torch.allclose(targets.sum(1), torch.ones(8))
    assert not torch.equal(mixed, images)


def test_loader_order_follows_seed_and_epoch():
    splits = build_splits(DataConfig())
    order = lambda loader: torch.cat([labels for _, labels in loader])
    first = make_loader(splits.train, 100, shuffle=True, seed=3)
    again = make_loader(splits.train, 100, shuffle=True, seed=3)
    assert torch.equal(order(first), order(again))
    epoch0 = order(first)
    first.sampler.set_epoch(1)
    assert not torch.equal(order(first), epoch0)
    assert torch.equal(torch.sort(order(first)).values, torch.sort(epoch0).values)
    dropped = make_loader(splits.train, 100, shuffle=False, seed=0, drop_last=True)
    assert len(dropped) == len(splits.train) // 100 and all(len(b[1]) == 100 for b in dropped)


def test_loader_with_workers_gives_the_same_examples():
    splits = build_splits(DataConfig())
    serial = make_loader(splits.val, 64, shuffle=False, seed=0)
    parallel = make_loader(splits.val, 64, shuffle=False, seed=0, num_workers=2)
    serial_images = torch.cat([images for images, _ in serial])
    assert torch.equal(serial_images, torch.cat([images for images, _ in parallel]))


def test_randaugment_magnitudes_above_timms_default_bound_are_applied():
    """timm clips magnitudes at 10 unless raised: the paper's 10, 15 and 20 must give three different images."""
    from mixer_core.config import AugmentConfig
    from mixer_core.data.transforms import Augmentation

    images = build_splits(DataConfig(name="mnist_idx", path=str(MNIST))).train.examples.images[:64]

    def augmented(magnitude: int) -> torch.Tensor:
        random.seed(0)  # the same ops on the same images (timm draws them from both RNGs): only magnitude differs
        np.random.seed(0)
        augment = AugmentConfig(randaugment_magnitude=magnitude, randaugment_layers=2)
        return Augmentation(augment, image_size=28, channels=1)(images)

    by_magnitude = {m: augmented(m) for m in (10, 15, 20)}
    assert torch.equal(augmented(15), by_magnitude[15])  # seeded: the comparison below is about magnitude only
    assert not torch.equal(by_magnitude[10], by_magnitude[15])
    assert not torch.equal(by_magnitude[15], by_magnitude[20])


def test_eval_resize_keeps_the_aspect_and_cuts_the_centre_instead_of_squashing():
    # MNIST is 28x28: resizing the shorter side to 28 keeps every pixel, so the 20x20 centre crop is exact.
    cropped = build_splits(DataConfig(name="mnist_idx", path=str(MNIST), image_size=20, eval_resize=28))
    squashed = build_splits(DataConfig(name="mnist_idx", path=str(MNIST), image_size=20))
    stored = cropped.test.examples.images[cropped.test.positions[:8]].float()
    images, _ = cropped.test.batch(list(range(8)))
    assert torch.allclose(images, stored[..., 4:24, 4:24] / 127.5 - 1.0)
    assert not torch.allclose(images, squashed.test.batch(list(range(8)))[0])
    assert cropped.val.eval_resize == cropped.train.without_augmentation().eval_resize == 28
    with pytest.raises(ValueError, match="eval_resize 16 is smaller than image_size 20"):
        DataConfig(image_size=20, eval_resize=16)
