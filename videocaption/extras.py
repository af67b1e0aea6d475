"""Optional features and the extras (``pip install 'llm-caption[EXTRA]'``) that bring their packages.

Why checked up front: a feature whose package was missing failed late (after the video was opened
or the model loaded) with an unexpected ModuleNotFoundError, exit status 1, reported as a bug.
The fix is one pip command, so the command line refuses the run before any work and names it.
"""

from __future__ import annotations

import importlib
from importlib.util import find_spec
from types import ModuleType

from videocaption.errors import MissingDependencyError
from videocaption.options import CaptionOptions

# Top-level module -> the extra of pyproject.toml that installs it.
EXTRA_OF = {
    "openai": "serve",
    "transformers": "transformers",
    "silero_vad": "speech",
    "onnxruntime": "speech",
    "ray": "ray",
    "pyarrow": "search",
    "sentence_transformers": "embed",
}


def needed_modules(
    options: CaptionOptions, *, library: bool = False, segments: bool = False, embed_model: bool = False
) -> list[tuple[str, str]]:
    """(feature, module) for each optional module this run will import."""
    needed = []
    if options.backend in ("openai", "transformers"):
        needed.append((f"--backend {options.backend}", options.backend))
    if options.transcribe:
        needed += [("--transcribe", "silero_vad"), ("--transcribe", "onnxruntime")]
        needed.append(("--transcribe", "transformers" if options.asr_backend == "whisper" else "openai"))
    if library:
        needed += [("library mode", "ray"), ("library mode", "pyarrow")]
    if segments:
        needed.append(("--segments", "pyarrow"))
    if embed_model:
        needed.append(("--embed-model", "sentence_transformers"))
    return needed


def missing_extras_message(needed: list[tuple[str, str]]) -> str | None:
    """One line naming what is missing and the pip command that installs it, or None."""
    missing = [(feature, module) for feature, module in needed if find_spec(module) is None]
    return _install_hint(missing) if missing else None


def _install_hint(missing: list[tuple[str, str]]) -> str:
    """'FEATURES needs MODULES, which is not installed: pip install ...' for (feature, module) pairs."""
    features = ", ".join(dict.fromkeys(feature for feature, _ in missing))
    modules = ", ".join(dict.fromkeys(module for _, module in missing))
    extras = ",".join(dict.fromkeys(EXTRA_OF[module] for _, module in missing))
    return f"{features} needs {modules}, which is not installed: pip install 'llm-caption[{extras}]'"


def require(module: str, feature: str) -> ModuleType:
    """``import module`` for ``feature``, or MissingDependencyError naming the extra to install.

    For the places the command line's up-front check cannot foresee (``--search`` over a Parquet
    table, the Python API): a missing package is the user's to fix, not a bug.
    """
    top = module.split(".")[0]
    if find_spec(top) is None:
        raise MissingDependencyError(_install_hint([(feature, top)]))
    return importlib.import_module(module)
