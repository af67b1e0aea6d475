"""Optional semantic ranking: sentence embeddings of the segments, fused with BM25.

With ``--embed-model`` (a hub id or a local sentence-transformers folder) each segment's text
(:meth:`Segment.text`) is embedded once and the vectors cached beside the index
(``.NAME.embeddings-<model hash>.npz``), reused until the segments change (the index's
signature is stored with them) or another model is named. A query is embedded the same way and
ranked by cosine similarity; the two rankings are fused by reciprocal rank fusion (RRF,
``1 / (60 + rank)`` summed), which needs no score calibration between BM25 and cosine.
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path

import numpy as np

from videocaption.errors import ModelLoadError
from videocaption.search.index import Hit, SearchIndex, cache_path

log = logging.getLogger("llm_caption")
RRF_K = 60  # the constant of reciprocal rank fusion (Cormack et al., 2009)
CANDIDATES = 100  # each ranking's depth before fusion


class Embeddings:
    """The segments' vectors for one model, computed or read from the cache.

    Args:
        index: the open search index (its segments and signature).
        model: a sentence-transformers model id or folder.

    Raises:
        ModelLoadError: the model cannot be loaded (one line).
    """

    def __init__(self, index: SearchIndex, model: str) -> None:
        self.model_name = model
        self.model = _load(model)
        identity = str(Path(model).resolve()) if Path(model).exists() else model
        digest = hashlib.sha256(identity.encode()).hexdigest()
        self.path = cache_path(index.index, f"embeddings-{digest[:16]}.npz")
        self.computed = 0  # segments embedded by this instance (0: all read from the cache)
        self.vectors = self._cached(index.signature)
        if self.vectors is None:
            texts = [segment.text() for segment in index.segments()]
            self.vectors = self.encode(texts) if texts else np.zeros((0, 1), dtype=np.float32)
            self.computed = len(texts)
            self._save(index.signature)

    def encode(self, texts: list[str]) -> np.ndarray:
        """Unit-length vectors, one row per text."""
        vectors = self.model.encode(texts, batch_size=64, normalize_embeddings=True, show_progress_bar=False)
        return np.asarray(vectors, dtype=np.float32)

    def rank(self, query: str, top: int) -> list[int]:
        """Rowids (1-based, as the index's) of the ``top`` segments closest to ``query``."""
        if not len(self.vectors):
            return []
        scores = self.vectors @ self.encode([query])[0]
        order = np.argsort(-scores, kind="stable")[:top]
        return [int(position) + 1 for position in order]

    def _cached(self, signature: str) -> np.ndarray | None:
        try:
            with np.load(self.path) as data:
                if str(data["signature"]) == signature and str(data["model"]) == self.model_name:
                    return data["vectors"]
        except (OSError, KeyError, ValueError):
            pass
        return None

    def _save(self, signature: str) -> None:
        tmp = self.path.with_name(f"{self.path.name}.{os.getpid()}.tmp.npz")
        try:
            np.savez(tmp, vectors=self.vectors, signature=np.array(signature), model=np.array(self.model_name))
            os.replace(tmp, self.path)
        except OSError as error:
            tmp.unlink(missing_ok=True)
            log.info("the embeddings cannot be cached at %s (%s)", self.path, error)


def _load(model: str):
    try:
        from sentence_transformers import SentenceTransformer
    except ImportError:
        raise ModelLoadError("--embed-model needs sentence-transformers: pip install 'llm-caption[embed]'") from None
    try:
        return SentenceTransformer(model, device="cpu")
    except Exception as error:  # noqa: BLE001 - hub, file and format errors alike become one line
        reason = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise ModelLoadError(f"--embed-model {model}: cannot be loaded ({reason})") from None


def hybrid_search(index: SearchIndex, embeddings: Embeddings, query: str, top: int = 10) -> list[Hit]:
    """BM25 and embedding rankings fused by RRF; the score is the fused one."""
    bm25 = index.rank(query, CANDIDATES)
    snippets = {rowid: snippet for rowid, _, snippet in bm25}
    fused: dict[int, float] = {}
    for ranking in ([rowid for rowid, _, _ in bm25], embeddings.rank(query, CANDIDATES)):
        for rank, rowid in enumerate(ranking, 1):
            fused[rowid] = fused.get(rowid, 0.0) + 1.0 / (RRF_K + rank)
    best = sorted(fused.items(), key=lambda item: (-item[1], item[0]))[:top]
    hits = []
    for rank, (rowid, score) in enumerate(best, 1):
        segment = index.segment(rowid)
        hits.append(Hit(rank, score, segment, snippets.get(rowid) or segment.description[:160]))
    return hits
