"""Engine: a slice's pixels to features on a stride grid, from the checked plan to the feature grid.

Lives here: the input edge (:mod:`.plan`: raw input and options to one frozen, checked :class:`~.plan.Plan`),
what it decides with (:mod:`.tissue`: the cells to featurize; :mod:`.intensity`: a slice standardized onto
the training tissue; :mod:`.resample`: a slice at another pixel size resampled for the network), the numba
kernels that cut patches and tiles (:mod:`.tiling`), the one loop over blocks of grid rows
(:mod:`.loop`: ``run(plan, predictor, sink, rows=..., on_block=...)``, ``blocks``, ``Meter``) and the
feature grids it fills, in memory or in a zarr folder (:mod:`.grid`).

May import: the base modules (errors, geometry, integrity, ngff), the sources (:mod:`brainrt.sources`: a
plan reads its image and masks there) and the model (:mod:`brainrt.model`: option declarations, a
predictor handed in); never the heads, bundles, outputs, jobs or the faces (a sink is handed in).
"""
