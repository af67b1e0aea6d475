"""BMF module ``llm_caption``: describe a video with a vision-language model.

Load it in a BMF graph like any Python module, from anywhere::

    bmf.module([video], "llm_caption", {"batch_size": 4}, module_path="/path/to/repo",
               entry="llm_caption.llm_caption")

Options, streams and packet payloads are documented in README.md, docs/options.md and
docs/result-schema.md; the logic lives in the ``videocaption`` package next to this file.
"""

import os
import sys

# BMF imports this file by path; make the package beside it importable wherever the graph runs.
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from videocaption.graph.module import CaptionModule  # noqa: E402


class llm_caption(CaptionModule):  # noqa: N801 - BMF finds the module by this entry name
    """The BMF entry point; see :class:`videocaption.graph.module.CaptionModule`."""
