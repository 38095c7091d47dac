"""helpers.keep and sample --closed/--within: keeping only the images that measure as asked."""
import numpy as np
import pytest
import torch

from helpers import data, metrics
from helpers.keep import KeepError, Tally, Wanted, kept_batches, next_size, parse_within, samples_tile
from helpers.unet import SeedUNet, UNet

RANGE = "voronoi_gb_range_64"


@pytest.fixture(scope="module")
def real():
    """Eight real images of the range set, in [-1, 1], with their manifest's grain counts."""
    return data.load_images(RANGE, limit=8), data.manifest_values(RANGE, ["grains"], limit=8)[:, 0]


def opened(image: torch.Tensor) -> torch.Tensor:
    """``image`` with a 3x3 gap cut into one of its boundaries: a network that is no longer closed."""
    mask = image[0].numpy() > 0
    for row, col in np.argwhere(mask):
        if 4 <= row < 60 and 4 <= col < 60:
            cut = image.clone()
            cut[0, row - 1:row + 2, col - 1:col + 2] = -1.0
            if metrics.measure("dangling_ends", cut[0].numpy() > 0) > 0:
                return cut
    raise AssertionError("no boundary to cut")


def test_measure_gives_what_describe_gives_for_every_descriptor(real):
    masks = metrics.boundary_masks(data.to_uint8(real[0].numpy()[:, 0]))
    for mask in masks[:3]:
        assert {name: metrics.measure(name, mask) for name in metrics.DESCRIPTORS} == metrics.describe(mask)
    with pytest.raises(ValueError, match="unknown descriptor 'size'; expected one of boundary_fraction, grains"):
        metrics.measure("size", masks[0])


def test_images_are_kept_by_their_measured_grains_and_closed_networks(real):
    images, grains = real
    assert Wanted().keeps(images).all() and not Wanted() and Wanted().describe() == "every image"
    assert Wanted(closed=True).keeps(images).all()  # real networks are closed
    for tolerance in (0, 3, 10):
        wanted = Wanted(within={"grains": (grains[0], tolerance)})
        assert np.array_equal(wanted.keeps(images), np.abs(grains - grains[0]) <= tolerance)
    broken = opened(images[0])
    both = torch.stack([images[0], broken])
    blank, solid = torch.full((1, 64, 64), -1.0), torch.full((1, 64, 64), 1.0)  # no network to be closed
    assert not Wanted(closed=True).keeps(torch.stack([blank, solid])).any()
    assert np.array_equal(Wanted(closed=True).keeps(both), [True, False])
    assert np.array_equal(Wanted(within={"grains": (grains[0], 100)}).keeps(both), [True, True])
    assert Wanted(True, {"grains": (30.0, 1.0)}).describe() == "closed networks, grains within 1 of 30"


def test_a_network_open_across_the_seam_is_kept_as_closed_only_where_the_images_do_not_tile(real):
    # two vertical boundaries that loop through the top and bottom seam, and a third that runs from
    # the second to the right edge, where, tiled, nothing meets it: one dangling end, on the seam
    mask = np.zeros((64, 64), dtype=bool)
    mask[:, 10] = mask[:, 40] = True
    mask[30, 40:] = True
    assert metrics.measure("dangling_ends", mask) == 0 and metrics.torus_dangling_ends(mask) == 1
    assert metrics.measure("grains", mask) >= 2
    seam = torch.from_numpy(np.where(mask, 1.0, -1.0)).float()[None]
    images = torch.stack([real[0][0], seam])
    assert np.array_equal(Wanted(closed=True).keeps(images), [True, True])
    assert np.array_equal(Wanted(closed=True, tiles=True).keeps(images), [True, False])  # real ones tile closed
    assert not Wanted(closed=True, tiles=True).keeps(opened(real[0][0])[None]).any()
    # whose samples tile: a periodic UNet's (the shipped ones'), not a zero-padded one's or SeedUNet's
    small = dict(size=16, widths=(8, 16))
    assert samples_tile(UNet(**small)) and not samples_tile(UNet(**small, periodic=False))
    assert not samples_tile(SeedUNet(size=16))


