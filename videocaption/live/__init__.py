"""Live streams: a frame source that reconnects and drops the oldest frames, around the captioning core."""
