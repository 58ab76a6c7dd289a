"""brainrt as a napari plugin (npe2): area-map, cluster and sub-division widgets, sample data, a feature reader.

Install with the ``[napari]`` extra (``pip install 'brainrt[napari]'``); napari finds the
plugin through the ``napari.manifest`` entry point (``napari.yaml`` beside this file).
Nothing here is imported by ``import brainrt``: the runtime works without Qt or napari.

Lives here: the plugin's jobs (:mod:`._work`, Qt-free generators), its widgets (:mod:`._widgets`, on
:mod:`._job_widget`, which runs them in napari thread workers), the strokes-to-bundle widget (:mod:`._train`), the sample data and
the reader of feature grids.

May import: the library's public calls (:mod:`brainrt.api`, plans, bundles, heads, fit, derive) and
napari / Qt (inside functions); no module of the runtime imports this package (its face, like the
command line).
"""
