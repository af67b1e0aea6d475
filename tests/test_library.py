"""Library mode on a real local Ray instance (2 CPUs): rows, mirrored outputs, dead workers and drivers.

One Ray instance serves the whole module, and one undisturbed run of the library is the
reference the disturbed runs are compared with (Ray start-up and model loading are the slow
parts on a 2-core machine). Drivers that are killed run as subprocesses of the command line,
connected to the same instance with ``--ray-address``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import ray
from helpers import FAST, REPO_ROOT, make_clip, untimed

from videocaption.cli.main import main
from videocaption.errors import VideoInputError
from videocaption.library.command import MANIFEST_NAME
from videocaption.library.inputs import expand_inputs, local_key
from videocaption.library.manifest import TIMING_COLUMNS, Manifest, read_manifest
from videocaption.library.ray_runner import LibraryConfig, run_library
from videocaption.media.probe import probe_media
from videocaption.options import CaptionOptions

OPTIONS = dict(FAST, batch_size=1)
LONG = "b/long.mp4"  # enough batches to kill its worker midway
VIDEOS = ["a/clip.mp4", "b/clip.mp4", "b/deep/clip.mov", "c/one.mkv", "c/two.webm", LONG]
BROKEN = ["a/random.mp4", "c/truncated.mp4"]
NOT_VIDEO = "b/notes.txt"
# Columns that change from run to run, or are unknown for a row rebuilt from its result.json.
VOLATILE = (*TIMING_COLUMNS, "host", "worker")
CLI_OPTIONS = ["--model", FAST["model"], "--device", "cpu", "--max-new-tokens", "8", "--batch-size", "1"]


@pytest.fixture(scope="module")
def cluster() -> Iterator[str]:
    """A local Ray instance sized like the CI machine; yields its address for subprocess drivers."""
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="WARNING")
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()


@pytest.fixture(scope="module")
def library(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("library")
    for index, name in enumerate(VIDEOS):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        make_clip(root / name, duration=12.0 if name == LONG else 1.5 + 0.5 * index)
    (root / BROKEN[0]).write_bytes(os.urandom(4000))
    (root / BROKEN[1]).write_bytes((root / VIDEOS[0]).read_bytes()[:3000])
    (root / NOT_VIDEO).write_text("not a video\n")
    return root


def config(library: Path, output: Path, **changes) -> LibraryConfig:
    values = dict(inputs=(str(library),), output_dir=output, manifest_path=output / MANIFEST_NAME, workers=2)
    return LibraryConfig(**{**values, **changes})


@pytest.fixture(scope="module")
def undisturbed(cluster: str, library: Path, tmp_path_factory: pytest.TempPathFactory):
    output = tmp_path_factory.mktemp("undisturbed")
    # With the report: each video's result.html beside its result, and index.html over them all.
    run = run_library(config(library, output), CaptionOptions(**OPTIONS, report_path="result.html"))
    return run, output


def folder(output: Path, video: Path) -> Path:
    """The output folder of a local video (its key: the absolute path, see library/inputs.py)."""
    return output / local_key(video)


def comparable_rows(rows: list[dict]) -> list[dict]:
    return [{key: value for key, value in row.items() if key not in VOLATILE} for row in rows]


def comparable_result(path: Path) -> dict:
    return untimed(json.loads(path.read_text()))


# -- the undisturbed run ----------------------------------------------------------------------


@pytest.mark.slow
def test_every_row_and_mirrored_outputs(undisturbed, library: Path) -> None:
    run, output = undisturbed
    rows = {row["key"]: row for row in read_manifest(output / MANIFEST_NAME)}
    assert sorted(rows) == sorted(local_key(library / name) for name in VIDEOS + BROKEN + [NOT_VIDEO])
    rows = {str(Path(row["path"]).relative_to(library)): row for row in rows.values()}
    for key in VIDEOS:
        row = rows[key]
        result = json.loads((folder(output, library / key) / "result.json").read_text())
        assert row["status"] == "ok" and row["error"] is None, row
        assert row["path"] == str(library / key)
        assert (row["title"], row["summary"], row["frames_analysed"]) == (
            result["video_title"],
            result["summary"],
            result["frames_analysed"],
        )
        assert row["batches"] == len(result["batches"]) == result["frames_analysed"]  # batch_size 1
        assert row["duration"] == pytest.approx(probe_media(library / key).duration)
        assert row["model"] == FAST["model"] and row["host"] and row["worker"]
        assert row["wall_seconds"] > 0 and row["model_seconds"] > 0
        assert (row["prompt_tokens"], row["output_tokens"]) == (
            result["usage"]["prompt_tokens"],
            result["usage"]["generated_tokens"],
        )
        assert row["prompt_tokens"] > 0
    for key in BROKEN:
        with pytest.raises(VideoInputError) as single_video_error:
            probe_media(library / key)
        assert rows[key]["status"] == "failed"
        assert rows[key]["error"] == str(single_video_error.value)  # the single-video CLI's line
    assert rows[NOT_VIDEO]["status"] == "skipped" and ".txt" in rows[NOT_VIDEO]["error"]
    # Equal file names in two folders: two result folders; nothing else was written.
    written = sorted(str(path.relative_to(output).parent) for path in output.rglob("result.json"))
    assert written == sorted(local_key(library / name) for name in VIDEOS)
    assert not list(output.rglob("*.partial"))
    assert {row.worker for row in run.captioned} == {rows[key]["worker"] for key in VIDEOS + BROKEN}
    assert len({row.worker for row in run.captioned}) == 2
    # The journal holds the same rows as the Parquet manifest.
    assert Manifest(output / MANIFEST_NAME).previous_rows().keys() == {row["path"] for row in rows.values()}


@pytest.mark.slow
def test_the_library_index_lists_every_video_with_its_report(undisturbed, library: Path) -> None:
    from html import escape
    from urllib.parse import quote

    run, output = undisturbed
    index = (output / "index.html").read_text(encoding="utf-8")
    rows = {row["path"]: row for row in read_manifest(output / MANIFEST_NAME)}
    for key in VIDEOS:
        video_folder = folder(output, library / key)
        assert (video_folder / "result.html").is_file()
        assert (video_folder / "result_files" / "poster.jpg").is_file()  # the index's picture of it
        assert f'href="{quote(local_key(library / key) + "/result.html")}"' in index
    for key in BROKEN:
        assert escape(rows[str(library / key)]["error"], quote=False) in index
    assert index.count("<tr") == len(rows) + 1  # a header, then one row per manifest row


@pytest.mark.slow
def test_a_rerun_captions_nothing_again_unless_failed_ones_are_retried(undisturbed, library: Path) -> None:
    _, output = undisturbed
    before = {key: (folder(output, library / key) / "result.json").stat().st_mtime_ns for key in VIDEOS}
    again = run_library(config(library, output), CaptionOptions(**OPTIONS))
    assert again.captioned == []
    retried = run_library(config(library, output, retry_failed=True), CaptionOptions(**OPTIONS))
    assert sorted(row.key for row in retried.captioned) == sorted(local_key(library / name) for name in BROKEN)
    assert all(row.status == "failed" for row in retried.captioned)
    assert before == {key: (folder(output, library / key) / "result.json").stat().st_mtime_ns for key in VIDEOS}


# -- a worker process killed while it captions ------------------------------------------------


def caption_workers() -> list[int]:
    """Pids of Ray workers running CaptionWorker.caption now (Ray names the process after the call)."""
    import psutil

    pids = []
    for process in psutil.process_iter(["pid", "cmdline"]):
        if any("CaptionWorker.caption" in part for part in process.info["cmdline"] or []):
            pids.append(process.info["pid"])
    return pids


def wait_for(condition, timeout: float = 120, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


@pytest.mark.slow
def test_a_killed_worker_is_replaced_and_its_video_ends_as_undisturbed(
    undisturbed, library: Path, tmp_path: Path
) -> None:
    _, reference = undisturbed
    long_video = library / LONG
    options = CaptionOptions(**OPTIONS)
    finished = {}
    runner = threading.Thread(
        target=lambda: finished.update(run=run_library(config(long_video, tmp_path, workers=1), options))
    )
    runner.start()
    partial = folder(tmp_path, long_video) / "result.json.partial"
    wait_for(partial.exists, what="the first batch's checkpoint")
    wait_for(lambda: len(caption_workers()) == 1, what="the worker's process")
    [pid] = caption_workers()
    os.kill(pid, signal.SIGKILL)
    described_before = len(json.loads(partial.read_text())["batches"])
    runner.join(timeout=180)
    [row] = finished["run"].captioned
    assert 1 <= described_before < row.batches, "the worker was killed after its video was done"
    assert row.status == "ok" and row.worker != f"{row.host}:{pid}"
    assert comparable_result(folder(tmp_path, long_video) / "result.json") == comparable_result(
        folder(reference, long_video) / "result.json"
    )


@pytest.mark.slow
def test_a_video_whose_worker_dies_beyond_its_retries_is_a_failed_row(
    cluster: str, library: Path, tmp_path: Path
) -> None:
    inputs = (str(library / LONG), str(library / VIDEOS[0]))
    finished = {}
    runner = threading.Thread(
        target=lambda: finished.update(
            run=run_library(
                config(library, tmp_path, inputs=inputs, workers=1, video_retries=0), CaptionOptions(**OPTIONS)
            )
        )
    )
    runner.start()
    wait_for((folder(tmp_path, library / LONG) / "result.json.partial").exists, what="the first batch's checkpoint")
    wait_for(lambda: len(caption_workers()) == 1, what="the worker's process")
    os.kill(caption_workers()[0], signal.SIGKILL)
    runner.join(timeout=180)
    long_row, next_row = finished["run"].rows
    assert long_row.status == "failed"
    assert long_row.error.startswith(
        f"{library / LONG}: its worker process died while captioning it, 1 attempt ("
        "killed, out of memory, or crashed; Ray: "
    ), long_row.error
    assert "\n" not in long_row.error
    assert next_row.status == "ok", next_row.error  # the restarted worker goes on with the next video


# -- the driver killed, then the same command again -------------------------------------------


def journal_rows(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.endswith("}")]


@pytest.mark.slow
def test_a_killed_driver_loses_no_finished_video(undisturbed, cluster: str, library: Path, tmp_path: Path) -> None:
    _, reference = undisturbed
    command = [
        sys.executable,
        str(REPO_ROOT / "test_llm_caption.py"),
        str(library),
        "--ray-address",
        cluster,
        "--workers",
        "2",
        "--output",
        str(tmp_path),
        *CLI_OPTIONS,
    ]
    journal = tmp_path / "manifest.jsonl"
    driver = subprocess.Popen(command, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for(lambda: sum(row["status"] == "ok" for row in journal_rows(journal)) >= 2, what="two finished videos")
    driver.kill()
    driver.wait(timeout=60)
    finished = {
        row["key"]: (tmp_path / row["key"] / "result.json").stat().st_mtime_ns
        for row in journal_rows(journal)
        if row["status"] == "ok"
    }
    assert not (tmp_path / MANIFEST_NAME).exists()  # the driver never got to write it

    done = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 3, done.stderr  # the broken files failed
    assert "9 inputs: 6 ok, 2 failed, 1 skipped" in done.stdout
    for key, mtime in finished.items():  # not captioned again
        assert (tmp_path / key / "result.json").stat().st_mtime_ns == mtime
    assert comparable_rows(read_manifest(tmp_path / MANIFEST_NAME)) == comparable_rows(
        read_manifest(reference / MANIFEST_NAME)
    )
    for key in VIDEOS:
        assert comparable_result(folder(tmp_path, library / key) / "result.json") == comparable_result(
            folder(reference, library / key) / "result.json"
        )


@pytest.mark.slow
def test_ctrl_c_keeps_the_finished_rows(cluster: str, library: Path, tmp_path: Path) -> None:
    command = [
        sys.executable,
        str(REPO_ROOT / "test_llm_caption.py"),
        str(library),
        "--ray-address",
        cluster,
        "--workers",
        "1",
        "--output",
        str(tmp_path),
        *CLI_OPTIONS,
    ]
    driver = subprocess.Popen(command, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for(
        lambda: any(row["status"] == "ok" for row in journal_rows(tmp_path / "manifest.jsonl")), what="a finished video"
    )
    driver.send_signal(signal.SIGINT)
    stdout, stderr = driver.communicate(timeout=120)
    assert driver.returncode == 130, stderr
    assert "interrupted:" in stderr and "Traceback" not in stderr
    kept = read_manifest(tmp_path / MANIFEST_NAME)
    assert any(row["status"] == "ok" for row in kept)
    assert {row["key"] for row in kept} == {row["key"] for row in journal_rows(tmp_path / "manifest.jsonl")}
    assert len(kept) < 9  # stopped before the end


# -- the openai backend: two CPU workers in front of one server -------------------------------


@pytest.mark.slow
def test_openai_backend_with_two_workers(cluster: str, library: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    import tiny_vlms
    from tiny_server import transformers_serve

    checkpoint = tiny_vlms.build_llava(tmp_path_factory.mktemp("served") / "llava")
    output = tmp_path_factory.mktemp("openai")
    videos = [str(library / key) for key in VIDEOS[:3]]
    with transformers_serve(output / "serve.log") as base_url:
        options = CaptionOptions(
            backend="openai",
            api_base=base_url,
            model=str(checkpoint),
            max_new_tokens=8,
            request_timeout=60,
            max_retries=1,
        )
        run = run_library(config(library, output, inputs=tuple(videos)), options)
    assert [row.status for row in run.rows] == ["ok"] * 3, [row.error for row in run.rows]
    assert len({row.worker for row in run.captioned}) == 2
    assert all(row.model == str(checkpoint) and row.frames_analysed for row in run.rows)
    assert all(row.prompt_tokens for row in run.rows)  # the server's usage reaches the manifest


@pytest.mark.slow
def test_workers_use_their_cpus_as_torch_threads(cluster: str, tmp_path: Path) -> None:
    from videocaption.library.workers import CaptionWorker

    worker = ray.remote(CaptionWorker).options(num_cpus=1, runtime_env={"env_vars": {"PYTHONPATH": str(REPO_ROOT)}})
    actor = worker.remote(dataclasses.asdict(CaptionOptions(**OPTIONS)), str(tmp_path), 1.0)
    try:
        state = ray.get(actor.ready.remote())
    finally:
        ray.kill(actor)
    assert state["load_error"] is None and state["torch_threads"] == 1


@pytest.mark.slow
def test_a_url_input_is_decoded_from_the_server(cluster: str, tmp_path: Path) -> None:
    import functools
    import http.server

    served = tmp_path / "served"
    served.mkdir()
    # faststart: the index first, since Python's server does not answer range requests
    make_clip(served / "web.mp4", "-movflags", "+faststart", duration=2.0)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    with http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler) as server:
        threading.Thread(target=server.serve_forever, daemon=True).start()
        url = f"http://127.0.0.1:{server.server_address[1]}/web.mp4"
        run = run_library(
            config(served, tmp_path / "out", inputs=(url, url + ".missing"), workers=1), CaptionOptions(**OPTIONS)
        )
        server.shutdown()
    ok, missing = run.rows
    assert ok.status == "ok" and ok.frames_analysed == 2, ok.error
    assert (tmp_path / "out" / "_urls" / f"127.0.0.1:{server.server_address[1]}" / "web.mp4" / "result.json").exists()
    assert missing.status == "failed" and "404" in missing.error


# -- inputs and options (no Ray) ----------------------------------------------------------------


def test_inputs_expand_folders_lists_and_urls_into_unique_keys(library: Path, tmp_path: Path) -> None:
    listing = tmp_path / "list.txt"
    listing.write_text(f"# a comment\n\n{library / 'a' / 'clip.mp4'}\n{library / 'b'}\nhttps://host/x/v.mp4\n")
    items = expand_inputs(
        [f"@{listing}", str(library / "c" / "one.mkv"), str(library / "a" / "clip.mp4")],
        exclude=[library / "b" / "deep"],
    )
    keys = [item.key for item in items]
    assert keys == [
        *(local_key(library / name) for name in ["a/clip.mp4", "b/clip.mp4", "b/long.mp4", "b/notes.txt"]),
        "_urls/host/x/v.mp4",
        local_key(library / "c/one.mkv"),
    ]
    assert [item.skip_reason is not None for item in items] == [False, False, False, True, False, False]
    with pytest.raises(VideoInputError, match="no such file"):
        expand_inputs([str(tmp_path / "missing.mp4")])


@pytest.mark.parametrize(
    "arguments, message",
    [
        (["--workers", "0"], "--workers must be at least 1"),
        (["--manifest", "m.parquet"], "--manifest needs --workers N or --ray-address ADDR"),
        (["a.mp4", "b.mp4"], "several inputs need --workers"),
        (
            ["--workers", "2", "--backend", "openai", "--api-base", "http://h/v1", "--gpus-per-worker", "1"],
            "need no GPU",
        ),
        (["--workers", "2", "--srt", "x.srt"], "use --srt alone"),
    ],
)
def test_bad_library_options_are_one_line_and_exit_2(
    arguments: list[str], message: str, capsys: pytest.CaptureFixture
) -> None:
    with pytest.raises(SystemExit) as exited:
        main(arguments)
    assert exited.value.code == 2
    assert message in capsys.readouterr().err.strip().splitlines()[-1]


@pytest.mark.slow
def test_single_video_mode_does_not_import_ray() -> None:
    code = (
        "import sys; from videocaption.cli.main import build_parser, main; build_parser(); "
        "assert 'ray' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, check=True, timeout=60)


# -- secrets --------------------------------------------------------------------------------------


@pytest.mark.slow
def test_the_api_key_reaches_the_workers_but_no_file_log_or_process_list(
    cluster: str, library: Path, tmp_path: Path
) -> None:
    """Issue 26 #1: the key went through Ray's runtime_env, which Ray logs (0644, kept after the run)."""
    from fake_openai import FakeOpenAI, completion

    secret = "sk-TESTSECRET" + os.urandom(8).hex()
    processes: list[str] = []

    def chat(request):  # while a worker asks: every process's command line
        processes.append(subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout)
        return completion()

    command = [
        sys.executable,
        str(REPO_ROOT / "test_llm_caption.py"),
        str(library / VIDEOS[0]),
        "--ray-address",
        cluster,
        "--workers",
        "1",
        "--output",
        str(tmp_path / "out"),
        "--backend",
        "openai",
        "--model",
        "m",
        "--max-new-tokens",
        "8",
        "--max-retries",
        "0",
    ]
    with FakeOpenAI(chat=chat) as server:
        done = subprocess.run(
            [*command, "--api-base", server.url],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=300,
            env={**os.environ, "OPENAI_API_KEY": secret},
        )
    assert done.returncode == 0, done.stderr
    chats = [request for request in server.requests if request.path.endswith("/chat/completions")]
    assert chats and all(request.headers["authorization"] == f"Bearer {secret}" for request in chats)
    session = Path(ray._private.worker.global_worker.node.get_session_dir_path())
    found = subprocess.run(["grep", "-rl", secret, str(session), str(tmp_path)], capture_output=True, text=True)
    assert found.stdout == "", f"the key was written to {found.stdout}"
    assert processes and not any(secret in listing for listing in processes)
    assert secret not in done.stdout + done.stderr


