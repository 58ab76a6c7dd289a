"""Benchmark: labeled positions per second of per-patch and tile training, side by side.

Same network (the shipped architecture: 128 px patches, the 512 px context branch), same
torch threads, same optimizer (Adam), same gray-level augmentation; one training step is
forward + backward + Adam step. Per patch: batches of ``--batch`` patches (inputs cut
beforehand as training cuts them, so the patch path is not charged for cutting; the dihedral
and tissue-border augmentation included, as in training). Tiles: batches of ``--tile-batch``
tiles of ``--tiles x --tiles`` stride-16 outputs drawn by the tile sampler (cutting included),
labeled positions counted per batch. Rounds alternate the two (so load changes on a shared
machine hit both); each round's rate is labeled positions / seconds, and the medians are
compared. Ends with ``tiles vs patches: N.NNx labeled positions/s``.

    nice -n 10 python tools/bench_train.py --image ../shared/data/slice309.tif \
        --mask ../shared/data/slice309_areas.tif --threads 2
(without ``--image``: a synthetic slice.)
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch
import torch.nn.functional as F


def parse(argv):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--image")
    ap.add_argument("--mask")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--tiles", type=int, nargs="+", default=[12], help="outputs per tile side (several: one row each)")
    ap.add_argument("--tile-batch", type=int, default=8)
    ap.add_argument("--steps", type=int, default=4, help="training steps per round")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--context", type=int, default=4)
    return ap.parse_args(argv)


def load(args):
    """The annotated slice (slice309 or a synthetic one), its class names and what it is."""
    from brainrt_train.data import ClassMap, Slice, load_slice

    if args.image:
        cmap = ClassMap.resolve("prasad2020")
        return load_slice(args.image, args.mask, cmap), cmap.names, args.image
    from brainrt.synth import make_slice, synthetic_class_map

    s = make_slice((1024, 1536), seed=0)
    cmap = ClassMap.from_dict({"classes": synthetic_class_map(), "unlabeled": [0]})
    return Slice(None, None, s.image, cmap.class_index(s.mask)), cmap.names, "synthetic 1024 x 1536 slice"


def inputs(args, sl, C, P=128):
    """Per-patch training inputs (patches cut beforehand), their labels and normalization, and the
    training-label map the tiles are labeled from (the split's training positions)."""
    from brainrt_train.data import draw_balanced, eligible_positions
    from brainrt_train.pipeline import patch_inputs
    from brainrt_train.tiles import training_labels

    cand, _ = eligible_positions([sl], n_classes=C, patch_size=P, gap=P, fractions=(0.6, 0.2, 0.2), seed=0)
    pools = [np.concatenate(cand["train"][c]) if cand["train"][c] else np.zeros((0, 3), np.int64) for c in range(C)]
    ps = draw_balanced(pools, args.batch * args.steps // C + 1, np.random.default_rng(0))
    x_all, y_all = patch_inputs([sl], ps, P, args.context, 255.0), torch.from_numpy(ps.labels)
    norm = {"mean": float(x_all.mean()), "std": float(x_all.std())}
    return x_all, y_all, norm, training_labels(lambda k: sl.labels.shape, pools, 1)


def rounds(args, sl, C, P=128):
    """Median labeled positions/s per path: ``{"patches": rate, n_out: rate, ...}``, and the samplers."""
    from brainrt_train.model import PaperCNN
    from brainrt_train.tiles import TileSampler, balanced_weights
    from brainrt_train.train import augment, intensity_augment

    x_all, y_all, norm, labels = inputs(args, sl, C, P)
    rng = np.random.default_rng(1)
    torch.manual_seed(0)
    model = PaperCNN(C, patch_size=P, context=args.context).train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    gen = torch.Generator().manual_seed(0)

    def step(logits, y, weight=None):
        loss = F.cross_entropy(logits, y, weight=weight, ignore_index=-1)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    def patch_round():
        t0 = time.perf_counter()
        for _ in range(args.steps):
            idx = torch.randint(0, len(y_all), (args.batch,), generator=gen)
            step(model((augment(x_all[idx], gen, border_p=0.6) - norm["mean"]) / norm["std"]), y_all[idx])
        return args.batch * args.steps / (time.perf_counter() - t0)

    def tile_round(sampler):
        n, t0 = 0, time.perf_counter()
        for _ in range(args.steps):
            x, y, _ = sampler.draw(args.tile_batch, rng)
            step(model.tile_logits((intensity_augment(x, gen) - norm["mean"]) / norm["std"]), y, balanced_weights(y, C))
            n += int((y >= 0).sum())
        sampler.labeled = getattr(sampler, "labeled", []) + [n / (args.steps * y.numel())]
        return n / (time.perf_counter() - t0)

    samplers = {n: TileSampler([sl.image], labels, n_classes=C, patch_size=P, context=args.context, n_out=n,
                               dtype_max=255.0, border_p=0.6) for n in args.tiles}
    return medians(args.rounds, patch_round, tile_round, samplers), samplers


def medians(n_rounds, patch_round, tile_round, samplers):
    """Warm each path up once, then ``n_rounds`` rounds alternating them; the median rate of each."""
    patch_round()
    for s in samplers.values():
        tile_round(s)
    rates = {"patches": [], **{n: [] for n in samplers}}
    for _ in range(n_rounds):
        rates["patches"].append(patch_round())
        for n, s in samplers.items():
            rates[n].append(tile_round(s))
    return {k: statistics.median(v) for k, v in rates.items()}


def main(argv=None):
    args = parse(argv)
    torch.set_num_threads(args.threads)
    sl, names, source = load(args)
    med, samplers = rounds(args, sl, len(names))
    print(f"# {source}; torch {torch.__version__}, {args.threads} threads; context {args.context}; "
          f"{args.rounds} rounds of {args.steps} steps, medians")
    print(f"per patch   (batch {args.batch}):  {med['patches']:8.1f} labeled positions/s")
    for n, s in samplers.items():
        print(f"tiles {n:2d}x{n:<2d} ({s.side} px, {args.tile_batch}/batch): {med[n]:8.1f} labeled positions/s "
              f"({med[n] / med['patches']:.2f}x; {statistics.mean(s.labeled):.0%} of the positions labeled)")
    best = max(samplers, key=lambda n: med[n])
    print(f"tiles vs patches: {med[best] / med['patches']:.2f}x labeled positions/s")


if __name__ == "__main__":
    main()
