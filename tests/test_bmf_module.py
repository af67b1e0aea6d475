"""The BMF module driven directly through BMF tasks, without a graph.

One model instance per process, whatever ``max_threads``: batches share it, one call at a time.
"""

import json
import threading

import numpy as np
import pytest
from bmf import Packet, Task, Timestamp, VideoFrame
from helpers import FAST, video_frame_packet

import llm_caption
from videocaption import backends
from videocaption.deepseek_vl2 import DeepseekVL2
from videocaption.errors import InvalidOptionError
from videocaption.graph.module import CAPTIONS_OUT, VIDEO_OUT
from videocaption.options import CaptionOptions


def drain(queue) -> list:
    packets = []
    while not queue.empty():
        packets.append(queue.get())
    return packets


def frames(count: int, fps: float = 1.0):
    rng = np.random.default_rng(0)
    return [video_frame_packet(rng.integers(0, 255, (90, 160, 3), dtype=np.uint8), i / fps) for i in range(count)]


def run_module(options: dict, packets: list, outputs=(VIDEO_OUT, CAPTIONS_OUT)):
    return feed(llm_caption.llm_caption(0, options), packets, outputs)


def feed(module, packets: list, outputs=(VIDEO_OUT, CAPTIONS_OUT)):
    """Give ``module`` the packets and EOF in one task; the task and what each output got."""
    task = Task(0, [0], list(outputs))
    for packet in packets:
        task.get_inputs()[0].put(packet)
    task.get_inputs()[0].put(Packet.generate_eof_packet())
    module.process(task)
    return task, {i: drain(task.get_outputs()[i]) for i in outputs}


def test_pass_through_forwards_every_packet_in_order(tmp_path):
    packets = frames(10, fps=5.0)  # 2 s of video at 5 fps: 2 frames sampled at fps 1
    task, out = run_module({**FAST, "pass_through": True, "result_path": str(tmp_path / "r.json")}, packets)
    video = out[VIDEO_OUT]
    assert [p.timestamp for p in video] == [p.timestamp for p in packets] + [Timestamp.EOF]
    assert all(p.is_(VideoFrame) for p in video[:-1])
    assert task.timestamp == Timestamp.DONE
    result = json.loads((tmp_path / "r.json").read_text())
    assert result["frames_analysed"] == 2


def test_without_pass_through_the_video_output_only_ends(tmp_path):
    _, out = run_module({**FAST, "result_path": str(tmp_path / "r.json")}, frames(3))
    assert [p.timestamp for p in out[VIDEO_OUT]] == [Timestamp.EOF]


def test_caption_packets_per_batch_then_summary(tmp_path):
    _, out = run_module({**FAST, "batch_size": 3, "result_path": str(tmp_path / "r.json")}, frames(7))
    captions = out[CAPTIONS_OUT]
    assert captions[-1].timestamp == Timestamp.EOF
    payloads = [p.get(dict) for p in captions[:-1]]
    assert [p["type"] for p in payloads] == ["batch", "batch", "batch", "summary"]
    assert [p["batch_id"] for p in payloads[:3]] == [1, 2, 3]
    assert [p["frames"] for p in payloads[:3]] == [3, 3, 1]
    assert [c.timestamp for c in captions[:3]] == [0, 3_000_000, 6_000_000]
    summary = payloads[-1]
    result = json.loads((tmp_path / "r.json").read_text())
    assert summary["video_title"] == result["video_title"] and summary["summary"] == result["summary"]


@pytest.mark.parametrize("options", [{"batch_size": 0}, {"max_threads": -1}, {"nonsense": 1}])
def test_bad_options_fail_at_construction(options, tmp_path):
    with pytest.raises(InvalidOptionError):
        llm_caption.llm_caption(0, {**FAST, **options, "result_path": str(tmp_path / "r.json")})
    assert not (tmp_path / "r.json").exists()


def test_batch_too_large_for_the_context_names_the_largest_that_fits(tmp_path):
    with pytest.raises(InvalidOptionError, match="the largest batch that fits is 8"):
        llm_caption.llm_caption(
            0, {**FAST, "batch_size": 9, "max_new_tokens": 256, "result_path": str(tmp_path / "r.json")}
        )


