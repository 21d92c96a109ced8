"""Cheap forced garbage collections inside a large process.

nilearn's image accessor (``nilearn._utils.niimg.safe_get_data``, called by its plotting
functions and maskers, hence by NiMARE's image-based estimators) forces a full collection on
every call. A full collection walks every live object: in a pipeline or test process about
0.14 s each, 24 calls per Figure 2 (3.4 s of the 13 s stage ``meta`` of a quick run) and 27
per NiMARE image-based fit of six studies (4.3 s of 5.8 s), 3 per NiMARE ``Dataset`` made by
:meth:`analysis.sdm.inputs.dataset.SDMDataset.to_nimare` (0.85 s in a test process).
:func:`frozen_heap` moves the objects alive on entry to the collector's permanent generation
(:func:`gc.freeze`) and releases them on exit, so those collections walk only what the block
creates. Reference counting still
frees everything as usual; only cyclic garbage among the frozen objects waits for the exit.
"""

from __future__ import annotations

import gc
from contextlib import ContextDecorator


class frozen_heap(ContextDecorator):  # noqa: N801 - used as a function and a decorator
    """Context manager and decorator: the heap alive on entry is frozen until the exit.

    Nested use is safe: an inner block inside a frozen heap leaves it to the outer one.
    """

    def __enter__(self):
        self._froze = gc.get_freeze_count() == 0
        if self._froze:
            gc.freeze()
        return self

    def __exit__(self, *exc):
        if self._froze:
            gc.unfreeze()
        return False
