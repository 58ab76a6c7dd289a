"""Model: what a bundle is, below anything that loads one: its typed manifest, the option declarations,
sealing and verifying a bundle's files, onnxruntime sessions and the predictors over the bundle's graphs.

Lives here: the manifest (:mod:`.manifest`, the one dataclass of ``manifest.json``, read, migrated and
written there; its parts typed beside it on :mod:`.records`: the graphs :mod:`.graphs_record`, the context
heads :mod:`.context_record`, the training :mod:`.training_record`), every option declared once with its
constraint and default (:mod:`.params`, shared by the 2D and the volume edges and the command line),
sealing and verifying a bundle (:mod:`.seal`: :func:`~.seal.seal_bundle`, :func:`~.seal.verify_bundle`),
onnxruntime sessions and execution providers (:mod:`.sessions`) and a run's predictor over the graphs
(:mod:`.predictor`).

May import: the base modules (:mod:`brainrt.errors`, :mod:`brainrt.geometry`) and onnxruntime (inside
the functions that open sessions); never sources, heads, bundles, the engine, outputs, jobs or the faces
(loading a bundle is :mod:`brainrt.bundle`'s, on top of the heads).
"""