def test_urls_differing_in_their_query_get_their_own_folders() -> None:
    """Issue 26 #5: ?id=1 and ?id=2 (two videos) shared one folder, one result.json, two rows."""
    urls = [
        "http://host/video.mp4?id=1",
        "http://host/video.mp4?id=2",
        "http://host/video.mp4",
        "http://host/video.mp4?id=1#t=5",
        "http://host/video.mp4?a=1/2",
        "http://user:pw@host/../x.mp4",
    ]
    keys = [item.key for item in expand_inputs(urls)]
    assert keys == [
        "_urls/host/video.mp4?id=1",
        "_urls/host/video.mp4?id=2",
        "_urls/host/video.mp4",
        "_urls/host/video.mp4?id=1#t=5",
        "_urls/host/video.mp4?a=1%2F2",
        "_urls/host/%2E%2E/x.mp4",
    ]


def test_keys_do_not_change_when_the_library_grows(tmp_path: Path) -> None:
    """Issue 26 #10: keys were relative to the inputs' common folder, so one more input moved every result."""
    for name in ["lib/a/one.mp4", "lib/b/two.mp4", "elsewhere/deep/three.mp4"]:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"")
    listing = tmp_path / "list.txt"
    listing.write_text("lib\n")
    before = {item.source: item.key for item in expand_inputs([f"@{listing}"])}
    listing.write_text("lib\nelsewhere/deep/three.mp4\n")
    after = {item.source: item.key for item in expand_inputs([f"@{listing}"])}
    grown = {item.source: item.key for item in expand_inputs([str(tmp_path / "lib" / "a"), f"@{listing}"])}
    assert (
        before
        == {source: key for source, key in after.items() if source in before}
        == {source: key for source, key in grown.items() if source in before}
    )
    assert len(set(after.values())) == len(after) == 3


