"""Reproduce the experiments of Balwani & Dyer, "Modeling variability in brain architecture
with deep feature learning" (Asilomar 2019), with a brainrt model bundle.

    python -m tools.study --model models/slice309-paper6 --image ../shared/data/slice309.tif \\
        --mask ../shared/data/slice309_areas.tif -o docs/study

(from the repository root) writes ``REPORT.md`` (the command at the top, every number next
to the paper's), ``results.json`` (all numbers) and small PNG figures into the output folder.

The train/val/test patches are the bundle's own: they are re-created from the seed, patch
size, counts, gap and class map recorded in the bundle manifest, with the trainer's own
sampling code (:mod:`.prepare`). Experiments, one module each with its report section:

1. heads (logreg, linear SVM, RBF SVM) on the trained features vs the CNN's own output
   (:mod:`.exp1_heads`);
2. the same heads refit on baseline features (random-weight CNN, hand-crafted textures,
   ImageNet ResNet-18 when ``--resnet18-weights`` is given; :mod:`.exp2_baselines`,
   extractors in :mod:`.features`);
3. unsupervised GMM clusters vs areas (V-measure; :mod:`.exp3_unsupervised`);
4. robustness of logistic regression to Gaussian noise on the test images (:mod:`.exp4_noise`);
5. structure: Gram matrices, block-diagonal error, class-mean similarities, 3D PCA
   (:mod:`.exp5_structure`);
6. sub-division of the cortex into clusters and their relation to cortical depth
   (:mod:`.exp6_subdivision`);
7. at scale: whole-slice area map against the annotation (:mod:`.exp7_scale`).

:mod:`.common` holds the shared state and helpers, :mod:`.report` the report writer,
:mod:`.cli` the command line. ``--quick`` runs everything on few patches and coarse grids
(for tests).
"""
