"""Media input: what a file or stream holds (probed once per input) and what BMF's decoder is asked to decode."""
