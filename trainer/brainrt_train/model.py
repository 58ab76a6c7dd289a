"""The paper's CNN (Balwani & Dyer), with valid convolutions and a centred window.

Layers: conv 7x7/16, 5x5/32, 3x3/64, 3x3/128, each followed by batch norm, ReLU and a
2x2 max-pool; then FC 1024 and FC 64 (the feature layer, ReLU) and FC n_classes.
Batch norm speeds training on a CPU budget and is folded into the preceding
convolution / linear layer at export, so the exported graph is the paper's plain one.
"""

from __future__ import annotations

import torch
from torch import nn

from brainrt.geometry import final_map_size, window_offset, window_size

CONV_SPEC = ((7, 16), (5, 32), (3, 64), (3, 128))
FC_SIZES = (1024, 64)


class PaperCNN(nn.Module):
    """Paper network on ``(N, 1, P, P)`` patches; evaluates the centred window only."""

    def __init__(self, n_classes: int, *, patch_size: int = 128, dropout: float = 0.5):
        super().__init__()
        self.patch_size = patch_size
        self.window = window_size(patch_size)
        self.offset = window_offset(patch_size)
        layers, c_in = [], 1
        for k, c_out in CONV_SPEC:
            layers += [nn.Conv2d(c_in, c_out, k), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True), nn.MaxPool2d(2)]
            c_in = c_out
        self.conv = nn.Sequential(*layers)
        m = final_map_size(patch_size)
        self.fc1 = nn.Linear(c_in * m * m, FC_SIZES[0])
        self.bn1 = nn.BatchNorm1d(FC_SIZES[0])
        self.drop = nn.Dropout(dropout)
        self.fc2 = nn.Linear(FC_SIZES[0], FC_SIZES[1])
        self.bn2 = nn.BatchNorm1d(FC_SIZES[1])
        self.out = nn.Linear(FC_SIZES[1], n_classes)

    def crop(self, x):
        o, w = self.offset, self.window
        return x[:, :, o : o + w, o : o + w]

    def features(self, x):
        """Activations of the last hidden layer, ``(N, 64)``."""
        h = self.conv(self.crop(x)).flatten(1)
        h = self.drop(torch.relu(self.bn1(self.fc1(h))))
        return torch.relu(self.bn2(self.fc2(h)))

    def forward(self, x):
        return self.out(self.features(x))


def _fold(weight, bias, bn):
    """Fold an eval-mode batch norm that follows a layer into its weight and bias."""
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    shape = (-1,) + (1,) * (weight.dim() - 1)
    return weight * scale.reshape(shape), (bias - bn.running_mean) * scale + bn.bias


class PlainCNN(nn.Module):
    """The exported form: batch norm folded, no dropout; ``forward`` returns features."""

    def __init__(self, trained: PaperCNN):
        super().__init__()
        trained = trained.eval()
        self.patch_size, self.window, self.offset = trained.patch_size, trained.window, trained.offset
        convs = [m for m in trained.conv if isinstance(m, nn.Conv2d)]
        bns = [m for m in trained.conv if isinstance(m, nn.BatchNorm2d)]
        self.convs = nn.ModuleList()
        with torch.no_grad():
            for conv, bn in zip(convs, bns):
                new = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size)
                w, b = _fold(conv.weight, conv.bias, bn)
                new.weight.copy_(w), new.bias.copy_(b)
                self.convs.append(new)
            self.fc1 = nn.Linear(trained.fc1.in_features, trained.fc1.out_features)
            self.fc2 = nn.Linear(trained.fc2.in_features, trained.fc2.out_features)
            for new, old, bn in ((self.fc1, trained.fc1, trained.bn1), (self.fc2, trained.fc2, trained.bn2)):
                w, b = _fold(old.weight, old.bias, bn)
                new.weight.copy_(w), new.bias.copy_(b)
            self.head = nn.Linear(trained.out.in_features, trained.out.out_features)
            self.head.load_state_dict(trained.out.state_dict())
        self.eval()

    def forward(self, x):
        o, w = self.offset, self.window
        h = x[:, :, o : o + w, o : o + w]
        for conv in self.convs:
            h = torch.max_pool2d(torch.relu(conv(h)), 2)
        h = torch.relu(self.fc1(h.flatten(1)))
        return torch.relu(self.fc2(h))

    def logits(self, x):
        return self.head(self.forward(x))


class DenseCNN(nn.Module):
    """Fully convolutional form of :class:`PlainCNN`: features of every window position.

    Input ``(1, 1, H, W)``; output ``(1, F, H', W')`` where ``output[..., i, j]`` equals the
    per-patch features of the window whose top-left pixel is ``(i * s, j * s)`` and
    ``H' = (H - window) // s + 1``. For output stride ``s = 2**t`` (1, 2, 4, 8, 16) the
    first ``t`` max-pools keep stride 2; the others run at stride 1 and every later layer
    is dilated ("a trous"), so each output is computed once, exactly.
    """

    def __init__(self, plain: PlainCNN, *, stride: int = 1):
        super().__init__()
        if stride not in (1, 2, 4, 8, 16):
            raise ValueError(f"dense stride must be 1, 2, 4, 8 or 16, got {stride}")
        self.stride = stride
        self.convs = plain.convs
        n_fast = stride.bit_length() - 1  # pools that keep stride 2
        self.conv_dil, self.pool_cfg, d = [], [], 1
        for i in range(len(self.convs)):
            self.conv_dil.append(d)
            if i < n_fast:
                self.pool_cfg.append((2, d))  # stride 2 (in dilated units: stride 2, dilation d)
            else:
                self.pool_cfg.append((1, d))
                d *= 2
        self.fc_dil = d
        m = final_map_size(plain.patch_size)
        c = plain.convs[-1].out_channels
        self.fc1_w = nn.Parameter(plain.fc1.weight.detach().reshape(-1, c, m, m).clone(), requires_grad=False)
        self.fc1_b = nn.Parameter(plain.fc1.bias.detach().clone(), requires_grad=False)
        self.fc2_w = nn.Parameter(plain.fc2.weight.detach()[:, :, None, None].clone(), requires_grad=False)
        self.fc2_b = nn.Parameter(plain.fc2.bias.detach().clone(), requires_grad=False)
        self.eval()

    def forward(self, x):
        import torch.nn.functional as F

        for conv, d, (s, pd) in zip(self.convs, self.conv_dil, self.pool_cfg):
            x = torch.relu(F.conv2d(x, conv.weight, conv.bias, dilation=d))
            x = F.max_pool2d(x, 2, stride=s, dilation=pd)
        x = torch.relu(F.conv2d(x, self.fc1_w, self.fc1_b, dilation=self.fc_dil))
        return torch.relu(F.conv2d(x, self.fc2_w, self.fc2_b))