def test_a_symlinked_subfolder_is_walked_once_without_looping(tmp_path: Path) -> None:
    """Issue 26 #9: videos under a symlinked subfolder had no row at all."""
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "linked.mp4").write_bytes(b"")
    library = tmp_path / "library"
    (library / "own").mkdir(parents=True)
    (library / "own" / "own.mp4").write_bytes(b"")
    (library / "link").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    (library / "own" / "loop").symlink_to(library, target_is_directory=True)  # back to the top
    items = expand_inputs([str(library), str(tmp_path / "elsewhere")])
    assert [(item.source, item.skip_reason) for item in items] == [
        (str(library / "link" / "linked.mp4"), None),
        (str(library / "own" / "own.mp4"), None),
    ]
    assert items[0].key == local_key(library / "link" / "linked.mp4")


@pytest.mark.slow
def test_the_output_folder_as_input_is_refused_and_the_manifest_kept(tmp_path: Path) -> None:
    """Issue 26 #18: every result.json became a skipped row, and those replaced the manifest."""
    output = tmp_path / "out"
    (output / "v.mp4").mkdir(parents=True)
    (output / "v.mp4" / "result.json").write_text("{}")
    journal = output / "manifest.jsonl"
    journal.write_text('{"path": "/v.mp4", "key": "v.mp4", "status": "ok"}\n')
    with pytest.raises(VideoInputError, match="is the output folder"):
        run_library(config(output, output), CaptionOptions(**OPTIONS))
    assert journal.read_text() == '{"path": "/v.mp4", "key": "v.mp4", "status": "ok"}\n'
    assert not (output / MANIFEST_NAME).exists()


