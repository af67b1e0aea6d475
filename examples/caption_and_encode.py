"""Caption while transcoding: decode -> scale -> llm_caption (pass-through) -> encode.

Every frame and the audio flow on unchanged to the encoder; the module samples 1 frame per
second for the model by timestamp and writes result.json at the end.

    python examples/caption_and_encode.py VIDEO OUTPUT.mp4 [MODEL [MAX_NEW_TOKENS]]
"""

import sys
from pathlib import Path

import bmf

REPO = Path(__file__).resolve().parent.parent


def main(video: str, output: str, model: str = "deepseek-ai/deepseek-vl2-tiny", max_new_tokens: str = "256") -> None:
    graph = bmf.graph()
    decoded = graph.decode({"input_path": video})
    small = decoded["video"].scale(640, 360)
    captioned = bmf.module(
        [small, decoded["audio"]],
        "llm_caption",
        {
            "model": model,
            "max_new_tokens": int(max_new_tokens),
            "pass_through": True,
            "fps": 1.0,
            "result_path": "result.json",
        },
        module_path=str(REPO),
        entry="llm_caption.llm_caption",
    )
    # Output 0 is the video, output 2 the audio (output 1 carries the captions).
    bmf.encode(captioned[0], captioned[2], {"output_path": output})
    graph.run()


if __name__ == "__main__":
    main(*sys.argv[1:])
