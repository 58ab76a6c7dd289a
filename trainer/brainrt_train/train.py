"""Training loop: augmentation, Adam, best-on-validation checkpoint, metrics."""

from __future__ import annotations

import copy
import logging
import math
import time

import numpy as np
import torch
import torch.nn.functional as F

from .model import PaperCNN

log = logging.getLogger("brainrt.train")


def to_unit(patches, dtype_max):
    """uint8/uint16/float patches (N, P, P) -> float32 tensor (N, 1, P, P) in [0, 1]."""
    t = torch.from_numpy(np.ascontiguousarray(patches)).float()
    return (t / dtype_max).unsqueeze(1)


#: Share of training samples whose context gets a tissue border (see :func:`tissue_edge`).
BORDER_P = 0.6


def tissue_edge(ctx, gen, p=BORDER_P, ratios=None):
    """Cut the pooled context ``ctx`` (N, C, S, S) along a random line: beyond it, background.

    On slice309 every training patch of WM and HypoTh has the tissue's border (black
    background) in its 512 px context and no VP or ZI patch does, so an unaugmented
    context branch learns "border in view => WM" and calls the border strip of any
    area white matter (measured: 97% of the ZI test patches, all near the border).
    Giving a share ``p`` of all samples a straight border somewhere in the ring around
    the patch (never across the patch, the central ``S / 4``) makes the cue useless.
    The background is a dark constant (0..0.08 of full scale, like slice309's
    outside); the gray-level jitter that follows treats it like the rest.

    Several context scales: channel ``c`` holds a field ``ratios[c]`` times wider than
    channel 0's (1, 4 for 512 + 2048 px). One line cuts them all where a real border
    would lie; its distance is drawn as for one scale, inside the frame of a channel
    picked at random (so the 512 px field still sees about three quarters of the borders).
    """
    n, nc, s, _ = ctx.shape
    ratio = torch.tensor(ratios or (1,) * nc, dtype=ctx.dtype)
    hit = torch.rand(n, generator=gen) < p
    if not bool(hit.any()):
        return ctx
    cos, sin, dist, level = _border_lines(n, s, ratio, gen)
    r = torch.arange(s, dtype=ctx.dtype) - (s - 1) / 2
    out = []
    for c in range(nc):
        proj = cos[:, None, None] * r[None, None, :] + sin[:, None, None] * r[None, :, None]
        cut = (proj > (dist / ratio[c])[:, None, None]) & hit[:, None, None]
        out.append(torch.where(cut, level[:, None, None], ctx[:, c]))
    return torch.stack(out, 1)


def _border_lines(n, s, ratio, gen):
    """``n`` random border lines for :func:`tissue_edge` on ``S = s`` frames of the field ``ratio``s:
    their direction (cos, sin), distance from the centre (in the first field's pixels), gray level."""
    theta = torch.rand(n, generator=gen) * (2 * math.pi)
    cos, sin = theta.cos(), theta.sin()
    inner = s / 8 * math.sqrt(2) + 1  # the patch's corner, plus a pixel (in the first field's pixels)
    reach = (s - 1) / 2 * (cos.abs() + sin.abs())  # the frame's farthest point along theta
    u = torch.rand(n, generator=gen) ** 2  # near the patch more often: big cuts
    level = torch.rand(n, generator=gen) * 0.08
    if len(ratio) > 1:  # the scale whose ring holds the line
        which = torch.randint(0, len(ratio), (n,), generator=gen)
        top = ratio[which] * reach
    else:
        top = reach
    return cos, sin, inner + u * (top - inner - 2), level


#: Share of training batches turned by a free angle and rescaled (see :func:`rotate_scale`);
#: off by default (measured on slice309: validation pixel macro F1 0.621 with 0.5, 0.668 without).
ROTATE_P = 0.0


def rotate_scale(x, gen, *, max_deg=45.0, max_scale=0.15):
    """Turn each sample of ``x`` (N, C, P, P) about its centre by a random angle and rescale it.

    The dihedral group only turns by right angles; fibre bundles and cell rows run at
    every angle, and neighbouring slices differ in scale and shear a little. Channels
    share the transform (patch and context stay registered); corners are mirrored in.
    """
    n = x.shape[0]
    a = (torch.rand(n, generator=gen) * 2 - 1) * math.radians(max_deg)
    z = torch.exp((torch.rand(n, generator=gen) * 2 - 1) * math.log1p(max_scale))
    cos, sin = torch.cos(a) / z, torch.sin(a) / z
    theta = torch.stack([torch.stack([cos, -sin, torch.zeros(n)], 1), torch.stack([sin, cos, torch.zeros(n)], 1)], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)


