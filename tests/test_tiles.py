"""Training on tiles (issue 31): the tile formulation is per-patch training on the same positions;
the tile sampler's labels and class shares; a bundle trained on tiles keeps the exported graphs exact."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from conftest import TINY_PATCH, TINY_TRAIN  # noqa: E402


def _randomized_norms(model):
    """Non-trivial batch-norm statistics and affine parameters, so eval mode is not the identity."""
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for mod in model.modules():
            if hasattr(mod, "running_var"):
                n = mod.running_mean.numel()
                mod.running_mean.copy_(torch.rand(n, generator=g, dtype=torch.float64) * 0.4 - 0.2)
                mod.running_var.copy_(torch.rand(n, generator=g, dtype=torch.float64) * 1.5 + 0.5)
                mod.weight.copy_(torch.rand(n, generator=g, dtype=torch.float64) + 0.5)
                mod.bias.copy_(torch.rand(n, generator=g, dtype=torch.float64) * 0.4 - 0.2)
    return model


@pytest.mark.parametrize("context", [0, 4, (2, 4)])
def test_tile_training_gives_the_per_patch_loss_and_gradients(synthetic_slice, context):
    """Small network, float64, normalization in eval mode: the loss of a tile's labeled positions
    and its gradients equal per-patch training's on the same positions (patches cut as training
    cuts them, context pooled from the slice), with the tile loss's class weights."""
    from brainrt_train.data import PatchSet, Slice, extract, extract_context
    from brainrt_train.model import PaperCNN, context_scales
    from brainrt_train.tiles import balanced_weights

    torch.manual_seed(0)
    model = _randomized_norms(PaperCNN(4, patch_size=TINY_PATCH, context=context).double().eval())
    img = synthetic_slice.image
    n = 4
    side, off = model.tile_geometry(n)
    r0, c0 = 70, 90
    assert r0 + side <= img.shape[0] and c0 + side <= img.shape[1]
    tile = torch.from_numpy(img[r0 : r0 + side, c0 : c0 + side] / 255.0)[None, None]
    rng = np.random.default_rng(0)
    y = torch.from_numpy(rng.integers(-1, 4, (1, n, n)))
    y[0, 0, :4] = torch.arange(4)  # every class present
    w = balanced_weights(y, 4).double()

    logits = model.tile_logits(tile)
    loss_t = torch.nn.functional.cross_entropy(logits, y, weight=w, ignore_index=-1)
    grads_t = torch.autograd.grad(loss_t, list(model.parameters()), allow_unused=True)

    ii, jj = np.nonzero(y[0].numpy() >= 0)
    centres = np.stack([r0 + off + 16 * ii, c0 + off + 16 * jj], 1)
    ps = PatchSet(np.zeros(len(ii), np.int64), centres, y[0].numpy()[ii, jj])
    sl = Slice(None, None, img, np.zeros(img.shape, np.int8))
    x = [torch.from_numpy(extract([sl], ps, TINY_PATCH) / 255.0)[:, None]]
    x += [torch.from_numpy(extract_context([sl], ps, TINY_PATCH, k).astype(np.float64) / 255.0)[:, None]
          for k in context_scales(context)]
    lp = model(torch.cat(x, 1))
    np.testing.assert_allclose(logits[0, :, ii, jj].T.detach().numpy(), lp.detach().numpy(), atol=1e-12)
    loss_p = torch.nn.functional.cross_entropy(lp, torch.from_numpy(ps.labels), weight=w)
    grads_p = torch.autograd.grad(loss_p, list(model.parameters()), allow_unused=True)
    assert abs(float(loss_t) - float(loss_p)) < 1e-12
    for (name, _), gt, gp in zip(model.named_parameters(), grads_t, grads_p):
        assert (gt is None) == (gp is None), name
        if gt is not None:
            np.testing.assert_allclose(gt.numpy(), gp.numpy(), atol=1e-10, rtol=1e-9, err_msg=name)
    assert float(loss_t) > 0 and any(float(g.abs().max()) > 0 for g in grads_t if g is not None)


