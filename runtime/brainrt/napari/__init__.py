"""brainrt as a napari plugin (npe2): area-map, cluster and sub-division widgets, sample data, a feature reader.

Install with the ``[napari]`` extra (``pip install 'brainrt[napari]'``); napari finds the
plugin through the ``napari.manifest`` entry point (``napari.yaml`` beside this file).
Nothing here is imported by ``import brainrt``: the runtime works without Qt or napari.
The work itself (:mod:`._work`) is Qt-free generators; the widgets (:mod:`._widgets`) run
them in napari thread workers.
"""
