"""The command line (``llm-caption``, ``python test_llm_caption.py``)."""