def _thin_labels(shape):
    """Training labels of 4 classes: three broad vertical bands and a 12 px wide stripe (class 3)."""
    lab = np.full(shape, -1, np.int8)
    h, w = shape
    lab[:, : w // 3] = 0
    lab[:, w // 3 : 2 * w // 3] = 1
    lab[:, 2 * w // 3 :] = 2
    lab[40 : h - 40, w // 2 : w // 2 + 12] = 3
    lab[:20] = -1  # a strip without training positions
    return lab


def _sampler(shape, labels, **kw):
    from brainrt_train.tiles import TileSampler

    img = ((labels.astype(np.int16) + 1) * 50).astype(np.uint8)  # the label is readable from the pixel
    return img, TileSampler([img], [labels], n_classes=4, patch_size=TINY_PATCH, context=4, n_out=4, dtype_max=255,
                            **kw)


def test_tile_sampler_gives_every_class_its_share_and_labels_the_centres():
    shape = (420, 900)
    labels = _thin_labels(shape)
    _, sampler = _sampler(shape, labels)
    rng = np.random.default_rng(1)
    anchors, counts = np.zeros(4), np.zeros(4)
    for _ in range(30):
        x, y, classes = sampler.draw(8, rng)
        assert x.shape == (8, 1, sampler.side, sampler.side) and y.shape == (8, 4, 4)
        np.add.at(anchors, classes, 1)
        assert set(int(c) for c in y[y >= 0].unique()) == {0, 1, 2, 3}  # every class in every batch
        np.add.at(counts, y[y >= 0].numpy(), 1)
        # the label of each labeled position is the class of its centre pixel; a patch of even side has
        # no middle pixel, so a turn moves its centre pixel by one: the 2 x 2 middle pixels hold the label
        lab = y.numpy()
        hit = np.zeros(lab.shape, bool)
        for dr in (-1, 0):
            for dc in (-1, 0):
                r, c = sampler.offset + 16 * np.arange(4) + dr, sampler.offset + 16 * np.arange(4) + dc
                hit |= np.rint(x[:, 0][:, r][:, :, c].numpy() * 255 / 50).astype(int) - 1 == lab
        assert hit[lab >= 0].all()
    np.testing.assert_array_equal(anchors, 60)  # 8 tiles a batch, 4 classes: 2 anchors each
    area_share = (labels == 3).sum() / (labels >= 0).sum()
    assert counts[3] / counts.sum() > 5 * area_share  # the thin class's share, far above its area's


def test_tile_sampler_rotation_keeps_labels_with_their_pixels():
    shape = (420, 900)
    labels = _thin_labels(shape)
    _, sampler = _sampler(shape, labels, rotate_p=1.0)
    rng = np.random.default_rng(2)
    agree, n = 0, 0
    c = sampler.offset + 16 * np.arange(4)
    for _ in range(10):
        x, y, _ = sampler.draw(8, rng)
        centre = np.rint(x[:, 0][:, c][:, :, c].numpy() * 255 / 50).astype(int) - 1
        lab = y.numpy()
        agree += int((centre[lab >= 0] == lab[lab >= 0]).sum())
        n += int((lab >= 0).sum())
    assert n > 0 and agree / n > 0.95  # bilinear pixels vs nearest labels differ only on class borders


def test_tile_border_stays_out_of_the_labeled_patches():
    """A tissue border cut into a tile darkens only what lies outside every labeled position's patch."""
    shape = (420, 900)
    labels = np.zeros(shape, np.int8)
    labels[:, 450:] = 1
    img, sampler = _sampler(shape, labels, border_p=1.0)
    rng = np.random.default_rng(4)
    half = TINY_PATCH // 2
    dark = 0
    for _ in range(10):
        x, y, _ = sampler.draw(8, rng)
        for t in range(8):
            black = x[t, 0].numpy() < 0.09  # the border's level (the image is >= 50 / 255 everywhere)
            dark += int(black.sum())
            for i, j in zip(*np.nonzero(y[t].numpy() >= 0)):
                r, c = sampler.offset + 16 * i, sampler.offset + 16 * j
                assert not black[r - half : r + half, c - half : c + half].any()
    assert dark > 0


def test_balanced_weights_give_every_present_class_the_same_total():
    from brainrt_train.tiles import balanced_weights

    y = torch.tensor([[0, 0, 0, 1], [-1, 2, 2, -1]])
    w = balanced_weights(y, 4)
    totals = [float(w[c] * (y == c).sum()) for c in range(4)]
    assert totals[:3] == pytest.approx([1, 1, 1]) and totals[3] == 0


@pytest.fixture(scope="module")
def tile_bundle_path(tmp_path_factory, training_data):
    from brainrt_train.pipeline import train_and_export

    out = tmp_path_factory.mktemp("bundles") / "tiles"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        train_and_export([(training_data["image"], training_data["mask"])], out,
                         class_map=str(training_data["class_map"]),
                         **{**TINY_TRAIN, "n_train": 30, "n_val": 20, "n_test": 20}, context=4, tiles=3,
                         tile_batch=4, smooth_choice=False, int8=False)
    return out


def test_tile_bundle_records_tiles_and_its_dense_graphs_equal_per_patch(tile_bundle_path, synthetic_slice):
    import brainrt

    bundle = brainrt.Bundle.load(tile_bundle_path)
    extra = json.loads((tile_bundle_path / "manifest.json").read_text())["training"]
    assert extra["tiles"] == {"outputs_per_side": 3, "tiles_per_batch": 4}
    image = synthetic_slice.image[:144, :208]
    for stride in (4, 16):
        dense = brainrt.featurize(image, bundle, stride=stride, method="dense", tissue="all")
        patch = brainrt.featurize(image, bundle, stride=stride, method="patch", tissue="all")
        np.testing.assert_allclose(dense.features, patch.features, atol=1e-4)


def test_tiles_option_is_checked():
    from brainrt.errors import BrainrtError
    from brainrt_train.pipeline import TrainOptions

    with pytest.raises(BrainrtError, match="tiles"):
        TrainOptions(tiles=-1)


def test_grid_features_are_the_runtime_grid_of_the_network(synthetic_slice):
    """Whole-grid features from the trainable network on tiles equal the exported form's per-patch
    features of footprints gathered as the runtime gathers them (stride-16 grid, edges mirrored)."""
    from brainrt.geometry import cell_centre, grid_shape
    from brainrt.engine.tiling import PAD_REFLECT, patches_kernel

    from brainrt_train.model import PaperCNN, PlainCNN
    from brainrt_train.tiles import grid_features

    torch.manual_seed(1)
    model = _randomized_norms(PaperCNN(4, patch_size=TINY_PATCH, context=4).double()).float().eval()
    image = synthetic_slice.image[:150, :230]
    norm = {"mean": 0.45, "std": 0.2}
    got = grid_features(model, image, norm=norm, dtype_max=255, n_out=3, batch=2)
    rows, cols = grid_shape(image.shape, 16)
    assert got.shape == (rows, cols, 64)
    ii, jj = np.meshgrid(np.arange(rows), np.arange(cols), indexing="ij")
    centres = np.stack([cell_centre(ii.ravel(), 16), cell_centre(jj.ravel(), 16)], 1)
    fp = 4 * TINY_PATCH
    buf = np.empty((len(centres), 1, fp, fp), np.float32)
    patches_kernel(image, centres, buf, PAD_REFLECT, 1 / 255, norm["mean"], norm["std"], 0.0)
    with torch.no_grad():
        ref = PlainCNN(model)(torch.from_numpy(buf)).numpy().reshape(rows, cols, 64)
    np.testing.assert_allclose(got, ref, atol=1e-4)
    want = np.zeros((rows, cols), bool)
    want[4, 5] = True
    part, computed = grid_features(model, image, norm=norm, dtype_max=255, n_out=3, batch=2, cells=want)
    assert computed.sum() == 9 and computed[3:6, 3:6].all()  # the one 3 x 3 block holding the cell
    np.testing.assert_allclose(part[computed], got[computed], atol=1e-6)  # other batches: float rounding
    assert not part[~computed].any()
