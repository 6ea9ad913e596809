"""``imgclassify fit``: your own categories, from a folder of examples, as a model folder ``--model`` runs.

:mod:`.examples` finds ``EXAMPLES_DIR/<category>/*`` and hashes them; :mod:`.cache` keeps their
embeddings by sha256; :mod:`.heads` fits the head; :mod:`.validation` cross-validates it and
measures the threshold default; :mod:`.folder` writes the folder that
:mod:`imgclassify.models.kinds.fitted` reads; :mod:`.run` is the whole command
(:func:`~imgclassify.fit.run.run_fit`).
"""