def test_results_under_an_earlier_versions_key_are_moved_not_captioned_again(tmp_path: Path) -> None:
    from videocaption.library.ray_runner import plan

    (tmp_path / "lib").mkdir()
    video = tmp_path / "lib" / "one.mp4"
    video.write_bytes(b"")
    output = tmp_path / "out"
    (output / "one.mp4").mkdir(parents=True)  # the key relative to the inputs' common folder
    (output / "one.mp4" / "result.json").write_text('{"batches": [], "video_title": "t"}')
    manifest = Manifest(output / MANIFEST_NAME)
    from videocaption.library.manifest import ManifestRow

    manifest.append(ManifestRow(path=str(video), key="one.mp4", status="ok", title="t"))
    manifest.close()
    [item] = expand_inputs([str(video)])
    known, todo = plan([item], manifest.previous_rows(), config(video, output))
    assert todo == [] and known[str(video)].key == item.key
    assert (folder(output, video) / "result.json").exists() and not (output / "one.mp4").exists()


# -- manifest and output paths (no Ray) -------------------------------------------------------


def run_command(tmp_path: Path, *arguments: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(REPO_ROOT / "test_llm_caption.py"), *arguments, *CLI_OPTIONS],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.fixture
def full_disk(tmp_path: Path) -> Iterator[Path]:
    """A 256 KiB tmpfs, filled up (needs root)."""
    mount = tmp_path / "full"
    mount.mkdir()
    if (
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mount)], capture_output=True).returncode
        != 0
    ):
        pytest.skip("cannot mount a tmpfs here")
    try:
        filler = os.open(mount / "filler", os.O_WRONLY | os.O_CREAT)
        try:
            with pytest.raises(OSError):
                while True:
                    os.write(filler, b"\0" * 4096)
        finally:
            os.close(filler)
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


