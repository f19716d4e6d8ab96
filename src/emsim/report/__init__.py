"""Report: the per-model table (:mod:`.table`) and the figures drawn from it (:mod:`.figures`)."""
