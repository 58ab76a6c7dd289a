"""File > Open Sample > brainrt: the demo's synthetic slice and its truth."""

from __future__ import annotations

import numpy as np

from ..engine.plan import DEFAULT_PIXEL_SIZE_UM
from ..synth import make_slice

#: The demo's slice (``brainrt demo``): 6 x 9 patches of the demo bundle's 128 px, seed 7, 19 gray levels.
DEMO_SHAPE = (768, 1152)
DEMO_SEED = 7


def demo_slice():
    """The synthetic demo slice (image) and its areas (labels, with their names), at 1.17 um a pixel."""
    s = make_slice(DEMO_SHAPE, seed=DEMO_SEED, levels=19)
    scale = (DEFAULT_PIXEL_SIZE_UM, DEFAULT_PIXEL_SIZE_UM)
    codes = np.arange(int(s.mask.max()) + 1)
    features = {"index": codes, "name": [s.names.get(int(c), "background") for c in codes]}
    return [(s.image, {"name": "brainrt demo slice", "scale": scale, "metadata": {"brainrt_bundle": "synthetic-demo"}},
             "image"),
            (s.mask, {"name": "brainrt demo truth", "scale": scale, "features": features, "opacity": 0.4,
                      "visible": False}, "labels")]
