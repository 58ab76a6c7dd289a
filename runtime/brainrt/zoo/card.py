"""The package's documentation (the bundle's model card and what the export did) and its citations."""

from __future__ import annotations

from ..model.manifest import describe
from ..version import __version__

#: The method and the data of the shipped model, as bioimage.io citations.
PAPER = {"text": "A. H. Balwani and E. L. Dyer, \"Modeling variability in brain architecture with deep feature "
                 "learning\", 53rd Asilomar Conference on Signals, Systems, and Computers, 2019",
         "doi": "10.1109/IEEECONF44664.2019.9048805"}
DATASET = {"text": "J. A. Prasad et al., \"A three-dimensional thalamocortical dataset for characterizing brain "
                   "heterogeneity\", Scientific Data 7, 358 (2020), CC BY 4.0",
           "doi": "10.1038/s41597-020-00692-y"}


def citations():
    return [dict(PAPER), dict(DATASET)]


def model_card(bundle):
    """The bundle's model card (``models/NAME.md`` beside the bundle), else what its manifest says."""
    card = bundle.path.parent / f"{bundle.path.name}.md"
    if card.is_file():
        return card.read_text()
    lines = describe(bundle.manifest, bundle.path.name)
    return f"# Model card: {bundle.path.name}\n\nFrom its manifest (`brainrt info`):\n\n" + "\n".join(
        f"    {ln}" for ln in lines) + "\n"


def documentation(bundle, geo, head, at, side, tolerance):
    """README.md of the package: what the graph computes, its geometry, what stays brainrt's, then the card."""
    n = bundle.normalization
    what = (f"the probabilities of the classes {', '.join(bundle.class_names)} (head `{head}` folded in as a 1x1 "
            "convolution and a softmax)" if head else f"the network's {bundle.n_features} features")
    return f"""# brainrt {bundle.path.name}: {'areas' if head else 'features'} at stride {geo.stride}

Exported by brainrt {__version__} (`brainrt export {bundle.path.name} --format bioimageio`). One ONNX graph
takes a tile of a slice and returns {what} on a grid of stride {geo.stride} px: output cell (i, j) is the
patch centred on tile pixel (i * {geo.stride} + {geo.stride // 2}, j * {geo.stride} + {geo.stride // 2}), i.e. it covers pixels
i * {geo.stride} .. i * {geo.stride} + {geo.stride - 1}. The output's scale is {geo.stride} input pixels.

- **Input**: gray values on the 8-bit scale (0-255; a 16-bit slice must be brought to 8 bits first),
  one channel, y and x multiples of {geo.stride} and at least {geo.min_size}. The preprocessing
  (`scale_linear`) is brainrt's normalization `(pixel * {n.scale:.6g} - {n.mean:.6g}) / {n.std:.6g}`.
- **Halo**: {geo.halo} output cells ({geo.halo * geo.stride} input pixels) on each side. A cell sees
  {geo.top} px before and {geo.bottom} px after its grid step; the graph reflects a tile at its edges
  (as brainrt reflects a slice at the slice's edges), so only cells within the halo of a tile's edge
  differ from the whole slice's. The input is declared with reflect padding.
- **Test tensors**: a {side} x {side} px crop of a real slice at row {at[0]}, column {at[1]}; the expected output was
  computed by brainrt's own engine and head, not by this graph, and this graph matched it within
  {tolerance:g} when the package was written.
- **What stays brainrt's**: the map regularization (brainrt smooths the probabilities over
  tissue cells, `--smooth`, and its default head may pool features over the slice's tissue), the
  tissue mask (brainrt computes only tissue cells and leaves the rest empty; this graph computes
  every cell, background included) and intensity standardization (`--standardize`). The
  probabilities here equal `brainrt classify --smooth 0 --head {head or 'logreg'}` on tissue cells.
- Pixel size of the training slices: 1.17 um (the axes are in pixels).

## Validation

brainrt's tests validate packages like this one with `bioimageio.spec` (offline), run them with
`bioimageio.core` (its test of the test tensors, and predictions on other crops, equal to
`brainrt classify --smooth 0` within {tolerance:g}). QuPath, ilastik and deepImageJ were not tried.

{model_card(bundle)}"""
