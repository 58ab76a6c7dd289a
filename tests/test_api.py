"""The Python API as users call it: the README example, no torch, threads sharing a bundle."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

import brainrt


#: The README's Python example, verbatim; one test swaps in the tiny bundle, one runs it as it is from the clone.
def _readme_python_block():
    """The README's embedding example: its first ```python block."""
    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    start = text.index("```python\n") + len("```python\n")
    return text[start : text.index("```", start)]


README_EXAMPLE = _readme_python_block()


def readme_example(bundle_path):
    """README_EXAMPLE with its bundle path replaced."""
    assert README_EXAMPLE.count('"models/slice309-paper6"') == 1
    return README_EXAMPLE.replace('"models/slice309-paper6"', repr(str(bundle_path)))


def test_readme_example(tiny_bundle_path, capsys):
    namespace = {}
    exec(compile(readme_example(tiny_bundle_path), "README.md", "exec"), namespace)
    grid, xy, embedding = namespace["grid"], namespace["xy"], namespace["embedding"]
    n = int(grid.valid.sum())
    assert embedding.shape == (n, 64) and xy.shape == (n, 2)
    assert namespace["areas"].labels.shape == grid.shape
    assert "(24, 36, 64)" in capsys.readouterr().out


def test_readme_example_runs_as_it_is_from_the_clone(shipped_bundle_path):
    """Issue 19: it read slice309.tif from the root, which a clone does not have."""
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "PYTHONPATH": os.pathsep.join(
        [str(root / "runtime"), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-c", README_EXAMPLE], cwd=root, capture_output=True, text=True,
                          timeout=240, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "(24, 36, 64)" in proc.stdout


def test_runtime_does_not_import_torch(tiny_bundle_path, slice_tif, tmp_path):
    """Nor the trainer: a session of the API and of the runtime CLI leaves torch, onnx and brainrt_train unimported."""
    code = textwrap.dedent(f"""
        import sys
        import brainrt, brainrt.api, brainrt.cli, brainrt.outputs
        from brainrt.synth import make_slice
        from click.testing import CliRunner
        bundle = brainrt.Bundle.load({str(tiny_bundle_path)!r})
        image = make_slice((192, 256), seed=3).image
        grid = brainrt.featurize(image, bundle, stride=16)
        dense_grid = brainrt.featurize(image, bundle, stride=8, method="dense")
        res = brainrt.classify(grid, bundle)
        brainrt.cluster(grid, bundle)
        assert res.labels.shape == grid.shape
        cli = CliRunner().invoke(brainrt.cli.main, ["-q", "classify", {str(slice_tif)!r}, "-m", {str(tiny_bundle_path)!r},
                                                    "-o", {str(tmp_path / "x.labels.ome.tif")!r}])
        assert cli.exit_code == 0, cli.output
        leaked = sorted(m for m in ("torch", "onnx", "brainrt_train") if m in sys.modules)
        assert not leaked, leaked
        print("ok")
    """)
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=240, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().endswith("ok")


@pytest.mark.parametrize("method", ["patch", "dense"])
def test_threads_share_one_bundle(tiny_bundle_path, synthetic_slice, method):
    bundle = brainrt.Bundle.load(tiny_bundle_path)  # fresh: the dense session is created under contention
    image = synthetic_slice.image[:, :288]
    stride = 8
    ref = brainrt.featurize(image, brainrt.Bundle.load(tiny_bundle_path), stride=stride, method=method)

    def run(_):
        g = brainrt.featurize(image, bundle, stride=stride, method=method)
        return g.features, brainrt.classify(g, bundle).labels

    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(run, range(4)))
    ref_labels = brainrt.classify(ref, bundle).labels
    for feats, labels in results:
        np.testing.assert_array_equal(feats, ref.features)
        np.testing.assert_array_equal(labels, ref_labels)
