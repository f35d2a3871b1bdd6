"""Depth schemes: parsing names into freeze boundaries (optimizers: tests/test_schedule.py)."""
import pytest

from tuning import depth

BLOCKS = ("stem", "layer1", "layer2", "head")


@pytest.mark.parametrize("scheme, trainable_from, pretrained", [
    ("scratch", 0, False), ("all", 0, True), ("head", 3, True),
    ("from:layer1", 1, True), ("from:stem", 0, True), ("from:head", 3, True),
    ("FT:only head", 3, True), ("FT:layer1-head", 1, True), ("FT:stem-head", 0, True)])
def test_parse_scheme(scheme, trainable_from, pretrained):
  assert depth.parse_scheme(scheme, BLOCKS) == depth.Scheme(scheme, trainable_from, pretrained)


@pytest.mark.parametrize("scheme", ["from:layer9", "fc8", "from:", "Head", "FT:layer1-layer2",
                                    "FT:only layer2", "FT:-head"])
def test_unknown_scheme_lists_valid_ones(scheme):
  with pytest.raises(ValueError, match=r"unknown scheme .*from:layer1.*from:layer2"):
    depth.parse_scheme(scheme, BLOCKS)
