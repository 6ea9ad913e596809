"""``imgclassify embed``: one embedding (the model's pooled features) per image, to Parquet or ``.npy``.

:mod:`.embedder` loads any model the tool runs as a torch module as a feature extractor;
:mod:`.writers` streams the vectors to the output; :mod:`.run` is the whole command
(:func:`~imgclassify.embed.run.run_embed`). ``imgclassify fit`` embeds its examples with the same
:class:`~imgclassify.embed.embedder.Embedder`.
"""
