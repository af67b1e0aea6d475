"""The demo graph: decode, 1 frame a second -> llm_caption -> result.json.

python examples/demo_graph.py VIDEO [MODEL [MAX_NEW_TOKENS]]
"""

import sys
from pathlib import Path

import bmf

REPO = Path(__file__).resolve().parent.parent  # the folder that holds llm_caption.py
ONE_PER_SECOND = "isnan(prev_selected_t)+gt(floor(t),floor(prev_selected_t))"


def main(video: str, model: str = "deepseek-ai/deepseek-vl2-tiny", max_new_tokens: str = "256") -> None:
    graph = bmf.graph()
    # One frame a second, sampled by FFmpeg inside BMF; frames keep their own timestamps.
    frames = graph.decode({"input_path": video})["video"].ff_filter("select", ONE_PER_SECOND)
    bmf.module(
        [frames],
        "llm_caption",
        {"model": model, "max_new_tokens": int(max_new_tokens), "batch_size": 4, "result_path": "result.json"},
        module_path=str(REPO),
        entry="llm_caption.llm_caption",
    ).run()


if __name__ == "__main__":
    main(*sys.argv[1:])