def augment(x, gen, *, border_p=BORDER_P, rotate_p=ROTATE_P, ratios=None, **gray):
    """Random tissue edge in the context, free rotation and scale, dihedral transform,
    gray-level jitter, blur, noise.

    ``x`` is (N, C, P, P) in [0, 1] (channels 1.., if any, the pooled context fields, ``ratios``
    their widths relative to the first (see :func:`tissue_edge`): they get the
    same geometric and gray-level transform). These make a model trained on a 19-level
    slice indifferent to fine gray levels, so it also works on full-depth slices.
    """
    n = x.shape[0]
    if x.shape[1] > 1 and border_p > 0:
        x = torch.cat([x[:, :1], tissue_edge(x[:, 1:], gen, border_p, ratios)], 1)
    if rotate_p > 0 and float(torch.rand(1, generator=gen)) < rotate_p:
        x = rotate_scale(x, gen)
    k = int(torch.randint(0, 4, (1,), generator=gen))
    x = torch.rot90(x, k, dims=(2, 3))
    flip = torch.rand(n, generator=gen) < 0.5
    x = torch.where(flip[:, None, None, None], x.flip(3), x)
    return intensity_augment(x, gen, **gray)


def intensity_augment(x, gen, *, blur_max=1.5, bin_p=0.0):
    """The gray-level part of :func:`augment` (per sample: gamma, contrast and brightness,
    then per batch: blur, noise, re-quantization), shared by patches and tiles (``x`` (N, C, S, S)).

    ``blur_max``: the Gaussian blur's sigma is drawn in [0, blur_max] px per batch. ``bin_p``: share of
    batches binned 2 x 2 and resampled back (bilinear) after the blur, as another instrument's or
    reconstruction's resolution would; 0 draws nothing (the default recipe's random stream unchanged).
    """
    n = x.shape[0]
    gamma = torch.exp(torch.empty(n, 1, 1, 1).uniform_(-0.4, 0.4, generator=gen))
    x = x.clamp_min(0) ** gamma
    mean = x[:, :1].mean(dim=(2, 3), keepdim=True)  # one affine map for patch and context
    contrast = torch.exp(torch.empty(n, 1, 1, 1).uniform_(-0.35, 0.35, generator=gen))
    bright = torch.empty(n, 1, 1, 1).uniform_(-0.15, 0.15, generator=gen)
    x = (x - mean) * contrast + mean + bright
    sigma = float(torch.empty(1).uniform_(0.0, blur_max, generator=gen))
    if sigma > 0.3:
        r = max(1, int(math.ceil(2.5 * sigma)))
        g = torch.exp(-torch.arange(-r, r + 1).float() ** 2 / (2 * sigma**2))
        g = g / g.sum()
        c = x.shape[1]
        x = F.conv2d(F.pad(x, (r, r, 0, 0), mode="reflect"), g.view(1, 1, 1, -1).repeat(c, 1, 1, 1), groups=c)
        x = F.conv2d(F.pad(x, (0, 0, r, r), mode="reflect"), g.view(1, 1, -1, 1).repeat(c, 1, 1, 1), groups=c)
    if bin_p > 0 and float(torch.rand(1, generator=gen)) < bin_p:
        x = F.interpolate(F.avg_pool2d(x, 2, ceil_mode=True), size=x.shape[-2:], mode="bilinear", align_corners=False)
    noise = torch.empty(n, 1, 1, 1).uniform_(0.0, 0.06, generator=gen)
    x = x + noise * torch.randn(x.shape, generator=gen)
    # gray-level depth: a third of the batches re-quantized to 12..64 levels (slices differ in depth)
    if float(torch.rand(1, generator=gen)) < 1 / 3:
        levels = float(torch.randint(12, 65, (1,), generator=gen))
        x = torch.round(x.clamp(0, 1) * (levels - 1)) / (levels - 1)
    return x


