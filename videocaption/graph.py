"""The demo BMF graph: decode (sampling at ``fps``) -> ``llm_caption`` module.

The module is loaded by path and entry like any BMF Python module, so this works from any
working directory.
"""

from __future__ import annotations

import dataclasses
import gc
import json
import os
import threading
from pathlib import Path
from typing import Any

from .errors import VideoInputError
from .options import CaptionOptions
from .probe import explain_decoder_error

REPO_ROOT = Path(__file__).resolve().parent.parent
MODULE_NAME = "llm_caption"
MODULE_ENTRY = "llm_caption.llm_caption"


def module_options(options: CaptionOptions) -> dict[str, Any]:
    """The option dict the BMF module is given (every field, so nothing depends on defaults)."""
    return dataclasses.asdict(options)


def decoder_options(video_path: str | os.PathLike, options: CaptionOptions) -> dict[str, Any]:
    """BMF decoder options that extract frames at ``fps`` inside the decoder."""
    return {"input_path": str(video_path), "video_params": {"extract_frames": {"fps": options.fps}}}


def build_caption_graph(video_path: str | os.PathLike, options: CaptionOptions):
    """Build (but do not run) the graph; returns the graph and the module's caption stream."""
    import bmf

    graph = bmf.graph()
    video = graph.decode(decoder_options(video_path, options))["video"]
    node = bmf.module([video], MODULE_NAME, module_options(options),
                      module_path=str(REPO_ROOT), entry=MODULE_ENTRY)
    return graph, node


def wait_for_graph(graph) -> None:
    """Wait for a started graph to finish, staying interruptible.

    BMF's ``close`` blocks in C++ until every node is done, where Python cannot deliver
    Ctrl-C; waiting for it on a helper thread keeps the main thread in Python, so a
    KeyboardInterrupt reaches the caller at once. A module's exception is re-raised here.
    """
    failure: list[BaseException] = []

    def close() -> None:
        try:
            graph.close()
        except BaseException as error:  # handed to the main thread
            failure.append(error)

    closer = threading.Thread(target=close, name="bmf-graph-close", daemon=True)
    closer.start()
    while closer.is_alive():
        closer.join(timeout=0.2)
    if failure:
        raise failure[0]


def run_caption_graph(video_path: str | os.PathLike, options: CaptionOptions) -> dict[str, Any]:
    """Caption one video through BMF; returns the result document the module wrote.

    Raises:
        VideoInputError: the decoder could not open the input.
        CaptionError: a bad option, a missing model, or a video without frames.
    """
    graph, node = build_caption_graph(video_path, options)
    try:
        graph.run(node, is_blocked=False)
        wait_for_graph(graph)
    except RuntimeError as error:
        explained = explain_decoder_error(video_path, error)
        if explained is None:
            raise
        raise explained from error
    finally:
        # The engine logs while it shuts down; let that happen now, not at interpreter exit.
        del graph, node
        gc.collect()
    try:
        return json.loads(Path(options.result_path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise VideoInputError(f"{video_path}: the graph ended without a result") from None
