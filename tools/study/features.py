"""Feature extractors compared in the study (:mod:`tools.study`).

Every ``*_extractor`` returns a function that maps a batch of unit-range squares
``(N, S, S)`` float32 in [0, 1] to ``(N, F)`` float32 features (the caller cuts and batches
them, :func:`.common.cut_inputs`). S is the patch size P for every extractor but the
trained one, which reads the bundle's footprint (``Manifest.footprint``: P, or the context
field of a context bundle, e.g. 512 px around a 128 px patch):

- ``trained``: the bundle's ONNX feature graph (the CNN's last hidden layer, 64 features);
- ``random``: the same architecture with random weights (a fixed seed, batch norm folded);
- ``handcrafted``: intensity statistics, LBP histograms, Gabor energies and GLCM props,
  vectorized over the batch in NumPy (no per-patch Python loop);
- ``resnet18``: an ImageNet ResNet-18 (torchvision's layout, implemented here because
  torchvision is not installed) loaded from a user-supplied state_dict, 512 pooled features.
"""

from __future__ import annotations

import numpy as np

# --------------------------------------------------------------------------- trained (ONNX)
def trained_extractor(bundle):
    """Features of the bundle's ONNX graph from unit-range footprints ``(N, S, S)``, S =
    ``bundle.manifest.footprint`` (the graph's input side: the patch, or its context field);
    normalization as in the manifest ((x - mean) / std on unit-range pixels, i.e.
    ``(pixel * scale - mean) / std``)."""
    norm = bundle.normalization
    name = bundle.manifest.onnx.input
    sess = bundle.session

    def run(xb):
        z = ((xb - norm.mean) / norm.std).astype(np.float32)[:, None]
        return sess.run(None, {name: z})[0]

    return run