@pytest.mark.slow
def test_a_jsonl_manifest_path_is_refused_in_one_line(tmp_path: Path) -> None:
    """Issue 26 #11: --manifest m.jsonl was its own journal; every rerun crashed (UnicodeDecodeError)."""
    make_clip(tmp_path / "v.mp4", duration=1.0)
    done = run_command(tmp_path, str(tmp_path / "v.mp4"), "--workers", "1", "--manifest", str(tmp_path / "m.jsonl"))
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    assert done.stderr.strip().splitlines()[-1].startswith("error: --manifest ")
    assert "name it .parquet" in done.stderr and not (tmp_path / "m.jsonl").exists()
    # A journal that is not text (such a run's Parquet file) is read as torn lines, not a crash.
    journal = tmp_path / "old.jsonl"
    journal.write_bytes(b"PAR1\xff\xfe\x00" + b'\n{"path": "/v.mp4", "key": "v.mp4", "status": "ok"}\n')
    assert list(Manifest(tmp_path / "old.parquet").previous_rows()) == ["/v.mp4"]


@pytest.mark.slow
@pytest.mark.parametrize("where", ["manifest-is-a-folder", "manifest-in-proc", "output-in-proc"])
def test_an_unwritable_manifest_or_output_is_refused_before_any_video(tmp_path: Path, where: str) -> None:
    """Issue 26 #12: a traceback and exit 1, after videos had started."""
    make_clip(tmp_path / "v.mp4", duration=1.0)
    (tmp_path / "folder").mkdir()
    flags = {
        "manifest-is-a-folder": ["--manifest", str(tmp_path / "folder")],
        "manifest-in-proc": ["--manifest", "/proc/m.parquet"],
        "output-in-proc": ["--output", "/proc/out"],
    }[where]
    done = run_command(tmp_path, str(tmp_path / "v.mp4"), "--workers", "1", *flags)
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    [line] = [line for line in done.stderr.splitlines() if line.strip()]
    assert line.startswith("error: ") and ("folder" in line or "/proc" in line), line


