"""Bundle: a bundle loaded and checked, what is scored against it, and the bundles made from one.

Lives here: loading a bundle (:mod:`.load`: :class:`~.load.Bundle`, hash-verified before anything is
unpickled, its graphs' sessions, predictors and heads; the shipped ones, ``default_model`` and
``demo_model``; the device list's execution providers), truth masks and their scored pixels
(:mod:`.truth`), scoring a map against an annotation (:mod:`.scoring`), derived bundles (:mod:`.derive`:
a parent's graphs with heads fitted from strokes, their class tables) and painted strokes on a grid
(:mod:`.strokes`).

May import: the base modules, the sources (a truth mask, a stroke image), the model (:mod:`brainrt.model`:
the manifest, sealing, sessions, predictors, option declarations) and the heads (:mod:`brainrt.heads`: a
bundle loads its heads through them); never the engine, outputs, jobs or the faces.
"""