@pytest.mark.slow
def test_two_frame_batches_fit_with_the_default_answer_length(tmp_path):
    # Two 1920x1080 frames would take 2 x 2101 tokens at the processor's largest tiling; the
    # runtime shrinks them to a tiling that leaves room for the prompt and the answer.
    rng = np.random.default_rng(0)
    packets = [video_frame_packet(rng.integers(0, 255, (1080, 1920, 3), dtype=np.uint8), float(i)) for i in range(3)]
    _, out = run_module(
        {**FAST, "batch_size": 2, "max_new_tokens": 256, "result_path": str(tmp_path / "r.json")}, packets
    )
    payloads = [p.get(dict) for p in out[CAPTIONS_OUT][:-1]]
    assert [(p["type"], p.get("frames")) for p in payloads] == [("batch", 2), ("batch", 1), ("summary", None)]
    assert all("error" not in p for p in payloads)


def test_one_model_instance_per_process(tmp_path):
    for batch_size in (1, 3):
        run_module({**FAST, "batch_size": batch_size, "result_path": str(tmp_path / "r.json")}, frames(3))
    models = [key for key in backends._cache if key[1] == FAST["model"]]
    assert len(models) == 1


def test_a_model_is_loaded_from_plain_values_and_shared_with_the_options_path():
    spec = backends.ModelSpec("deepseek_vl2", FAST["model"], device="cpu")
    assert backends.load_backend(spec) is backends.load_model(CaptionOptions(**FAST, api_base="http://x/v1"))
    # What the backend does not read is left out: a server's client has no device, a local model no endpoint.
    served = backends.ModelSpec.from_options(CaptionOptions(backend="openai", api_base="http://x/v1", device="cpu"))
    assert (served.device, served.api_base) == ("auto", "http://x/v1")
    assert "secret" not in repr(backends.ModelSpec("openai", "m", api_key="secret"))


def test_a_4k_frame_waits_in_its_batch_at_the_model_input_size(tmp_path, monkeypatch):
    # With batch_size >= 3 every frame becomes one 384 px tile; it is shrunk when it arrives,
    # not kept as a 3840x2160 image until its batch is described.
    from videocaption.captioning.captioner import Captioner

    stored = []
    original = Captioner.add

    def add(self, image, timestamp):
        original(self, image, timestamp)
        stored.append(self._batcher._current.frames[-1].image.size)

    monkeypatch.setattr(Captioner, "add", add)
    rng = np.random.default_rng(0)
    packets = [video_frame_packet(rng.integers(0, 255, (2160, 3840, 3), dtype=np.uint8), float(i)) for i in range(2)]
    run_module({**FAST, "batch_size": 4, "result_path": str(tmp_path / "r.json")}, packets)
    assert stored == [(384, 216), (384, 216)]


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
        options = {
            **FAST,
            "batch_size": 1,
            "multithreading": max_threads > 1,
            "max_threads": max_threads,
            "result_path": str(tmp_path / f"r{max_threads}.json"),
        }
        module = llm_caption.llm_caption(0, options)
        feed(module, frames(6))
        models.append(module._captioner.model)
    assert all(model is models[0] for model in models)
    assert len([key for key in backends._cache if key[1] == FAST["model"]]) == 1
    assert state["most"] == 1  # batches waiting together go into one call, never parallel calls
    assert sum(state["requests"]) == 3 * 6
    assert max(state["requests"]) <= 4


@pytest.mark.parametrize("max_threads", [2, 4])
def test_no_model_thread_outlives_its_run(tmp_path, max_threads):
    def workers() -> set[threading.Thread]:
        return {t for t in threading.enumerate() if t.name.startswith("videocaption-model-") and t.is_alive()}

    before = workers()
    options = {
        **FAST,
        "batch_size": 1,
        "multithreading": True,
        "max_threads": max_threads,
        "result_path": str(tmp_path / "r.json"),
    }
    module = llm_caption.llm_caption(0, options)
    # The filter does find the run's worker: one per run (not one per batch or per max_threads).
    assert len(workers() - before) == 1
    feed(module, frames(4))
    assert workers() == before  # gone once the run ends
