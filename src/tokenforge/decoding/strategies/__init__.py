"""Search decoders for code that are not draft-then-verify: AdaDec (adadec.py) and PG-TD (pg_td.py).

They change the output (AdaDec reranks uncertain steps, PG-TD searches for the program a reward
prefers), so they are not lossless methods and are NOT in `tokenforge.decoding.registry`; call
`adadec(...)` or `pg_td(...)` directly. Both run on their own backend (role "search") over a
`PrefixLM` that reuses the KV cache of the longest common prefix (base.py).
"""

from tokenforge.decoding.strategies.adadec import AdaDecOptions, ThresholdFit, adadec, fit_threshold
from tokenforge.decoding.strategies.base import Completion, PrefixLM, SearchResult, StopRule
from tokenforge.decoding.strategies.pg_td import PGTDOptions, pg_td

__all__ = ["AdaDecOptions", "Completion", "PGTDOptions", "PrefixLM", "SearchResult", "StopRule",
           "ThresholdFit", "adadec", "fit_threshold", "pg_td"]