@pytest.mark.slow
def test_a_full_disk_is_one_line_and_keeps_the_finished_rows(tmp_path: Path, full_disk: Path) -> None:
    from videocaption.errors import OutputError
    from videocaption.library.manifest import ManifestRow

    (tmp_path / "v.mp4").write_bytes(b"")
    with pytest.raises(OutputError, match="No space left on device"):
        run_library(config(tmp_path / "v.mp4", full_disk / "out"), CaptionOptions(**OPTIONS))
    # The disk fills up mid-run: the row that cannot be written is an OutputError, the others stay.
    manifest = Manifest(tmp_path / "m.parquet")
    manifest.append(ManifestRow(path="/a.mp4", key="a.mp4", status="ok"))
    manifest.journal = full_disk / "m.jsonl"
    manifest.close()
    with pytest.raises(OutputError, match=r"m.jsonl: cannot record /b.mp4 \(No space left on device\)"):
        manifest.append(ManifestRow(path="/b.mp4", key="b.mp4", status="ok"))
    with pytest.raises(OutputError, match="its rows are kept in"):
        Manifest(full_disk / "m.parquet").write_parquet([ManifestRow(path="/a.mp4", key="a.mp4", status="ok")])
    assert list(Manifest(tmp_path / "m.parquet").previous_rows()) == ["/a.mp4"]


