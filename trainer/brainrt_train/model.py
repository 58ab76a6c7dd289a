"""The paper's CNN (Balwani & Dyer), with valid convolutions and a centred window.

Layers: conv 7x7/16, 5x5/32, 3x3/64, 3x3/128, each followed by batch norm, ReLU and a
2x2 max-pool; then FC 1024 and FC 64 (the feature layer, ReLU) and FC n_classes.
Batch norm speeds training on a CPU budget and is folded into the preceding
convolution / linear layer at export, so the exported graph is the paper's plain one.

Context branch (``context=4``): an area is a large-scale property, and 128 px sees
little of it. The same position is also seen over a ``4 * P`` footprint (512 px),
averaged 4 x 4 down to ``P`` px, through a second, narrower conv stack
(:data:`CTX_SPEC`) whose last map joins the main one before FC1; the feature layer
stays 64 wide. Training feeds ``(N, 2, P, P)``: channel 0 the patch, channel 1 the
pooled context. The exported graphs take the raw ``(N, 1, 4P, 4P)`` footprint and do
the crop and the pooling themselves, so trainer and runtime share one definition.

Several context scales (``context=(4, 16)``): each factor ``k`` is the ``k * P`` field
averaged ``k x k`` to ``P`` px, through its own :data:`CTX_SPEC` stack, all joined before
FC1 (input channel ``1 + i`` holds scale ``i``, ascending). The footprint is the widest
field. ``context=4`` is the one-scale case, unchanged (its stack keeps the name ``ctx_conv``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from brainrt.geometry import NET_STRIDE, final_map_size, window_offset, window_size

CONV_SPEC = ((7, 16), (5, 32), (3, 64), (3, 128))
CTX_SPEC = ((7, 16), (5, 32), (3, 32), (3, 16))
FC_SIZES = (1024, 64)


def _conv_stack(spec):
    layers, c_in = [], 1
    for k, c_out in spec:
        layers += [nn.Conv2d(c_in, c_out, k), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True), nn.MaxPool2d(2)]
        c_in = c_out
    return nn.Sequential(*layers)


def context_scales(context) -> tuple:
    """The context factors as an ascending tuple: ``0``/``None`` -> ``()``, ``4`` -> ``(4,)``, ``(16, 4)`` -> ``(4, 16)``."""
    if not context:
        return ()
    scales = (int(context),) if isinstance(context, (int, float)) else tuple(sorted({int(k) for k in context}))
    for k in scales:
        if k < 2 or k & (k - 1):
            raise ValueError(f"context factors must be powers of two >= 2, got {k}")
    return scales


def footprint_size(patch_size: int, context=0) -> int:
    """Side of the pixels one position reads: the patch, or its widest context field."""
    scales = context_scales(context)
    return patch_size * scales[-1] if scales else patch_size


def _ctx_name(i):
    return "ctx_conv" if i == 0 else f"ctx_conv{i}"


class PaperCNN(nn.Module):
    """Paper network on ``(N, 1, P, P)`` patches; evaluates the centred window only."""

    def __init__(self, n_classes: int, *, patch_size: int = 128, dropout: float = 0.5, context=0):
        super().__init__()
        self.patch_size = patch_size
        self.context = context_scales(context)
        self.window = window_size(patch_size)
        self.offset = window_offset(patch_size)
        self.conv = _conv_stack(CONV_SPEC)
        if not self.context:
            self.ctx_conv = None
        for i in range(len(self.context)):
            self.add_module(_ctx_name(i), _conv_stack(CTX_SPEC))
        m = final_map_size(patch_size)
        n_in = CONV_SPEC[-1][1] * m * m + CTX_SPEC[-1][1] * m * m * len(self.context)
        self.fc1 = nn.Linear(n_in, FC_SIZES[0])
        self.bn1 = nn.BatchNorm1d(FC_SIZES[0])
        self.drop = nn.Dropout(dropout)
        self.fc2 = nn.Linear(FC_SIZES[0], FC_SIZES[1])
        self.bn2 = nn.BatchNorm1d(FC_SIZES[1])
        self.out = nn.Linear(FC_SIZES[1], n_classes)

    def crop(self, x):
        o, w = self.offset, self.window
        return x[:, :, o : o + w, o : o + w]

    def ctx_stacks(self):
        return [getattr(self, _ctx_name(i)) for i in range(len(self.context))]

    def features(self, x):
        """Activations of the last hidden layer, ``(N, 64)``; ``x`` is ``(N, 1 + n_scales, P, P)``."""
        h = [self.conv(self.crop(x[:, :1])).flatten(1)]
        h += [stack(self.crop(x[:, i + 1 : i + 2])).flatten(1) for i, stack in enumerate(self.ctx_stacks())]
        h = torch.cat(h, 1) if len(h) > 1 else h[0]
        h = self.drop(torch.relu(self.bn1(self.fc1(h))))
        return torch.relu(self.bn2(self.fc2(h)))

    def forward(self, x):
        return self.out(self.features(x))

    def tile_geometry(self, n_out: int):
        """``(side, offset)`` of tiles with ``n_out x n_out`` outputs (:func:`tile_geometry`)."""
        return tile_geometry(self.patch_size, self.context, n_out)

    def tile_features(self, x):
        """The network evaluated fully convolutionally on tiles, at its own stride 16.

        ``x`` is ``(N, 1, T, T)`` normalized raw pixels (patch and context fields in one
        tile); the result ``(N, 64, n, n)`` holds at ``[..., i, j]`` what :meth:`features`
        gives for the position whose centre is tile pixel ``offset + 16 (i, j)`` (:func:`tile_geometry`)
        (the formulation of :class:`DenseCNN` at stride 16, with this network's trainable
        layers: neighbouring positions share their convolutions). Batch norm and dropout act
        per position as in :meth:`features`; in training mode batch norm's statistics are
        taken over every position of the tiles (not only the labeled ones).
        """
        P, o, m = self.patch_size, self.offset, final_map_size(self.patch_size)
        kmax = self.context[-1] if self.context else 1
        a = (kmax - 1) * (P // 2 - o)
        h, _ = _dense_stack(self.conv, x[:, :, a : x.shape[2] - a, a : x.shape[3] - a] if a else x, 4)
        w1, c = self.fc1.weight, CONV_SPEC[-1][1]
        y = F.conv2d(h, w1[:, : c * m * m].reshape(-1, c, m, m), self.fc1.bias)
        start, cc = c * m * m, CTX_SPEC[-1][1]
        for k, stack in zip(self.context, self.ctx_stacks()):
            b = (kmax - k) * (P // 2 - o)
            ctx = F.avg_pool2d(x[:, :, b : x.shape[2] - b, b : x.shape[3] - b] if b else x, k)
            ctx, d = _dense_stack(stack, ctx, 4 - (k.bit_length() - 1))
            y = y + F.conv2d(ctx, w1[:, start : start + cc * m * m].reshape(-1, cc, m, m), dilation=d)
            start += cc * m * m
        y = self.drop(torch.relu(_per_position(self.bn1, y)))
        y = F.conv2d(y, self.fc2.weight[:, :, None, None], self.fc2.bias)
        return torch.relu(_per_position(self.bn2, y))

    def tile_logits(self, x):
        """Class scores of every output position of tiles ``(N, 1, T, T)``: ``(N, n_classes, n, n)``."""
        return F.conv2d(self.tile_features(x), self.out.weight[:, :, None, None], self.out.bias)


def tile_geometry(patch_size: int, context, n_out: int):
    """``(side, offset)`` of a tile whose stride-16 evaluation (:meth:`PaperCNN.tile_features`)
    has ``n_out x n_out`` output positions: output ``(i, j)`` is the patch whose centre is
    tile pixel ``(offset + 16 i, offset + 16 j)`` (the runtime's centre convention)."""
    scales = context_scales(context)
    kmax = scales[-1] if scales else 1
    side = kmax * window_size(patch_size) + NET_STRIDE * (n_out - 1)
    return side, kmax * (patch_size // 2 - window_offset(patch_size))


def _per_position(bn, y):
    """A ``BatchNorm1d`` over channels applied to a map ``(N, C, h, w)`` (each position a sample)."""
    n, c, h, w = y.shape
    return bn(y.reshape(n, c, h * w)).reshape(n, c, h, w)


def _dense_stack(seq, x, n_fast):
    """A trainable conv stack (conv, batch norm, ReLU, 2x2 max-pool) run densely: the first
    ``n_fast`` pools keep stride 2, later layers are dilated (:func:`_atrous_plan`).
    Returns the map and the dilation of the layer that follows."""
    convs = [m for m in seq if isinstance(m, nn.Conv2d)]
    bns = [m for m in seq if isinstance(m, nn.BatchNorm2d)]
    conv_dil, pool_cfg, d = _atrous_plan(len(convs), n_fast, 1)
    for conv, bn, dil, (s, pd) in zip(convs, bns, conv_dil, pool_cfg):
        x = torch.relu(bn(F.conv2d(x, conv.weight, conv.bias, dilation=dil)))
        x = F.max_pool2d(x, 2, stride=s, dilation=pd)
    return x, d


def _fold(weight, bias, bn):
    """Fold an eval-mode batch norm that follows a layer into its weight and bias."""
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    shape = (-1,) + (1,) * (weight.dim() - 1)
    return weight * scale.reshape(shape), (bias - bn.running_mean) * scale + bn.bias


def _fold_stack(seq):
    """Conv + batch norm pairs of a trained stack -> plain convolutions with the norm folded in."""
    convs = [m for m in seq if isinstance(m, nn.Conv2d)]
    bns = [m for m in seq if isinstance(m, nn.BatchNorm2d)]
    out = nn.ModuleList()
    for conv, bn in zip(convs, bns):
        new = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size)
        w, b = _fold(conv.weight, conv.bias, bn)
        new.weight.copy_(w), new.bias.copy_(b)
        out.append(new)
    return out


def _run_stack(convs, h):
    for conv in convs:
        h = torch.max_pool2d(torch.relu(conv(h)), 2)
    return h


class PlainCNN(nn.Module):
    """The exported form: batch norm folded, no dropout; ``forward`` returns features."""

    def __init__(self, trained: PaperCNN):
        super().__init__()
        trained = trained.eval()
        self.patch_size, self.window, self.offset = trained.patch_size, trained.window, trained.offset
        self.context = trained.context
        self.footprint = footprint_size(self.patch_size, self.context)
        with torch.no_grad():
            self.convs = _fold_stack(trained.conv)
            stacks = [_fold_stack(st) for st in trained.ctx_stacks()]
            self.ctx_convs = stacks[0] if len(stacks) == 1 else (nn.ModuleList(stacks) if stacks else None)
            self.fc1 = nn.Linear(trained.fc1.in_features, trained.fc1.out_features)
            self.fc2 = nn.Linear(trained.fc2.in_features, trained.fc2.out_features)
            for new, old, bn in ((self.fc1, trained.fc1, trained.bn1), (self.fc2, trained.fc2, trained.bn2)):
                w, b = _fold(old.weight, old.bias, bn)
                new.weight.copy_(w), new.bias.copy_(b)
            self.head = nn.Linear(trained.out.in_features, trained.out.out_features)
            self.head.load_state_dict(trained.out.state_dict())
            if self.context:  # FC1 by branch: the main half's bytes equal the dense graphs' (stored once)
                c = CTX_SPEC[-1][1] * final_map_size(self.patch_size) ** 2
                n = self.fc1.in_features - c * len(self.context)
                self.fc1_main = nn.Linear(n, self.fc1.out_features)
                self.fc1_main.weight.copy_(self.fc1.weight[:, :n]), self.fc1_main.bias.copy_(self.fc1.bias)
                parts = []
                for i in range(len(self.context)):
                    part = nn.Linear(c, self.fc1.out_features, bias=False)
                    part.weight.copy_(self.fc1.weight[:, n + i * c : n + (i + 1) * c])
                    parts.append(part)
                self.fc1_ctx = parts[0] if len(parts) == 1 else nn.ModuleList(parts)
        self.eval()

    def ctx_parts(self):
        """``[(factor, folded conv stack, FC1 slice)]``, one per context scale."""
        if not self.context:
            return []
        if len(self.context) == 1:
            return [(self.context[0], self.ctx_convs, self.fc1_ctx)]
        return list(zip(self.context, self.ctx_convs, self.fc1_ctx))

    def split(self, x):
        """Footprint ``(N, 1, F, F)`` -> the patch ``(N, 1, P, P)`` and the pooled fields, one per scale."""
        P, F_ = self.patch_size, self.footprint
        a = (F_ - P) // 2
        pooled = []
        for k in self.context:
            b = (F_ - k * P) // 2
            field = x[:, :, b : b + k * P, b : b + k * P] if b else x
            pooled.append(F.avg_pool2d(field, k))
        return x[:, :, a : a + P, a : a + P], pooled

    def forward(self, x):
        """Features of footprints ``(N, 1, F, F)`` (F = P without context)."""
        o, w = self.offset, self.window
        patch, pooled = self.split(x)
        h = _run_stack(self.convs, patch[:, :, o : o + w, o : o + w]).flatten(1)
        if self.context:
            h = self.fc1_main(h)
            for (_, convs, fc), ctx in zip(self.ctx_parts(), pooled):
                h = h + fc(_run_stack(convs, ctx[:, :, o : o + w, o : o + w]).flatten(1))
            h = torch.relu(h)
        else:
            h = torch.relu(self.fc1(h))
        return torch.relu(self.fc2(h))

    def logits(self, x):
        return self.head(self.forward(x))


def _atrous_plan(n_layers, n_fast, d0):
    """Dilations and pool settings of a stack run densely: the first ``n_fast`` pools keep stride 2."""
    conv_dil, pool_cfg, d = [], [], d0
    for i in range(n_layers):
        conv_dil.append(d)
        if i < n_fast:
            pool_cfg.append((2, d))  # stride 2 (in dilated units: stride 2, dilation d)
        else:
            pool_cfg.append((1, d))
            d *= 2
    return conv_dil, pool_cfg, d


def _run_dense(convs, plan, x):
    conv_dil, pool_cfg, _ = plan
    for conv, d, (s, pd) in zip(convs, conv_dil, pool_cfg):
        x = torch.relu(F.conv2d(x, conv.weight, conv.bias, dilation=d))
        x = F.max_pool2d(x, 2, stride=s, dilation=pd)
    return x


def dense_geometry(patch_size: int, context=0):
    """``(window, offset)``: the pixels one output reads, and where they start in the footprint.

    Without context this is the patch's centred window (118 at offset 5 for 128 px). With
    context the widest pooled field's window is the widest reach (``k * 118`` px, k the largest factor).
    """
    w, o = window_size(patch_size), window_offset(patch_size)
    scales = context_scales(context)
    if not scales:
        return w, o
    return scales[-1] * w, scales[-1] * o


class DenseCNN(nn.Module):
    """Fully convolutional form of :class:`PlainCNN`: features of every window position.

    Input ``(1, 1, H, W)``; output ``(1, F, H', W')`` where ``output[..., i, j]`` equals the
    per-patch features of the footprint whose dense window (:func:`dense_geometry`) has
    its top-left pixel at ``(i * s, j * s)``, and ``H' = (H - window) // s + 1``. For
    output stride ``s = 2**t`` (1, 2, 4, 8, 16) the first ``t`` stride-2 steps keep their
    stride; the others run at stride 1 and every later layer is dilated ("a trous"), so
    each output is computed once, exactly. A context branch's k x k average pool counts
    as log2(k) such steps. Each branch reads its own field, centred in the dense window.
    """

    def __init__(self, plain: PlainCNN, *, stride: int = 1):
        super().__init__()
        if stride not in (1, 2, 4, 8, 16):
            raise ValueError(f"dense stride must be 1, 2, 4, 8 or 16, got {stride}")
        self.stride, self.context = stride, plain.context
        self.convs = plain.convs
        t = stride.bit_length() - 1
        self.main_plan = _atrous_plan(len(self.convs), t, 1)
        m = final_map_size(plain.patch_size)
        c = plain.convs[-1].out_channels
        w1 = plain.fc1.weight.detach()
        self.fc1_w = nn.Parameter(w1[:, : c * m * m].reshape(-1, c, m, m).clone(), requires_grad=False)
        self.fc1_b = nn.Parameter(plain.fc1.bias.detach()[:, None, None].clone(), requires_grad=False)
        self.fc2_w = nn.Parameter(plain.fc2.weight.detach()[:, :, None, None].clone(), requires_grad=False)
        self.fc2_b = nn.Parameter(plain.fc2.bias.detach().clone(), requires_grad=False)
        kmax = plain.context[-1] if plain.context else 1
        # each branch's window sits this far inside the dense window, on every side
        self.shift = (kmax - 1) * (plain.patch_size // 2 - plain.offset)
        self.branches = []
        start = c * m * m
        for i, (k, convs, _) in enumerate(plain.ctx_parts()):
            ps = min(stride, k)
            cc = convs[-1].out_channels
            w = nn.Parameter(w1[:, start : start + cc * m * m].reshape(-1, cc, m, m).clone(), requires_grad=False)
            start += cc * m * m
            name = "ctx_convs" if i == 0 else f"ctx_convs{i}"
            self.add_module(name, convs)
            self.register_parameter("fc1c_w" if i == 0 else f"fc1c{i}_w", w)
            self.branches.append((k, ps, (kmax - k) * (plain.patch_size // 2 - plain.offset), convs,
                                  _atrous_plan(len(convs), t - (ps.bit_length() - 1), k // ps), w))
        self.eval()

    def forward(self, x):
        a = self.shift
        main = x[:, :, a:-a, a:-a] if a else x
        y = F.conv2d(_run_dense(self.convs, self.main_plan, main), self.fc1_w, dilation=self.main_plan[2])
        for k, ps, b, convs, plan, w in self.branches:
            ctx = F.avg_pool2d(x[:, :, b:-b, b:-b] if b else x, k, stride=ps)
            ctx = _run_dense(convs, plan, ctx)
            y = y + F.conv2d(ctx, w, dilation=plan[2])
        y = torch.relu(y + self.fc1_b)
        return torch.relu(F.conv2d(y, self.fc2_w, self.fc2_b))
