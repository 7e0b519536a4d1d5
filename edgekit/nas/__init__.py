"""Hardware-aware architecture search over the spaces of ``edgekit.lut``.

>>> from edgekit.nas import DnasConfig
>>> DnasConfig().temperature(0)
5.0
"""
from .dnas import (DnasConfig, SearchResult, SuperNet, fastest_choices, most_likely_within, save_spec, search,
                   search_arrays, slowest_point_ms)

__all__ = ["DnasConfig", "SearchResult", "SuperNet", "fastest_choices", "most_likely_within", "save_spec", "search",
           "search_arrays", "slowest_point_ms"]
