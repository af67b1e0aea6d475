"""Library mode: caption many videos on Ray, one manifest row per input, nothing lost.

``inputs`` expands files, folders and ``@LIST`` files; ``manifest`` journals rows and writes the
Parquet manifest; ``workers`` is the Ray actor that captions video after video; ``ray_runner``
plans a run and drives the actors; ``command`` is the command line's part. Only ``ray_runner``
imports Ray, and only when a run starts.
"""
