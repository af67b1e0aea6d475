"""BMF module ``llm_caption``: describe a video with a vision-language model.

Load it in a BMF graph like any Python module (with the project installed: ``pip install .``)::

    bmf.module([video], "llm_caption", {"batch_size": 4}, module_path="/path/to/repo",
               entry="llm_caption.llm_caption")

Options, streams and packet payloads are documented in README.md, docs/options.md and
docs/result-schema.md; the logic lives in the ``videocaption`` package.
"""

from videocaption.graph.module import CaptionModule


class llm_caption(CaptionModule):
    """The BMF entry point (BMF finds the module by this name); see :class:`videocaption.graph.module.CaptionModule`."""
