"""Search and ask across captioned videos: the segments table, BM25 search, cited answers.

It reads outputs (result.json files, the library's manifest) and, for ``--ask``, uses a backend;
it sits beside ``live`` and ``library`` in the layering.
"""