def test_within_is_read_against_the_conditions_asked_for():
    assert parse_within(["grains=1.5"], {"grains": 30.0}) == {"grains": (30.0, 1.5)}
    assert parse_within([], {}) == {}
    for items, targets, message in (
            (["grains=1"], {}, "--within grains=1: expected NAME=TOLERANCE with NAME a condition given with "
                               "--condition (given: none)"),
            (["grains=1", "grains=2"], {"grains": 30.0}, "--within grains=2: grains is given twice"),
            (["size=1"], {"grains": 30.0}, "(given: grains)"),
            (["porosity=1"], {"porosity": 0.2}, "porosity is not a descriptor helpers.metrics measures"),
            (["grains=x"], {"grains": 30.0}, "expected NAME=TOLERANCE with a finite number >= 0, e.g. grains=1"),
            (["grains=-1"], {"grains": 30.0}, "a finite number >= 0"),
            (["grains=nan"], {"grains": 30.0}, "a finite number >= 0"),
            (["grains=inf"], {"grains": 30.0}, "a finite number >= 0")):
        with pytest.raises(KeepError, match=message.replace("(", r"\(").replace(")", r"\)")):
            parse_within(items, targets)


def test_the_next_batch_is_sized_by_the_pass_rate_so_far():
    assert next_size(64, Tally(), 64, 1280) == 64 and next_size(64, Tally(drawn=64), 64, 1280) == 64  # none passed
    assert next_size(64, Tally(drawn=64, passed=58, kept=58), 64, 1280) == 9  # 6 more at 58/64: 6.6, a quarter more
    assert next_size(64, Tally(drawn=64, passed=16, kept=16), 64, 1280) == 64  # 240 wanted: at most a batch
    assert next_size(64, Tally(drawn=64, passed=16, kept=16), 256, 1280) == 240
    assert next_size(64, Tally(drawn=64, passed=16, kept=16), 64, 100) == 36  # at most what the limit leaves
    assert next_size(10, Tally(drawn=10, passed=10, kept=9), 10, 200) == 2


def test_kept_batches_keep_in_order_draw_no_more_than_needed_and_stop_at_the_limit(real):
    images = real[0]
    broken = torch.stack([opened(image) for image in images[:4]])
    pool = [images[0], broken[0], images[1], broken[1], images[2], broken[2], images[3], broken[3]]
    asked = []

    def draw(number, size):  # the pool in order: closed, open, closed, open ...
        asked.append((number, size))
        start = sum(size for _, size in asked[:-1])
        return torch.stack(pool[start:start + size])

    tally = Tally()
    out = list(kept_batches(draw, 3, Wanted(closed=True), most=100, batch_size=3, tally=tally))
    assert [first for first, _ in out] == [0, 2]
    assert torch.equal(torch.cat([kept for _, kept in out]), images[:3])
    # a batch of three; then 1 more wanted at 2 of 3 passed: 1.25 x 1 / (2/3) = 1.9, so two are drawn
    assert asked == [(0, 3), (1, 2)] and (tally.drawn, tally.passed, tally.kept, tally.rate()) == (5, 3, 3, 0.6)
    assert tally.describe() == "3 of 5 drawn passed (60%)"
    for n, most, sizes, kept in ((2, 100, [2, 2], 2),  # 2.5 wanted after the first batch: at most a batch of 2
                                 (5, 5, [4, 1], 3),  # the second batch cut to what the limit leaves
                                 (5, 4, [4], 2)):  # the limit reached with the first: stop
        asked.clear()
        short = Tally()
        out = list(kept_batches(draw, n, Wanted(closed=True), most=most, batch_size=min(4, n), tally=short))
        assert [size for _, size in asked] == sizes and (short.drawn, short.kept) == (sum(sizes), kept)
        assert torch.equal(torch.cat([kept for _, kept in out]), images[:short.kept])