def normalize(x, norm):
    return (x - norm["mean"]) / norm["std"]


@torch.no_grad()
def predict(model, x_unit, norm, batch=256):
    """Logits of ``model`` on unit-range patches, in batches."""
    model.eval()
    out = [model(normalize(x_unit[i : i + batch], norm)) for i in range(0, len(x_unit), batch)]
    return torch.cat(out) if out else torch.zeros(0)


#: The regularizers :func:`fit` takes besides the augmentation shares (the cross-validation's candidates).
REGIME = {"weight_decay": 0.0, "label_smoothing": 0.0, "mixup": 0.0, "swa_epochs": 0, "blur_max": 1.5, "bin_p": 0.0}


def fit(train, val, *, n_classes, patch_size, norm, epochs, batch_size, lr, schedule, seed,
        max_minutes=None, device="cpu", progress=None, context=0, checkpoint=None, redraw=None,
        border_p=BORDER_P, rotate_p=ROTATE_P, tiles=None, tile_batch=8, tile_batches=None, **regime):
    """Train the paper's CNN; return the best-on-validation model and the history.

    ``train`` and ``val`` are ``(x_unit, y)`` tensors. The checkpoint with the best validation accuracy is
    kept (``val=None``: the last epoch's). ``max_minutes`` stops before an epoch that would not finish in time.
    ``checkpoint`` (a path) receives the best state so far after every improvement, so a long run can be
    exported even if it is stopped. ``border_p`` and ``rotate_p`` are the shares of augmentation by
    :func:`tissue_edge` and :func:`rotate_scale`. ``redraw(epoch)``, if given, returns a fresh ``(x_unit, y)``
    training set for each epoch after the first. ``tiles`` (a :class:`~brainrt_train.tiles.TileSampler`):
    train on tiles (:class:`_Plan`). ``regime``: :data:`REGIME`'s keys (:class:`_Stepper`).
    """
    torch.manual_seed(seed)
    model = PaperCNN(n_classes, patch_size=patch_size, context=context).to(device)
    aug = {"border_p": border_p, "rotate_p": rotate_p, "ratios": tuple(k // model.context[0] for k in model.context) or None}
    plan = _Plan(len(train[1]), epochs, batch_size, tiles, tile_batch, tile_batches, np.random.default_rng([seed, 2]))
    step = _Stepper(model, lr, schedule, plan, torch.Generator().manual_seed(seed), norm, device, aug,
                    _bar(progress, plan.samples), n_classes=n_classes, **regime)
    (xt, yt), best, best_acc, history, t0 = train, None, -1.0, [], time.perf_counter()
    for epoch in range(epochs):
        te = time.perf_counter()
        if redraw is not None and epoch > 0:
            xt, yt = redraw(epoch)
        loss, train_acc = step.run(epoch, xt, yt)
        val_acc = step.accuracy(*val) if val is not None else float("nan")
        dt = time.perf_counter() - te
        history.append(_epoch_record(epoch, epochs, loss, train_acc, val_acc, dt, step.opt.param_groups[0]["lr"]))
        if val is None or val_acc > best_acc:
            best_acc, best = val_acc, copy.deepcopy(model.state_dict())
            if checkpoint:
                save_checkpoint(checkpoint, best, history=history, n_classes=n_classes, patch_size=patch_size,
                                context=list(model.context), norm=norm)
        step.shown(epoch=epoch + 1, val=f"{val_acc:.3f}")
        if max_minutes and (time.perf_counter() - t0 + dt) / 60 > max_minutes:
            log.info("stopping after epoch %d: --max-minutes %.0f reached", epoch + 1, max_minutes)
            break
    step.shown(close=True)
    model.load_state_dict(step.averaged() or best)
    return model.cpu().eval(), history, time.perf_counter() - t0


class _Plan:
    """How an epoch runs: ``n`` patches in batches of ``batch_size``, or ``tile_batches`` batches of
    ``tile_batch`` tiles from ``tiles`` (drawn with ``rng``); ``steps`` in all, ``samples`` positions in all."""

    def __init__(self, n, epochs, batch_size, tiles, tile_batch, tile_batches, rng):
        self.epochs, self.batch_size, self.tiles, self.tile_batch, self.rng = epochs, batch_size, tiles, tile_batch, rng
        if tiles is None:
            self.per_epoch, self.samples = math.ceil(n / batch_size), epochs * n
        else:
            per_tile = tiles.positions_per_tile()
            self.per_epoch = tile_batches or max(1, math.ceil(n / (tile_batch * per_tile)))
            self.samples = epochs * self.per_epoch * tile_batch * per_tile
        self.steps = epochs * self.per_epoch


def _epoch_record(epoch, epochs, loss, train_acc, val_acc, dt, lr):
    """The history entry of epoch ``epoch`` (0-based), said in the log with the time left."""
    log.info("epoch %d/%d  loss %.3f  train %.3f  val %.3f  %.0fs  ETA %.0f min",
             epoch + 1, epochs, loss, train_acc, val_acc, dt, dt * (epochs - epoch - 1) / 60)
    return {"epoch": epoch + 1, "loss": loss, "train_acc": train_acc, "val_acc": val_acc, "seconds": round(dt, 1),
            "lr": lr}


def _bar(progress, total):
    """A progress bar over ``total`` training patches, or None."""
    if not progress:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, unit="patch", desc="train", mininterval=5.0, smoothing=0.05)


class _Stepper:
    """One training epoch after another as ``plan`` (:class:`_Plan`) says: Adam (AdamW with ``weight_decay``;
    the one-cycle schedule over the plan's steps), the augmentation ``aug`` drawn from ``gen``, the
    progress ``bar`` (with :func:`intensity_augment`'s ``blur_max``, ``bin_p``). ``label_smoothing``: cross-entropy's; ``mixup``: Beta(a, a) blend of pairs of
    samples and of their losses (0 = off); ``swa_epochs``: :meth:`averaged` gives the average of the
    weights and batch-norm statistics after each of the last ``swa_epochs`` epochs."""

    def __init__(self, model, lr, schedule, plan, gen, norm, device, aug, bar, *, weight_decay=0.0,
                 label_smoothing=0.0, mixup=0.0, swa_epochs=0, blur_max=1.5, bin_p=0.0, n_classes=None):
        self.model, self.gen, self.norm, self.batch_size, self.device, self.bar = (
            model, gen, norm, plan.batch_size, device, bar)
        self.aug = {**aug, "blur_max": blur_max, "bin_p": bin_p}
        self.plan, self.label_smoothing, self.mixup, self.n_classes = plan, label_smoothing, mixup, n_classes
        self.opt = (torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay) if weight_decay
                    else torch.optim.Adam(model.parameters(), lr=lr))
        self.steps = plan.steps
        self.sched = (torch.optim.lr_scheduler.OneCycleLR(self.opt, max_lr=lr, total_steps=self.steps, pct_start=0.15)
                      if schedule == "onecycle" else None)
        self.swa_epochs = swa_epochs
        self.swa = torch.optim.swa_utils.AveragedModel(model, use_buffers=True) if swa_epochs else None

    def run(self, epoch, xt, yt):
        """Epoch ``epoch`` (0-based) of the plan on ``(xt, yt)`` or on tiles; returns (mean loss, training accuracy)."""
        p = self.plan
        out = self.epoch(xt, yt) if p.tiles is None else self.tile_epoch(p.tiles, p.per_epoch, p.tile_batch, p.rng)
        if self.swa is not None and epoch >= p.epochs - self.swa_epochs:
            self.swa.update_parameters(self.model)
        return out

    def averaged(self):
        """The averaged state (``swa_epochs``), or None."""
        return self.swa.module.state_dict() if self.swa is not None and self.swa.n_averaged > 0 else None

    def _step(self, xb, yb, scores, weight=None):
        """Forward ``xb`` by ``scores`` (mixed up with a shuffled copy when ``mixup``), loss against
        ``yb`` (-1 ignored; class ``weight``s), backward and an optimizer step; returns (loss, scores)."""
        lam, perm = 1.0, None
        if self.mixup > 0:
            lam = float(torch.distributions.Beta(self.mixup, self.mixup).sample())
            lam = max(lam, 1 - lam)
            perm = torch.randperm(len(xb), generator=self.gen)
            xb = lam * xb + (1 - lam) * xb[perm]
        logits = scores(xb)
        ce = dict(weight=weight, ignore_index=-1, label_smoothing=self.label_smoothing)
        loss = F.cross_entropy(logits, yb, **ce)
        if perm is not None:
            loss = lam * loss + (1 - lam) * F.cross_entropy(logits, yb[perm], **ce)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        if self.sched is not None and self.sched.last_epoch + 1 < self.steps:
            self.sched.step()
        return float(loss.detach()), logits.detach()

    def epoch(self, xt, yt):
        """One pass over ``(xt, yt)`` in a random order; returns (mean loss, training accuracy)."""
        self.model.train()
        perm = torch.randperm(len(yt), generator=self.gen)
        loss_sum, correct, seen = 0.0, 0, 0
        for i in range(0, len(perm), self.batch_size):
            idx = perm[i : i + self.batch_size]
            if len(idx) < 2:
                continue
            xb = normalize(augment(xt[idx], self.gen, **self.aug), self.norm).to(self.device)
            yb = yt[idx].to(self.device)
            loss, logits = self._step(xb, yb, self.model)
            loss_sum += loss * len(idx)
            correct += int((logits.argmax(1) == yb).sum())
            seen += len(idx)
            if self.bar is not None:
                self.bar.update(len(idx))
        return loss_sum / max(seen, 1), correct / max(seen, 1)

    def tile_epoch(self, sampler, n_batches, n_tiles, rng):
        """``n_batches`` batches of ``n_tiles`` tiles from ``sampler``, each class present weighted
        equally (:func:`~brainrt_train.tiles.balanced_weights`); returns (mean loss, training
        accuracy over the labeled positions)."""
        from .tiles import balanced_weights

        self.model.train()
        loss_sum, correct, seen, batches = 0.0, 0, 0, 0
        for _ in range(n_batches):
            x, y, _ = sampler.draw(n_tiles, rng)
            gray = {k: self.aug[k] for k in ("blur_max", "bin_p")}
            xb = normalize(intensity_augment(x, self.gen, **gray), self.norm).to(self.device)
            yb = y.to(self.device)
            if not bool((yb >= 0).any()):
                continue
            loss, logits = self._step(xb, yb, self.model.tile_logits, balanced_weights(yb, self.n_classes))
            labeled = yb >= 0
            loss_sum += loss
            batches += 1
            correct += int((logits.argmax(1)[labeled] == yb[labeled]).sum())
            seen += int(labeled.sum())
            if self.bar is not None:
                self.bar.update(y.numel())
        return loss_sum / max(batches, 1), correct / max(seen, 1)

    def accuracy(self, x_unit, y):
        """Accuracy of the model on ``(x_unit, y)`` (0 without samples)."""
        if not len(y):
            return 0.0
        return float((predict(self.model, x_unit.to(self.device), self.norm).argmax(1).cpu() == y).float().mean())

    def shown(self, close=False, **postfix):
        """The progress bar's postfix, or its end."""
        if self.bar is not None:
            self.bar.close() if close else self.bar.set_postfix(**postfix)


