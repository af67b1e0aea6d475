"""Read caption packets from the graph's output as they are produced.

Output 1 of llm_caption carries one packet per described batch (in video order), then a
summary packet; each payload is a dict.

    python examples/read_caption_packets.py VIDEO [MODEL [MAX_NEW_TOKENS]]
"""

import sys
from pathlib import Path

import bmf

REPO = Path(__file__).resolve().parent.parent
ONE_PER_SECOND = "isnan(prev_selected_t)+gt(floor(t),floor(prev_selected_t))"


def main(video: str, model: str = "deepseek-ai/deepseek-vl2-tiny", max_new_tokens: str = "256") -> None:
    graph = bmf.graph()
    # One frame a second, sampled by FFmpeg inside BMF; frames keep their own timestamps.
    frames = graph.decode({"input_path": video})["video"].ff_filter("select", ONE_PER_SECOND)
    captioned = bmf.module(
        [frames],
        "llm_caption",
        {"model": model, "max_new_tokens": int(max_new_tokens), "batch_size": 3},
        module_path=str(REPO),
        entry="llm_caption.llm_caption",
    )
    for packet in graph.start(captioned[1]):  # a generator over the caption stream
        caption = packet.get(dict)
        if caption["type"] == "batch":
            print(f"[{caption['start_time']:6.1f}s - {caption['end_time']:6.1f}s] {caption['description']}")
        else:
            print(f"Title: {caption['video_title']}\nSummary: {caption['summary']}")


if __name__ == "__main__":
    main(*sys.argv[1:])
