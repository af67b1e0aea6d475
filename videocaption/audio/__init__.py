"""What is said in a video: speech found (Silero VAD), transcribed, and handed to the prompts.

The layout WhisperX uses: a voice-activity detector marks where speech is
(:mod:`~videocaption.audio.vad`), only those segments go to a recogniser
(:mod:`~videocaption.audio.recognizers`: Whisper in process, or an OpenAI-compatible
``/v1/audio/transcriptions`` endpoint), and :mod:`~videocaption.audio.transcript` keeps the
timed text that the pipeline merges into each batch's prompt. Audio arrives in windows as BMF
decodes it (16 kHz mono, resampled in the graph); nothing holds the whole track.
"""

from videocaption.audio.samples import SAMPLE_RATE, audio_frame_samples
from videocaption.audio.transcript import Transcriber, TranscriptSegment

__all__ = ["SAMPLE_RATE", "Transcriber", "TranscriptSegment", "audio_frame_samples"]
