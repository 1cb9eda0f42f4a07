"""How a long-running process of Herald's has its garbage collected."""

from __future__ import annotations

import gc

# Young collections every 20,000 allocations rather than CPython's 700: a service allocates
# (and frees) a few hundred objects per message, and most of a young collection's work was
# finding nothing to collect.
YOUNG_COLLECTION_ALLOCATIONS = 20_000


def settle_heap() -> None:
    """Once a process has started: what is alive now (modules, descriptors, metadata) lives as
    long as the process, so full collections no longer look through it; and collect young
    objects less often."""
    gc.freeze()
    gc.set_threshold(YOUNG_COLLECTION_ALLOCATIONS, 20, 20)