# --------------------------------------------------------------------------- random CNN
def _onnx_session(path, threads):
    """An onnxruntime CPU session of the graph at ``path`` (``threads`` intra-op threads) and its input name."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = int(threads)
    sess = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
    return sess, sess.get_inputs()[0].name


def random_cnn_extractor(n_classes, patch_size, norm, seed=0, *, workdir=None, threads=None):
    """The paper's architecture with random (PyTorch default) weights, batch norm folded
    with its default running statistics (mean 0, variance 1: close to the identity).

    With ``workdir`` the network is exported to ONNX there (the trainer's own export, with
    its parity check) and run by onnxruntime, a few times faster than PyTorch on a CPU.
    """
    import torch

    from brainrt_train.model import PaperCNN, PlainCNN

    torch.manual_seed(seed)
    model = PaperCNN(n_classes, patch_size=patch_size).eval()
    net = PlainCNN(model).eval()
    mean, std = norm["mean"], norm["std"]
    if workdir is not None:
        try:
            from brainrt_train.export import export_features

            path = f"{workdir}/random_cnn.onnx"
            export_features(model, path, patch_size=patch_size, seed=seed)
            sess, name = _onnx_session(path, threads)
            return lambda xb: sess.run(None, {name: ((xb - mean) / std).astype(np.float32)[:, None]})[0]
        except Exception:  # no onnx package or parity failure: PyTorch below
            pass

    @torch.no_grad()
    def run(xb):
        z = torch.from_numpy(((xb - mean) / std).astype(np.float32)[:, None])
        return net(z).numpy()

    return run


# --------------------------------------------------------------------------- hand-crafted
HANDCRAFTED_GROUPS = ("intensity", "lbp", "gabor", "glcm")
GABOR_FREQS = (0.05, 0.1, 0.2)  # cycles per pixel
GABOR_THETAS = (0.0, np.pi / 4, np.pi / 2, 3 * np.pi / 4)
LBP_RADII = (1, 2)
LBP_POINTS = 8
GLCM_LEVELS = 16
GLCM_DISTANCES = (1, 4)
GLCM_ANGLES = (0.0, np.pi / 4, np.pi / 2, 3 * np.pi / 4)
GLCM_PROPS = ("contrast", "dissimilarity", "homogeneity", "energy", "correlation")


def handcrafted_names():
    names = ["mean", "std", "p5", "p25", "p50", "p75", "p95", "skew", "kurtosis"]
    names += [f"lbp_r{r}_{b}" for r in LBP_RADII for b in range(LBP_POINTS + 2)]
    names += [f"gabor_f{f}_t{int(np.degrees(t))}" for f in GABOR_FREQS for t in GABOR_THETAS]
    names += [f"glcm_d{d}_{p}" for d in GLCM_DISTANCES for p in GLCM_PROPS]
    return names


def intensity_stats(x):
    """Mean, std, percentiles 5/25/50/75/95, skewness and kurtosis of each patch."""
    f = x.reshape(len(x), -1).astype(np.float64)
    mean = f.mean(1)
    std = f.std(1)
    pct = np.percentile(f, (5, 25, 50, 75, 95), axis=1).T
    c = f - mean[:, None]
    s = np.maximum(std, 1e-6)
    skew = (c**3).mean(1) / s**3
    kurt = (c**4).mean(1) / s**4 - 3.0
    return np.column_stack([mean, std, pct, skew, kurt])


def _uniform_lut(P):
    """Rotation-invariant uniform LBP (scikit-image's ``method="uniform"``): number of
    set bits when the circular code has at most two 0/1 transitions, else ``P + 1``."""
    lut = np.empty(2**P, np.int64)
    for code in range(2**P):
        bits = [(code >> i) & 1 for i in range(P)]
        changes = sum(bits[i] != bits[(i + 1) % P] for i in range(P))
        lut[code] = sum(bits) if changes <= 2 else P + 1
    return lut


_LUT = {}


def lbp_codes(x, radius, P=LBP_POINTS):
    """Uniform LBP codes of the interior pixels of a batch ``(N, H, W)``, as
    ``skimage.feature.local_binary_pattern(img, P, radius, "uniform")`` computes them
    (bilinear interpolation at the circle points; equal up to float rounding at exact ties),
    vectorized over the batch."""
    if P not in _LUT:
        _LUT[P] = _uniform_lut(P)
    n, h, w = x.shape
    m = radius + 1  # margin that keeps every interpolated point inside
    x = np.asarray(x, np.float32)
    centre = x[:, m : h - m, m : w - m]
    code = np.zeros(centre.shape, np.uint8 if P <= 8 else np.int64)

    def sh(dr, dc):
        return x[:, m + dr : h - m + dr, m + dc : w - m + dc]

    for p in range(P):
        rp = round(-radius * np.sin(2 * np.pi * p / P), 5)
        cp = round(radius * np.cos(2 * np.pi * p / P), 5)
        r0, c0 = int(np.floor(rp)), int(np.floor(cp))
        fr, fc = rp - r0, cp - c0
        if fr or fc:  # bilinear, as skimage (its weights, in float32)
            v = sh(r0, c0) * np.float32((1 - fr) * (1 - fc))
            v += sh(r0, c0 + 1) * np.float32((1 - fr) * fc)
            v += sh(r0 + 1, c0) * np.float32(fr * (1 - fc))
            v += sh(r0 + 1, c0 + 1) * np.float32(fr * fc)
            bit = v >= centre
        else:
            bit = sh(r0, c0) >= centre
        code |= bit.astype(code.dtype) << code.dtype.type(p)
    return _LUT[P][code]


def lbp_hist(x):
    """Normalized histograms of uniform LBP codes at radii 1 and 2 (P + 2 bins each)."""
    x255 = np.round(np.clip(x, 0, 1) * 255).astype(np.float64)  # as for a uint8 image
    out = []
    for r in LBP_RADII:
        codes = lbp_codes(x255, r)
        n = len(codes)
        flat = codes.reshape(n, -1) + (np.arange(n) * (LBP_POINTS + 2))[:, None]
        h = np.bincount(flat.ravel(), minlength=n * (LBP_POINTS + 2)).reshape(n, -1)
        out.append(h / codes[0].size)
    return np.concatenate(out, axis=1)


_GABOR = {}


def _gabor_power(P):
    """Squared magnitude of the Gabor filters' frequency responses on a P x P FFT grid."""
    if P not in _GABOR:
        fy = np.fft.fftfreq(P)[:, None]
        fx = np.fft.rfftfreq(P)[None, :]
        bank = []
        for f in GABOR_FREQS:
            sigma_f = f / 2.0  # bandwidth about one octave
            for t in GABOR_THETAS:
                u, v = f * np.cos(t), f * np.sin(t)
                # a real filter: both +/- centre frequencies (rfft keeps fx >= 0)
                g = np.exp(-((fx - u) ** 2 + (fy - v) ** 2) / (2 * sigma_f**2))
                g = g + np.exp(-((fx + u) ** 2 + (fy + v) ** 2) / (2 * sigma_f**2))
                bank.append(g**2)
        w = np.full(P // 2 + 1, 2.0)  # rfft: count the mirrored half twice (Parseval)
        w[0] = 1.0
        if P % 2 == 0:
            w[-1] = 1.0
        _GABOR[P] = np.stack(bank) * w[None, None, :]
    return _GABOR[P]


def gabor_energy(x):
    """RMS response of 12 Gabor filters (3 frequencies x 4 orientations) of each mean-removed
    patch, from its power spectrum by Parseval's theorem (one FFT per patch)."""
    n, h, w = x.shape
    z = x - x.mean(axis=(1, 2), keepdims=True)
    power = np.abs(np.fft.rfft2(z)) ** 2  # (N, h, w//2 + 1)
    bank = _gabor_power(h) if h == w else None
    if bank is None:  # non-square patches never occur; keep it simple
        raise ValueError("square patches expected")
    e = np.einsum("nij,kij->nk", power, bank) / (h * w) ** 2
    return np.sqrt(e)


def glcm_props(x):
    """Gray-level co-occurrence props (16 levels, symmetric, normalized), averaged over four
    angles, at distances 1 and 4: contrast, dissimilarity, homogeneity, energy, correlation.
    Same definitions as ``skimage.feature.graycoprops``."""
    L = GLCM_LEVELS
    q = np.clip((np.clip(x, 0, 1) * L).astype(np.int64), 0, L - 1)
    n, h, w = q.shape
    i, j = np.meshgrid(np.arange(L), np.arange(L), indexing="ij")
    base = (np.arange(n) * L * L)[:, None]
    feats = []
    for d in GLCM_DISTANCES:
        acc = np.zeros((len(GLCM_PROPS), n))
        for a in GLCM_ANGLES:
            dr, dc = int(round(-d * np.sin(a))), int(round(d * np.cos(a)))
            r0, r1 = max(0, -dr), h - max(0, dr)
            c0, c1 = max(0, -dc), w - max(0, dc)
            src = q[:, r0:r1, c0:c1].reshape(n, -1)
            dst = q[:, r0 + dr : r1 + dr, c0 + dc : c1 + dc].reshape(n, -1)
            m = np.bincount((src * L + dst + base).ravel(), minlength=n * L * L).reshape(n, L, L).astype(np.float64)
            m = m + m.transpose(0, 2, 1)
            m /= m.sum(axis=(1, 2), keepdims=True)
            contrast = (m * (i - j) ** 2).sum((1, 2))
            dissim = (m * np.abs(i - j)).sum((1, 2))
            homog = (m / (1.0 + (i - j) ** 2)).sum((1, 2))
            energy = np.sqrt((m**2).sum((1, 2)))
            mi = (m * i).sum((1, 2))
            mj = (m * j).sum((1, 2))
            si = np.sqrt((m * (i - mi[:, None, None]) ** 2).sum((1, 2)))
            sj = np.sqrt((m * (j - mj[:, None, None]) ** 2).sum((1, 2)))
            cov = (m * (i - mi[:, None, None]) * (j - mj[:, None, None])).sum((1, 2))
            corr = np.where((si < 1e-15) | (sj < 1e-15), 1.0, cov / np.maximum(si * sj, 1e-15))
            acc += np.stack([contrast, dissim, homog, energy, corr])
        feats.append((acc / len(GLCM_ANGLES)).T)
    return np.concatenate(feats, axis=1)


def handcrafted(xb):
    """All hand-crafted texture features of a batch of unit-range patches ``(N, P, P)``."""
    xb = np.asarray(xb, np.float64)
    return np.concatenate([intensity_stats(xb), lbp_hist(xb), gabor_energy(xb), glcm_props(xb)], axis=1)


def handcrafted_extractor():
    return lambda xb: handcrafted(xb).astype(np.float32)


# --------------------------------------------------------------------------- ResNet-18
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def build_resnet18():
    """torchvision's ResNet-18 layout (same state_dict keys), without the classifier."""
    import torch
    from torch import nn

    class BasicBlock(nn.Module):
        def __init__(self, c_in, c_out, stride):
            super().__init__()
            self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(c_out)
            self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(c_out)
            self.downsample = None
            if stride != 1 or c_in != c_out:
                self.downsample = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))

        def forward(self, x):
            idt = x if self.downsample is None else self.downsample(x)
            h = torch.relu(self.bn1(self.conv1(x)))
            return torch.relu(self.bn2(self.conv2(h)) + idt)

    class ResNet18(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
            self.bn1 = nn.BatchNorm2d(64)
            self.maxpool = nn.MaxPool2d(3, 2, 1)
            chans, c_in = (64, 128, 256, 512), 64
            for k, c in enumerate(chans, 1):
                stride = 1 if k == 1 else 2
                setattr(self, f"layer{k}", nn.Sequential(BasicBlock(c_in, c, stride), BasicBlock(c, c, 1)))
                c_in = c

        def forward(self, x):
            x = self.maxpool(torch.relu(self.bn1(self.conv1(x))))
            for k in range(1, 5):
                x = getattr(self, f"layer{k}")(x)
            return x.mean(dim=(2, 3))  # global average pool: (N, 512)

    return ResNet18()


def load_resnet18(path):
    """A ResNet-18 with weights from a torchvision-format state_dict file (``fc.*`` ignored)."""
    import torch

    sd = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(sd, dict) and "state_dict" in sd and isinstance(sd["state_dict"], dict):
        sd = sd["state_dict"]
    sd = {k.removeprefix("module."): v for k, v in sd.items() if not k.removeprefix("module.").startswith("fc.")}
    net = build_resnet18()
    missing, unexpected = net.load_state_dict(sd, strict=False)
    missing = [k for k in missing if not k.endswith("num_batches_tracked")]
    if missing or unexpected:
        raise ValueError(f"{path}: not a torchvision ResNet-18 state_dict (missing {missing[:4]}, "
                         f"unexpected {list(unexpected)[:4]})")
    return net.eval()


def resnet18_extractor(path, *, patch_size=None, workdir=None, threads=None):
    """512-d pooled ResNet-18 features: gray replicated to 3 channels, ImageNet normalization,
    patches at their native size (no resizing). With ``workdir`` (and ``patch_size``) the
    network is exported to ONNX there and run by onnxruntime (faster on a CPU)."""
    import torch

    net = load_resnet18(path)
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)

    class Wrapped(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.net = net
            self.register_buffer("mean", mean)
            self.register_buffer("std", std)

        def forward(self, x):  # (N, 1, P, P) unit range
            return self.net((x.expand(-1, 3, -1, -1) - self.mean) / self.std)

    model = Wrapped().eval()
    if workdir is not None and patch_size:
        try:
            return _resnet18_onnx(model, f"{workdir}/resnet18.onnx", patch_size, threads)
        except Exception:  # fall back to PyTorch
            pass

    @torch.no_grad()
    def run(xb):
        return model(torch.from_numpy(np.asarray(xb, np.float32))[:, None]).numpy()

    return run


def _resnet18_onnx(model, onnx_path, patch_size, threads):
    """``model`` exported to ``onnx_path`` and run by onnxruntime, once it matches PyTorch (else ValueError)."""
    import torch

    dummy = torch.zeros(2, 1, patch_size, patch_size)
    torch.onnx.export(model, dummy, onnx_path, input_names=["x"], output_names=["f"],
                      dynamic_axes={"x": {0: "n"}, "f": {0: "n"}}, opset_version=17, dynamo=False)
    sess, _ = _onnx_session(onnx_path, threads)
    x = np.random.default_rng(0).random((2, 1, patch_size, patch_size), dtype=np.float32)
    with torch.no_grad():
        ref = model(torch.from_numpy(x)).numpy()
    if np.abs(sess.run(None, {"x": x})[0] - ref).max() > 1e-3 * max(1.0, np.abs(ref).max()):
        raise ValueError("the ONNX ResNet-18 differs from PyTorch")
    return lambda xb: sess.run(None, {"x": np.asarray(xb, np.float32)[:, None]})[0]
