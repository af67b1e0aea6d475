"""videocaption: describe a video with a vision-language model, batch by batch."""
