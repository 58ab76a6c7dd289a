"""Maps: what is done to a class map once a head has given its probabilities, in 2D and in volumes alike.

Lives here: the normalized Gaussian pooling over tissue cells, streamed by row blocks (:mod:`.pooling`,
which the context heads pool with too), the map regularization built on it (:mod:`.smooth`: in the
plane, streamed, and across slices), the finishing of a slice's map (:mod:`.slicemap`: the head's
probability rows in, regularized, labelled, handed to a writer band by band: the one path of 2D slices
and of a volume's slices) and a map's uncertainty (:mod:`.uncertainty`: margin and entropy).

May import: the option declarations (:mod:`brainrt.model.params`) and NumPy / numba; nothing that reads
inputs, loads bundles, runs the engine or writes outputs (a writer is handed in).
"""
