"""DeepSeek-VL2's image arithmetic, as every backend takes it from ``deepseek_vl2/geometry.py``."""

import pytest
from helpers import FIXTURES

from videocaption.deepseek_vl2 import HUB_GEOMETRY, PAIR_TEXT_RESERVE, ImageGeometry


def tiles(geometry: ImageGeometry, resolution: tuple[int, int]) -> int:
    return resolution[0] * resolution[1] // geometry.tile**2


def test_the_hub_settings_are_those_of_the_official_processor_config():
    # the reference fixture ships the official processor_config.json unchanged
    assert ImageGeometry.from_checkpoint(FIXTURES / "model") == HUB_GEOMETRY
    assert (HUB_GEOMETRY.tile, HUB_GEOMETRY.tokens_per_side) == (384, 14)
    assert HUB_GEOMETRY.tiling_tokens(1, 1) == 14 * 15 + 1 + 14 * 15 == 421


@pytest.mark.parametrize("context", [4096, 8192, 2048, 1000])
def test_two_frames_of_any_allowed_tiling_fit_with_the_reserve_to_spare(context):
    g = HUB_GEOMETRY
    allowed = g.pair_tilings(context)
    worst = max(g.tiling_tokens(w // g.tile, h // g.tile) for w, h in allowed)
    assert 2 * worst <= context - PAIR_TEXT_RESERVE or allowed == [(g.tile, g.tile)]
    assert g.max_image_tokens(2, context) == 2 * worst
    # every tiling of as many tiles or fewer is allowed: a shrunk frame may take any of them
    most = max(tiles(g, r) for r in allowed)
    assert allowed == [r for r in g.candidate_resolutions if tiles(g, r) <= most]
    if context > 2 * g.worst_image_tokens(2) + PAIR_TEXT_RESERVE:
        assert allowed == list(g.candidate_resolutions)


def test_deepseek_vl2_tiny_pairs_take_up_to_seven_tiles():
    assert max(tiles(HUB_GEOMETRY, r) for r in HUB_GEOMETRY.pair_tilings(4096)) == 7


def test_malformed_settings_are_value_errors():
    with pytest.raises(ValueError, match="malformed processor config"):
        ImageGeometry.from_dict({"candidate_resolutions": [[384, 384]]})
    with pytest.raises(ValueError, match="must not be empty"):
        ImageGeometry((), 14, 2)
