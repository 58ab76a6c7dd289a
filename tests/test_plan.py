"""Plans: checked options."""

from __future__ import annotations

import pytest

import brainrt
from brainrt.errors import BrainrtError


@pytest.mark.parametrize(("kw", "match"), [
    (dict(stride=0), "'stride' parameter"),
    (dict(stride=-3), "'stride' parameter"),
    (dict(stride=2.5), "'stride' parameter"),
    (dict(method="fast"), "'method' parameter"),
    (dict(tissue="most"), "'tissue' parameter"),
])
def test_bad_parameters(tiny_bundle, synthetic_slice, kw, match):
    with pytest.raises(BrainrtError, match=match):
        brainrt.featurize(synthetic_slice.image, tiny_bundle, **kw)
