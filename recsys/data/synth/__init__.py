"""Synthetic retail purchase data, at any scale, shaped like a member programme's export.

:func:`~recsys.data.synth.source.synthesize` writes *source-style* files — a retailer's export whose columns happen to carry
the canonical names — plus a column-mapping config (``mapping.toml``) that ``recsys data ingest``
reads, so synthetic data goes through exactly the same validation path as a real retailer's.
:func:`~recsys.data.synth.retailer.synthesize_retailer` writes the same purchases as a retailer's raw export in a layout of
its own (gzip ``;`` CSV with Chinese headers, a product master, members, channel identities, and
optional export noise), mapped by the packaged ``sources/synth_retailer.toml``: a second schema
that reaches the same commands through its column mapping alone.

What makes the data useful for recommenders, rather than uniform noise:

* long-tailed (Zipf) product popularity; products grouped in categories of uneven size, each with
  its own price level (log-normal prices around it, shifted per brand);
* long-tailed member activity (most members buy rarely, a few buy a lot) and a lifecycle: join
  dates before and during the period, some members churn (last activity well before the end),
  some enrolled members never buy;
* repeat buying: every member has a small personal set of *staples* they rebuy; the other lines are
  drawn by popularity, mostly inside the member's favourite categories;
* a price tier per member (budget / mid / premium) that tilts each choice towards the cheaper or
  dearer of two candidates and makes promotions more or less frequent, so price-sensitivity tags
  have something to find;
* shopping trips: lines come in baskets that share a timestamp, a channel and a store; a member's
  trips are in time order;
* cold start: some products launch during the period (never sold before their launch) and some are
  never sold at all.

Everything is vectorised with numpy and written in chunks of members with
:class:`pyarrow.parquet.ParquetWriter`; text ids are built by :mod:`pyarrow.compute` from integer
arrays, never as Python strings per line. 50 M lines take a few minutes on two cores and well
under 2 GB of memory. The same spec (including its seed) always gives byte-identical files.

The package: :mod:`~recsys.data.synth.generator` (the purchase model), :mod:`~recsys.data.synth.source`
and :mod:`~recsys.data.synth.retailer` (the two exports), :mod:`~recsys.data.synth.writing`
(what they write with).
"""

from recsys.data.synth.generator import SynthSpec
from recsys.data.synth.retailer import synthesize_retailer
from recsys.data.synth.source import synthesize

__all__ = ["SynthSpec", "synthesize", "synthesize_retailer"]
