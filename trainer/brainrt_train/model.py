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
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from brainrt.geometry import final_map_size, window_offset, window_size

CONV_SPEC = ((7, 16), (5, 32), (3, 64), (3, 128))
CTX_SPEC = ((7, 16), (5, 32), (3, 32), (3, 16))
FC_SIZES = (1024, 64)


def _conv_stack(spec):
    layers, c_in = [], 1
    for k, c_out in spec:
        layers += [nn.Conv2d(c_in, c_out, k), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True), nn.MaxPool2d(2)]
        c_in = c_out
    return nn.Sequential(*layers)


def footprint_size(patch_size: int, context: int = 0) -> int:
    """Side of the pixels one position reads: the patch, or its ``context``-times wider field."""
    return patch_size * context if context else patch_size


class PaperCNN(nn.Module):
    """Paper network on ``(N, 1, P, P)`` patches; evaluates the centred window only."""

    def __init__(self, n_classes: int, *, patch_size: int = 128, dropout: float = 0.5, context: int = 0):
        super().__init__()
        self.patch_size = patch_size
        self.context = int(context)
        self.window = window_size(patch_size)
        self.offset = window_offset(patch_size)
        self.conv = _conv_stack(CONV_SPEC)
        self.ctx_conv = _conv_stack(CTX_SPEC) if self.context else None
        m = final_map_size(patch_size)
        n_in = CONV_SPEC[-1][1] * m * m + (CTX_SPEC[-1][1] * m * m if self.context else 0)
        self.fc1 = nn.Linear(n_in, FC_SIZES[0])
        self.bn1 = nn.BatchNorm1d(FC_SIZES[0])
        self.drop = nn.Dropout(dropout)
        self.fc2 = nn.Linear(FC_SIZES[0], FC_SIZES[1])
        self.bn2 = nn.BatchNorm1d(FC_SIZES[1])
        self.out = nn.Linear(FC_SIZES[1], n_classes)

    def crop(self, x):
        o, w = self.offset, self.window
        return x[:, :, o : o + w, o : o + w]

    def features(self, x):
        """Activations of the last hidden layer, ``(N, 64)``; ``x`` is ``(N, 1 or 2, P, P)``."""
        h = self.conv(self.crop(x[:, :1])).flatten(1)
        if self.context:
            h = torch.cat([h, self.ctx_conv(self.crop(x[:, 1:2])).flatten(1)], 1)
        h = self.drop(torch.relu(self.bn1(self.fc1(h))))
        return torch.relu(self.bn2(self.fc2(h)))

    def forward(self, x):
        return self.out(self.features(x))


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
            self.ctx_convs = _fold_stack(trained.ctx_conv) if self.context else None
            self.fc1 = nn.Linear(trained.fc1.in_features, trained.fc1.out_features)
            self.fc2 = nn.Linear(trained.fc2.in_features, trained.fc2.out_features)
            for new, old, bn in ((self.fc1, trained.fc1, trained.bn1), (self.fc2, trained.fc2, trained.bn2)):
                w, b = _fold(old.weight, old.bias, bn)
                new.weight.copy_(w), new.bias.copy_(b)
            self.head = nn.Linear(trained.out.in_features, trained.out.out_features)
            self.head.load_state_dict(trained.out.state_dict())
            if self.context:  # FC1 by branch: the main half's bytes equal the dense graphs' (stored once)
                n = self.fc1.in_features - CTX_SPEC[-1][1] * final_map_size(self.patch_size) ** 2
                self.fc1_main = nn.Linear(n, self.fc1.out_features)
                self.fc1_main.weight.copy_(self.fc1.weight[:, :n]), self.fc1_main.bias.copy_(self.fc1.bias)
                self.fc1_ctx = nn.Linear(self.fc1.in_features - n, self.fc1.out_features, bias=False)
                self.fc1_ctx.weight.copy_(self.fc1.weight[:, n:])
        self.eval()

    def split(self, x):
        """Footprint ``(N, 1, F, F)`` -> the patch and the pooled context, each ``(N, 1, P, P)``."""
        if not self.context:
            return x, None
        a = (self.footprint - self.patch_size) // 2
        return x[:, :, a : a + self.patch_size, a : a + self.patch_size], F.avg_pool2d(x, self.context)

    def forward(self, x):
        """Features of footprints ``(N, 1, F, F)`` (F = P without context)."""
        o, w = self.offset, self.window
        patch, ctx = self.split(x)
        h = _run_stack(self.convs, patch[:, :, o : o + w, o : o + w]).flatten(1)
        if self.context:
            hc = _run_stack(self.ctx_convs, ctx[:, :, o : o + w, o : o + w]).flatten(1)
            h = torch.relu(self.fc1_main(h) + self.fc1_ctx(hc))
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


def dense_geometry(patch_size: int, context: int = 0):
    """``(window, offset)``: the pixels one output reads, and where they start in the footprint.

    Without context this is the patch's centred window (118 at offset 5 for 128 px). With
    context the pooled context's window is the widest reach (``context * 118`` px).
    """
    w, o = window_size(patch_size), window_offset(patch_size)
    if not context:
        return w, o
    return context * w, context * o


class DenseCNN(nn.Module):
    """Fully convolutional form of :class:`PlainCNN`: features of every window position.

    Input ``(1, 1, H, W)``; output ``(1, F, H', W')`` where ``output[..., i, j]`` equals the
    per-patch features of the footprint whose dense window (:func:`dense_geometry`) has
    its top-left pixel at ``(i * s, j * s)``, and ``H' = (H - window) // s + 1``. For
    output stride ``s = 2**t`` (1, 2, 4, 8, 16) the first ``t`` stride-2 steps keep their
    stride; the others run at stride 1 and every later layer is dilated ("a trous"), so
    each output is computed once, exactly. The context branch's 4 x 4 average pool counts
    as two such steps.
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
        self.shift = 0
        if self.context:
            k = plain.context
            self.pool_stride = min(stride, k)
            self.ctx_convs = plain.ctx_convs
            self.ctx_plan = _atrous_plan(len(self.ctx_convs), t - (self.pool_stride.bit_length() - 1),
                                         k // self.pool_stride)
            cc = plain.ctx_convs[-1].out_channels
            self.fc1c_w = nn.Parameter(w1[:, c * m * m :].reshape(-1, cc, m, m).clone(), requires_grad=False)
            # the patch's window sits this far inside the dense window, on every side
            self.shift = (plain.footprint - plain.patch_size) // 2 + plain.offset - k * plain.offset
        self.eval()

    def forward(self, x):
        a = self.shift
        main = x[:, :, a:-a, a:-a] if a else x
        y = F.conv2d(_run_dense(self.convs, self.main_plan, main), self.fc1_w, dilation=self.main_plan[2])
        if self.context:
            ctx = F.avg_pool2d(x, self.context, stride=self.pool_stride)
            ctx = _run_dense(self.ctx_convs, self.ctx_plan, ctx)
            y = y + F.conv2d(ctx, self.fc1c_w, dilation=self.ctx_plan[2])
        y = torch.relu(y + self.fc1_b)
        return torch.relu(F.conv2d(y, self.fc2_w, self.fc2_b))
