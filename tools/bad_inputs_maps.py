"""Issue 28's silent wrong maps for tools/bad_inputs.py: a stride past the image, pixel sizes, a crop,
unusual contrast (inputs and cases).

Imported by tools/bad_inputs.py, which runs them as it runs its own cases.
"""

from __future__ import annotations

import json

import numpy as np
import tifffile

try:
    from tools.bad_inputs import DEMO, SHIPPED, Case, says
except ImportError:  # run as a script from tools/
    from bad_inputs import DEMO, SHIPPED, Case, says


def _binned(image):
    h, w = image.shape[0] // 2 * 2, image.shape[1] // 2 * 2
    return np.rint(image[:h, :w].astype(np.float64).reshape(h // 2, 2, w // 2, 2).mean(axis=(1, 3))).astype(np.uint8)


def _imagej(path, image, px):
    tifffile.imwrite(path, image, imagej=True, resolution=(1 / px, 1 / px), metadata={"unit": "um"})


def make_maps_data(t, data):
    """Inputs of :func:`maps_cases`: a binned slice with its pixel size, inverted contrast, noise (and slice309's)."""
    s = tifffile.imread(t / "s.tif")
    _imagej(t / "s_bin2.tif", _binned(s), 2.34)
    tifffile.imwrite(t / "s_inverted.tif", 255 - s)
    tifffile.imwrite(t / "noise.tif", np.random.default_rng(0).integers(0, 256, s.shape, dtype=np.uint8))
    if data is not None and (data / "slice309.tif").is_file():
        img, mask = tifffile.imread(data / "slice309.tif"), tifffile.imread(data / "slice309_areas.tif")
        tifffile.imwrite(t / "cortex.tif", img[400:1100, 4000:5400])
        tifffile.imwrite(t / "cortex_areas.tif", mask[400:1100, 4000:5400])
        _imagej(t / "bin309.tif", _binned(img), 2.34)
        tifffile.imwrite(t / "bin309_areas.tif", mask[: img.shape[0] // 2 * 2: 2, : img.shape[1] // 2 * 2: 2])
        tifffile.imwrite(t / "inv309.tif", 255 - img)


def accuracy_at_least(out, low):
    """A check: the run's metrics JSON (``--truth``) gives a pixel accuracy of at least ``low``."""
    def check(res, t):
        acc = json.loads((t / out.replace(".ome.tif", ".metrics.json")).read_text())["pixel_accuracy"]
        return None if acc >= low else f"WRONG: pixel accuracy {acc:.3f} < {low}"
    return check


def on_input_pixels(src, out, px):
    """A check: the label map ``out`` has the input ``src``'s shape and pixel size ``px``."""
    def check(res, t):
        from brainrt.sources.tiff import tiff_pixel_size

        with tifffile.TiffFile(t / out) as tif:
            shape, got = tif.series[0].shape, tiff_pixel_size(tif)
        want = tifffile.imread(t / src).shape
        return None if shape == want and abs(got - px) < 1e-3 else f"WRONG: {shape} at {got} um, not {want} at {px}"
    return check


def maps_cases(data_present):
    """Issue 28's silent wrong maps: a stride past the image, pixel sizes, a crop, unusual contrast."""
    m, c = ["-m", DEMO], ["classify"]
    rows = [
        Case("--stride 2000 on a 256 x 384 slice", c + ["s.tif", "--stride", "2000", *m, "-o", "st.ome.tif"],
             group="28. same tissue, same map"),
        Case("a volume with --stride 4096", c + ["stack.tif", "--z", "all", "--stride", "4096", *m, "-o", "st.ome.zarr"]),
        Case("--pixel-size 1000", c + ["s.tif", "--pixel-size", "1000", *m, "-o", "px.ome.tif"]),
        Case("a slice binned 2 x 2, ImageJ pixel size 2.34 um (resampled to the bundle's 1.17 um)",
             c + ["s_bin2.tif", "--stride", "8", *m, "-o", "bin.ome.tif"], on_input_pixels("s_bin2.tif", "bin.ome.tif", 2.34)),
        Case("inverted contrast (255 - slice): refused (no tissue) or warned", c + ["s_inverted.tif", *m, "-o",
                                                                               "inv.ome.tif"]),
        Case("uniform random noise", c + ["noise.tif", "--all-cells", *m, "-o", "noise.ome.tif"],
             says("noise.tif", "unlike the training tissue")),
    ]
    if data_present:
        shipped = ["-m", SHIPPED, "--stride", "16"]
        rows += [
            Case("slice309 cortex crop 700 x 1400, no background (was 0.253)",
                 c + ["cortex.tif", *shipped, "--truth", "cortex_areas.tif", "-o", "ctx.ome.tif"],
                 accuracy_at_least("ctx.ome.tif", 0.8)),
            Case("slice309 binned 2 x 2 at 2.34 um, stride 8 (was 0.287 read as 1.17 um; 0.631 resampled by hand)",
                 c + ["bin309.tif", "-m", SHIPPED, "--stride", "8", "--truth", "bin309_areas.tif", "-o", "b309.ome.tif"],
                 accuracy_at_least("b309.ome.tif", 0.631)),
            Case("255 - slice309", c + ["inv309.tif", *shipped, "-o", "i309.ome.tif"],
                 says("inv309.tif", "unlike the training tissue")),
        ]
    return rows
