"""``python -m videocaption``: the same command line as ``llm-caption``."""

from videocaption.cli import run

if __name__ == "__main__":
    run()
