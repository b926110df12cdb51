"""The supplementary's analyses and ablations, as functions that draw figures and write tables.

- :mod:`~coavs.analysis.area`: mIoU against the sounding objects' area, and the "rescale objects to 30–40 % of
  the frame" intervention (A.1; the rescaling itself is :mod:`~coavs.analysis.rescale`);
- :mod:`~coavs.analysis.semantics`: mIoU against sounding semantics and instances per frame (A.2);
- :mod:`~coavs.analysis.queries`: the masks of the active queries, grouped by marker, with and without sound (C.1);
- :mod:`~coavs.analysis.ablate`: train and evaluate the debias schemes, biased-branch audio, strategies and
  dilations, one Markdown table (D.1–D.3, B.1);
- :mod:`~coavs.analysis.stats`: the per-frame statistics and per-group metrics the first two share.

The analyses take prediction batches (:func:`coavs.eval.runner.predict_batches`), so the numbers they report are
the community metrics (:mod:`coavs.eval.metrics`) restricted to a group of frames. Figures use matplotlib's Agg
backend (no display). The command line is ``coavs analyze area|semantics|queries`` and ``coavs ablate``.
"""
