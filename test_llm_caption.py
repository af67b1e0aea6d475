"""Demo: caption a video with DeepSeek-VL2 through a BMF graph (the same command as ``llm-caption``).

    python test_llm_caption.py [VIDEO] [--model M] [--batch-size N] [--fps F] [--output PATH]
                               [--device D] [--multithreading --max-threads N] [--max-new-tokens N]

With no VIDEO it captions the bundled Big Buck Bunny clip. ``--help`` lists every option.
"""

from videocaption.cli import run

if __name__ == "__main__":
    run()
