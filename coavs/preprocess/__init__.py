"""Preprocessing that turns a dataset into the per-clip files training reads: VGGish embeddings
(``coavs features``, :mod:`coavs.preprocess.features`) and the paper's marker files from pretrained audio models
(``coavs markers``, :mod:`coavs.preprocess.markers`). Sits above ``data`` and ``models`` (it uses both)."""
