"""BMF glue: the ``llm_caption`` module, the caption graph, running it, and BMF frames as Python values."""