def save_checkpoint(path, state, **meta):
    """Best weights and what is needed to rebuild the model, written atomically."""
    from pathlib import Path

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save({"state_dict": state, **meta}, tmp)
    tmp.replace(path)


def load_checkpoint(path):
    """``(model, meta)`` from :func:`save_checkpoint`'s file."""
    ck = torch.load(path, map_location="cpu", weights_only=False)
    model = PaperCNN(ck["n_classes"], patch_size=ck["patch_size"], context=ck.get("context", 0))
    model.load_state_dict(ck["state_dict"])
    return model.eval(), ck


def classification_metrics(y_true, y_pred, names):
    """Accuracy, confusion matrix and per-class precision/recall/F1 as a JSON-able dict."""
    from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

    labels = list(range(len(names)))
    cm = confusion_matrix(y_true, y_pred, labels=labels)
    p, r, f, s = precision_recall_fscore_support(y_true, y_pred, labels=labels, zero_division=0)
    return {
        "accuracy": float(np.mean(np.asarray(y_true) == np.asarray(y_pred))) if len(y_true) else float("nan"),
        "n": int(len(y_true)),
        "confusion_matrix": cm.tolist(),
        "per_class": {n: {"precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]), "support": int(s[i])}
                      for i, n in enumerate(names)},
    }
