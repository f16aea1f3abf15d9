"""Readers of real corpora in their release layouts, and miniature copies of those layouts.

Each reader turns a corpus folder into lhotse manifests (or metadata rows for
``local/prepare_manifests.py``) and says what it skipped and why; nothing is dropped
without a count. The miniatures (:mod:`.miniature`) write the same layouts from
synthetic speech, so the readers run in tests and in every recipe's ``--smoke`` mode:

* :mod:`.commonvoice`: ``cv-corpus-*/<lang>/{train,dev,test}.tsv`` + ``clips/*.mp3``;
* :mod:`.tedlium`: ``TEDLIUM_release-3/legacy/{train,dev,test}/{sph,stm}``;
* :mod:`.chime3`: CHiME-3's ``data/audio/16kHz/enhanced/et05_*`` + ``data/transcriptions``;
* :mod:`.noisy`: a cut set with Gaussian noise added once and stored (SUTA's noisy sets).
"""
