"""The report writer: ``REPORT.md`` is the command, the setup, one section per experiment
(each experiment module's ``report``) and the timings."""

from __future__ import annotations

import time

from . import features as sf
from .common import KIND_LABELS, fmt


def write_report(st, total_seconds, sections):
    """REPORT.md: the command at the top, then each of ``sections`` (``fn(st, w)``), then the timings."""
    L = []
    w = L.append
    _header(st, w, total_seconds)
    _setup(st, w)
    for section in sections:
        section(st, w)
    _timings(st, w, total_seconds)
    (st.out / "REPORT.md").write_text("\n".join(L) + "\n")


def _header(st, w, total_seconds):
    """Title, the command, when and where it ran, the paper."""
    w("# Balwani & Dyer (2019) reproduced with brainrt")
    w("")
    w("Command (rerun it to regenerate this folder):")
    w("")
    w("```")
    w(st.command)
    w("```")
    w("")
    s = st.results.get("setup", {})
    w(f"Generated {time.strftime('%Y-%m-%d %H:%M')} in {total_seconds / 60:.1f} min on {s.get('threads')} CPU threads"
      + (" — **quick mode: few patches, coarse grids; numbers are not meaningful**" if st.args.quick else "") + ".")
    w("Paper: A. H. Balwani, E. L. Dyer, \"Modeling variability in brain architecture with deep feature learning\", "
      "Asilomar 2019. Data: Prasad et al. 2020 (CC BY 4.0), slice z=309. Where the paper gives no number its "
      "qualitative claim is quoted.")
    w("")
    if st.errors:
        w("**Experiments that failed:** " + ", ".join(f"{k} ({v})" for k, v in st.errors.items()))
        w("")


def _setup(st, w):
    """The bundle, the data, the split and the feature types."""
    R = st.results
    w("## Setup")
    w("")
    s = R.get("setup", {})
    if s:
        _bundle_lines(s, w)
    fe = R.get("features", {})
    if fe:
        w("- Feature types: " + "; ".join(f"{KIND_LABELS[k]} ({v['dim']} dims, {v['patches_per_s']:.0f} patches/s)"
                                          for k, v in fe.items()) + ".")
    w("- Hand-crafted features: " + ", ".join(sf.HANDCRAFTED_GROUPS) + " — intensity mean/std/percentiles 5-95/"
      "skewness/kurtosis; uniform LBP histograms (P=8, R=1 and 2); RMS responses of 12 Gabor filters (3 frequencies x "
      "4 orientations, from the power spectrum); GLCM contrast, dissimilarity, homogeneity, energy, correlation "
      "(16 levels, distances 1 and 4, mean over 4 angles).")
    w("- Random-weight CNN: `PlainCNN(PaperCNN(...))` with torch seed "
      f"{st.args.baseline_seed} (default init; batch norm folded with its default running stats, i.e. ~identity).")
    for n in st.notes:
        w(f"- {n}")
    w("")


def _bundle_lines(s, w):
    """Setup lines about the bundle (its context branch), the data and the re-created split."""
    w(f"- Bundle `{s['bundle']}` (model id `{s['model_id']}`), classes {', '.join(s['classes'])}, "
      f"patch {s['patch_size']} px, seed {s['seed']}, split gap {s['gap']} px, fractions {s['fractions']}.")
    ctx = s.get("context")
    if ctx:
        w(f"- The bundle has a **context branch** (footprint {ctx['footprint']} px): its network reads the "
          f"{ctx['footprint']} px field around each {s['patch_size']} px patch (same centre; the field averaged "
          f"{ctx['factor']} x {ctx['factor']} inside the graph). The trained-CNN features are computed on each "
          f"patch's {ctx['footprint']} px footprint, cut by the runtime's own gather (the pixels "
          "`brainrt.featurize` reads; mirrored past the image edge) and normalized as the manifest says; the baselines "
          f"(random-weight CNN, hand-crafted, ResNet-18) see only the {s['patch_size']} px patch, so the trained "
          "features draw on more pixels than theirs.")
    else:
        w(f"- Single-scale bundle: every feature type reads the same {s['patch_size']} px patch.")
    w(f"- Data: `{s['image']}` / `{s['mask']}`; sha256 equal to the bundle's training data: image "
      f"{'yes' if s['image_sha256_matches_bundle'] else 'NO'}, mask {'yes' if s['mask_sha256_matches_bundle'] else 'NO'}.")
    w(f"- Split re-created with `brainrt_train.data.sample_patches` from the manifest; per-class counts equal "
      f"to the manifest's: **{'yes' if s['split_matches_manifest'] else 'NO'}**. Patches used here: "
      f"train {s['used_per_split']['train']}, test {s['used_per_split']['test']} "
      f"(test per class: {', '.join(f'{k} {v}' for k, v in s['used_per_class']['test'].items())}).")
    t = s.get("training", {})
    if t.get("best_val_accuracy") is not None:
        w(f"- The bundle's training: {t['epochs_run']} of {t['epochs']} epochs, lr {t['lr']} ({t['schedule']}); "
          f"last-epoch training accuracy {fmt(t['final_train_accuracy'])} (augmented patches), best validation "
          f"accuracy {fmt(t['best_val_accuracy'])} (the checkpoint kept).")


def _timings(st, w, total_seconds):
    """Wall time per stage."""
    w("## Timings")
    w("")
    w("| stage | seconds |")
    w("| --- | --- |")
    for k, v in st.timings.items():
        w(f"| {k} | {v:.1f} |")
    w(f"| total | {total_seconds:.1f} |")
    w("")
    w("All numbers are also in `results.json`.")
