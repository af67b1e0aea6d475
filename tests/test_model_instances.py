"""One model instance per process, whatever ``max_threads``: batches share it, one call at a time."""

import threading

import numpy as np
import pytest
from bmf import Packet, Task

from helpers import FAST, video_frame_packet
from videocaption import backends
from videocaption.bmf_module import CAPTIONS_OUT, VIDEO_OUT
from videocaption.deepseek_vl2 import DeepseekVL2

import llm_caption


def caption_frames(options: dict, count: int) -> "llm_caption.llm_caption":
    module = llm_caption.llm_caption(0, options)
    rng = np.random.default_rng(0)
    task = Task(0, [0], [VIDEO_OUT, CAPTIONS_OUT])
    for i in range(count):
        task.get_inputs()[0].put(video_frame_packet(rng.integers(0, 255, (90, 160, 3), dtype=np.uint8), float(i)))
    task.get_inputs()[0].put(Packet.generate_eof_packet())
    module.process(task)
    return module


def test_every_max_threads_shares_one_model_and_never_calls_it_concurrently(tmp_path, monkeypatch):
    original = DeepseekVL2.describe_batch
    lock = threading.Lock()
    state = {"running": 0, "most": 0, "requests": []}

    def counting(self, requests, **kwargs):
        with lock:
            state["running"] += 1
            state["most"] = max(state["most"], state["running"])
            state["requests"].append(len(requests))
        try:
            return original(self, requests, **kwargs)
        finally:
            with lock:
                state["running"] -= 1

    monkeypatch.setattr(DeepseekVL2, "describe_batch", counting)
    models = []
    for max_threads in (1, 2, 4):
        options = {**FAST, "batch_size": 1, "multithreading": max_threads > 1, "max_threads": max_threads,
                   "result_path": str(tmp_path / f"r{max_threads}.json")}
        models.append(caption_frames(options, 6)._captioner.model)
    assert all(model is models[0] for model in models)
    assert len([key for key in backends._cache if key[1] == FAST["model"]]) == 1
    assert state["most"] == 1  # batches waiting together go into one call, never parallel calls
    assert sum(state["requests"]) == 3 * 6
    assert max(state["requests"]) <= 4


@pytest.mark.parametrize("max_threads", [2, 4])
def test_no_model_thread_outlives_its_run(tmp_path, max_threads):
    def workers() -> set[threading.Thread]:
        return {t for t in threading.enumerate() if t.name == "videocaption-model" and t.is_alive()}

    before = workers()
    options = {**FAST, "batch_size": 1, "multithreading": True, "max_threads": max_threads,
               "result_path": str(tmp_path / "r.json")}
    caption_frames(options, 4)
    assert workers() == before  # one worker per run (not one per batch), gone once the run ends