@pytest.mark.slow
@pytest.mark.parametrize("connect", ["local-instance", "ray-address"])
def test_sigterm_ends_like_ctrl_c_with_143(cluster: str, library: Path, tmp_path: Path, connect: str) -> None:
    """Issue 26 #13: SIGTERM printed Ray's C++ '*** SIGTERM received ... PC: @' dump, exit 134 or 15."""
    where = ["--ray-address", cluster] if connect == "ray-address" else []
    command = [
        sys.executable,
        str(REPO_ROOT / "test_llm_caption.py"),
        str(library / LONG),
        *where,
        "--workers",
        "1",
        "--output",
        str(tmp_path),
        *CLI_OPTIONS,
    ]
    driver = subprocess.Popen(command, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for((folder(tmp_path, library / LONG) / "result.json.partial").exists, what="the first batch's checkpoint")
    driver.send_signal(signal.SIGTERM)
    stdout, stderr = driver.communicate(timeout=120)
    assert driver.returncode == 143, stderr
    assert "interrupted:" in stderr and "Traceback" not in stderr
    assert "SIGTERM received" not in stderr and "PC: @" not in stderr
    assert "(raylet)" not in stdout + stderr  # issue 26 #20: Ray's multi-line notices of the stopped task
    assert " inputs: 0 ok" in stdout and (tmp_path / MANIFEST_NAME).exists()


def test_a_list_with_a_byte_order_mark_reads_its_first_path(tmp_path: Path) -> None:
    """Issue 26 (doubtful): a UTF-8 BOM (Notepad) made the first line a path that does not exist."""
    (tmp_path / "v.mp4").write_bytes(b"")
    listing = tmp_path / "list.txt"
    listing.write_bytes("\ufeffv.mp4\r\n".encode())
    assert [item.source for item in expand_inputs([f"@{listing}"])] == [str(tmp_path / "v.mp4")]


@pytest.mark.slow
def test_a_second_run_on_the_same_output_folder_is_refused(tmp_path: Path) -> None:
    """Issue 26 (doubtful): two runs at once captioned everything twice; now the second one stops."""
    from videocaption.errors import OutputError
    from videocaption.library.ray_runner import lock_output

    (tmp_path / "v.mp4").write_bytes(b"")
    output = tmp_path / "out"
    output.mkdir()
    held = lock_output(output)
    try:
        with pytest.raises(OutputError, match=rf"another library run is writing there \(pid {os.getpid()} on "):
            run_library(config(tmp_path / "v.mp4", output), CaptionOptions(**OPTIONS))
    finally:
        held.close()
    lock_output(output).close()  # free again once the first run ends


@pytest.mark.slow
def test_results_made_with_another_model_are_kept_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Issue 26 (doubtful): a rerun with other options kept the old results silently."""
    from videocaption.library.manifest import ManifestRow

    video = tmp_path / "v.mp4"
    video.write_bytes(b"")
    output = tmp_path / "out"
    (folder(output, video)).mkdir(parents=True)
    (folder(output, video) / "result.json").write_text('{"batches": [], "model": "old-model"}')
    manifest = Manifest(output / MANIFEST_NAME)
    manifest.append(ManifestRow(path=str(video), key=local_key(video), status="ok", model="old-model"))
    manifest.close()
    with caplog.at_level(logging.WARNING, logger="llm_caption"):
        run = run_library(config(video, output), CaptionOptions(**OPTIONS))  # nothing to do: no Ray
    assert run.captioned == [] and [row.status for row in run.rows] == ["ok"]
    assert any(
        "1 finished videos keep results captioned with another model (old-model)" in record.getMessage()
        for record in caplog.records
    )


def test_an_earlier_key_two_urls_shared_is_given_to_neither(tmp_path: Path) -> None:
    from videocaption.library.manifest import ManifestRow
    from videocaption.library.ray_runner import plan

    output = tmp_path / "out"
    (output / "_urls" / "host" / "v.mp4").mkdir(parents=True)  # ?id=1 and ?id=2 both wrote here
    (output / "_urls" / "host" / "v.mp4" / "result.json").write_text('{"batches": []}')
    urls = ["http://host/v.mp4?id=1", "http://host/v.mp4?id=2"]
    previous = {url: ManifestRow(path=url, key="_urls/host/v.mp4", status="ok") for url in urls}
    known, todo = plan(expand_inputs(urls), previous, config(tmp_path, output))
    assert known == {} and [item.source for item in todo] == urls
    assert (output / "_urls" / "host" / "v.mp4" / "result.json").exists()


def test_a_sigterm_while_ray_starts_is_a_stop_like_any_other(monkeypatch, tmp_path: Path) -> None:
    """ray.init puts a Python SIGTERM handler in place (sys.exit) before the driver's come back:
    a SIGTERM then was lost or a silent exit 15 (found by fuzz_inputs --mode library). Now it
    stops the run as Ctrl-C does, and a half-started instance is shut down."""
    import ray._private.utils as ray_utils

    from videocaption.library import command
    from videocaption.library.command import stop_on_signals
    from videocaption.library.ray_runner import RaySession

    calls = []

    def init_interrupted_by_sigterm(**kwargs):
        ray_utils.set_sigterm_handler(lambda signum, frame: sys.exit(signum))  # what ray.init does
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(1)  # the handler runs here
        calls.append("init went on")

    previous = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM)}
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", init_interrupted_by_sigterm)
    try:
        stop_on_signals()
        ours = signal.getsignal(signal.SIGTERM)
        with pytest.raises(KeyboardInterrupt):
            RaySession(config(tmp_path, tmp_path / "out")).__enter__()
        assert calls == [] and signal.getsignal(signal.SIGTERM) is ours
    finally:
        command._stopped_by.clear()
        for signum, handler in previous.items():
            signal.signal(signum, handler)
