"""The model families the studio knows: one row per family, pure data, no torch.

Each row says how a decoder layer names its linear layers (fused or not: Phi-3's ``qkv_proj`` computes q, k and v
in one matrix), what its chat template does that others do not (no system role, a thinking switch, its own
tokens), what merging and GGUF conversion need, its licence, and the published checkpoints the Train tab lists,
with the shape of each one's ``config.json`` (``studio.catalog.ARCHITECTURES`` holds them, so the memory estimate
answers without a download).

Adding a family is one row in ``FAMILIES`` and its line in tests/test_families.py. A model whose architecture
is not here still trains where transformers and peft support it: its target modules come from the layer names in
its own safetensors headers (``studio.catalog.linear_layers_from_safetensors``).

The shapes were transcribed from each repository's published config.json (see README, "Model families");
``head_dim`` is hidden_size / num_attention_heads where the file omits it.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

__all__ = ["Linear", "Published", "Family", "FAMILIES", "LLAMA_LAYERS", "FUSED_LAYERS", "family_of", "published",
           "published_models", "model_label", "gguf_families", "gguf_problem", "shape"]

# the roles a decoder layer's linear layers compute, and what each reads and writes:
# q, k, v: attention input -> heads x head_dim (k, v: kv heads); o: heads x head_dim -> hidden;
# gate, up: hidden -> intermediate; down: intermediate -> hidden
ROLES = ("q", "k", "v", "o", "gate", "up", "down")


@dataclass(frozen=True)
class Linear:
    """One linear layer of a decoder layer: its module name and the roles it computes (several when fused)."""

    name: str
    parts: tuple[str, ...]

    @property
    def fused(self) -> bool:
        return len(self.parts) > 1


LLAMA_LAYERS = (Linear("q_proj", ("q",)), Linear("k_proj", ("k",)), Linear("v_proj", ("v",)),
                Linear("o_proj", ("o",)), Linear("gate_proj", ("gate",)), Linear("up_proj", ("up",)),
                Linear("down_proj", ("down",)))
FUSED_LAYERS = (Linear("qkv_proj", ("q", "k", "v")), Linear("o_proj", ("o",)),
                Linear("gate_up_proj", ("gate", "up")), Linear("down_proj", ("down",)))


def shape(model_type: str, vocab_size: int, hidden_size: int, intermediate_size: int, num_hidden_layers: int,
          num_attention_heads: int, num_key_value_heads: int, tie_word_embeddings: bool,
          max_position_embeddings: int, head_dim: int | None = None, **extra) -> dict:
    """The shape-defining part of a config.json (head_dim: hidden_size / heads where the file omits it)."""
    return {"model_type": model_type, "vocab_size": vocab_size, "hidden_size": hidden_size,
            "intermediate_size": intermediate_size, "num_hidden_layers": num_hidden_layers,
            "num_attention_heads": num_attention_heads, "num_key_value_heads": num_key_value_heads,
            "head_dim": head_dim or hidden_size // num_attention_heads,
            "tie_word_embeddings": tie_word_embeddings, "max_position_embeddings": max_position_embeddings, **extra}


@dataclass(frozen=True)
class Published:
    """A published checkpoint: hub id, size as named, parameter count (billions, as its model card gives it),
    licence, and the shape of its config.json (for an image-text checkpoint, its text decoder's)."""

    hub_id: str
    size: str
    params: float
    licence: str
    config: dict = field(compare=False, hash=False, repr=False)
    note: str = ""
    extra_params: float = 0.0  # billions outside the text decoder (Gemma 3's vision tower): not in the estimate

    @property
    def name(self) -> str:
        return self.hub_id.rsplit("/", 1)[-1]


@dataclass(frozen=True)
class Family:
    name: str
    model_types: tuple[str, ...]        # config.json "model_type" values
    architectures: tuple[str, ...]      # config.json "architectures" class names
    linear_layers: tuple[Linear, ...]   # one decoder layer's, attention then MLP; lm_head excluded
    system_role: bool                   # the chat template renders a system turn of its own
    thinking: bool                      # the chat template takes enable_thinking
    gguf: str | None                    # llama.cpp's GGUF architecture (convert_hf_to_gguf.py); None: unsupported
    licence: str
    template: str                       # the chat template's quirks, one sentence
    merge: str = ""                     # what merging (and GGUF) needs beyond a plain LoRA merge
    models: tuple[Published, ...] = ()
    # where one of its model_types converts to another GGUF architecture (None: the converter does not take it)
    gguf_by_model_type: tuple[tuple[str, str | None], ...] = ()

    @property
    def linear_names(self) -> list[str]:
        return [layer.name for layer in self.linear_layers]

    @property
    def fused_layers(self) -> dict[str, tuple[str, ...]]:
        """e.g. {"qkv_proj": ("q", "k", "v"), "gate_up_proj": ("gate", "up")}; empty when nothing is fused."""
        return {layer.name: layer.parts for layer in self.linear_layers if layer.fused}

    def gguf_arch(self, model_type: str | None = None) -> str | None:
        return dict(self.gguf_by_model_type).get(str(model_type or "").lower(), self.gguf)


APACHE, MIT, GEMMA = "Apache-2.0", "MIT", "Gemma Terms of Use"

FAMILIES: tuple[Family, ...] = (
    Family(
        "Llama 3.x", ("llama",), ("LlamaForCausalLM",), LLAMA_LAYERS, system_role=True, thinking=False,
        gguf="llama", licence="Llama 3.x Community License",
        template="<|start_header_id|>role<|end_header_id|> headers and <|eot_id|> at each turn's end; 3.1 and 3.2 "
                 "write a default system turn with a knowledge cut-off and today's date",
        merge="1B and 3B tie lm_head to the embeddings",
        models=(
            Published("meta-llama/Llama-3.2-1B-Instruct", "1B", 1.24, "Llama 3.2 Community License",
                      shape("llama", 128256, 2048, 8192, 16, 32, 8, True, 131072, head_dim=64)),
            Published("meta-llama/Llama-3.2-3B-Instruct", "3B", 3.21, "Llama 3.2 Community License",
                      shape("llama", 128256, 3072, 8192, 28, 24, 8, True, 131072, head_dim=128)),
            Published("meta-llama/Llama-3.1-8B-Instruct", "8B", 8.03, "Llama 3.1 Community License",
                      shape("llama", 128256, 4096, 14336, 32, 32, 8, False, 131072, head_dim=128)),
        )),
    Family(
        "Qwen2.5", ("qwen2",), ("Qwen2ForCausalLM",), LLAMA_LAYERS, system_role=True, thinking=False,
        gguf="qwen2", licence="Apache-2.0 (3B and 72B: Qwen license)",
        template="ChatML (<|im_start|>role ... <|im_end|>); rows without a system turn get the default "
                 "'You are Qwen, created by Alibaba Cloud. You are a helpful assistant.'",
        merge="q, k and v carry biases, which LoRA leaves as they are",
        models=(
            Published("Qwen/Qwen2.5-0.5B-Instruct", "0.5B", 0.49, APACHE,
                      shape("qwen2", 151936, 896, 4864, 24, 14, 2, True, 32768)),
            Published("Qwen/Qwen2.5-1.5B-Instruct", "1.5B", 1.54, APACHE,
                      shape("qwen2", 151936, 1536, 8960, 28, 12, 2, True, 32768)),
            Published("Qwen/Qwen2.5-7B-Instruct", "7B", 7.61, APACHE,
                      shape("qwen2", 152064, 3584, 18944, 28, 28, 4, False, 32768)),
        )),
    Family(
        "Qwen3", ("qwen3",), ("Qwen3ForCausalLM",), LLAMA_LAYERS, system_role=True, thinking=True,
        gguf="qwen3", licence=APACHE,
        template="ChatML with a thinking switch (enable_thinking): off, the generation prompt ends in an empty "
                 "<think></think> block; reasoning of turns before the last user turn is dropped",
        merge="q and k are RMS-normed per head (q_norm, k_norm), which LoRA leaves as they are",
        models=(
            Published("Qwen/Qwen3-0.6B", "0.6B", 0.6, APACHE,
                      shape("qwen3", 151936, 1024, 3072, 28, 16, 8, True, 40960, head_dim=128)),
            Published("Qwen/Qwen3-1.7B", "1.7B", 1.7, APACHE,
                      shape("qwen3", 151936, 2048, 6144, 28, 16, 8, True, 40960, head_dim=128)),
            Published("Qwen/Qwen3-4B", "4B", 4.0, APACHE,
                      shape("qwen3", 151936, 2560, 9728, 36, 32, 8, True, 40960, head_dim=128)),
            Published("Qwen/Qwen3-8B", "8B", 8.2, APACHE,
                      shape("qwen3", 151936, 4096, 12288, 36, 32, 8, False, 40960, head_dim=128)),
        )),
    Family(
        "Mistral/Ministral", ("mistral", "ministral"), ("MistralForCausalLM", "MinistralForCausalLM"),
        LLAMA_LAYERS, system_role=True, thinking=False, gguf="llama",
        licence="Apache-2.0 (Mistral 7B); Mistral Research License (Ministral 8B)",
        template="[INST] ... [/INST] with no role names; the system prompt is written inside the last user turn, "
                 "and roles must alternate user/assistant",
        merge="llama.cpp's converter takes MistralForCausalLM checkpoints (the published ones) as a Llama, but not "
              "transformers' newer MinistralForCausalLM layout",
        gguf_by_model_type=(("ministral", None),),
        models=(
            Published("mistralai/Mistral-7B-Instruct-v0.3", "7B", 7.25, APACHE,
                      shape("mistral", 32768, 4096, 14336, 32, 32, 8, False, 32768, head_dim=128)),
            Published("mistralai/Ministral-8B-Instruct-2410", "8B", 8.02, "Mistral Research License",
                      shape("mistral", 131072, 4096, 12288, 36, 32, 8, False, 32768, head_dim=128)),
        )),
    Family(
        "Gemma 2", ("gemma2",), ("Gemma2ForCausalLM",), LLAMA_LAYERS, system_role=False, thinking=False,
        gguf="gemma2", licence=GEMMA,
        template="<start_of_turn>user / <start_of_turn>model turns ending in <end_of_turn>; no system role: the "
                 "template raises on one, so the studio writes it at the start of the first user turn",
        merge="attention and final logits are soft-capped (kept in the config); embeddings tied; llama.cpp's "
              "converter reads the SentencePiece tokenizer.model and which added tokens are special from "
              "tokenizer_config.json, both carried into the merged folder",
        models=(
            Published("google/gemma-2-2b-it", "2B", 2.61, GEMMA,
                      shape("gemma2", 256000, 2304, 9216, 26, 8, 4, True, 8192, head_dim=256)),
            Published("google/gemma-2-9b-it", "9B", 9.24, GEMMA,
                      shape("gemma2", 256000, 3584, 14336, 42, 16, 8, True, 8192, head_dim=256)),
        )),
    Family(
        "Gemma 3", ("gemma3_text", "gemma3"), ("Gemma3ForCausalLM", "Gemma3ForConditionalGeneration"),
        LLAMA_LAYERS, system_role=False, thinking=False, gguf="gemma3", licence=GEMMA,
        template="<start_of_turn>user / <start_of_turn>model turns ending in <end_of_turn>; no system role: the "
                 "template itself writes a system turn at the start of the first user turn",
        merge="4B and larger are image-text checkpoints (gemma3): the text decoder sits under language_model, "
              "layer names such as q_proj also match the vision tower's, and merging keeps the vision tower as it is",
        models=(
            Published("google/gemma-3-1b-it", "1B", 1.0, GEMMA,
                      shape("gemma3_text", 262144, 1152, 6912, 26, 4, 1, True, 32768, head_dim=256)),
            Published("google/gemma-3-4b-it", "4B", 4.3, GEMMA,
                      shape("gemma3", 262208, 2560, 10240, 34, 8, 4, True, 131072, head_dim=256),
                      note="the memory estimate counts the 3.9B text decoder, not the 0.4B vision tower",
                      extra_params=0.42),
        )),
    Family(
        "Phi-3/Phi-4", ("phi3",), ("Phi3ForCausalLM",), FUSED_LAYERS, system_role=True, thinking=False,
        gguf="phi3", licence=MIT,
        template="<|system|>, <|user|>, <|assistant|> turns ending in <|end|> (phi-4: <|im_start|>role<|im_sep|> "
                 "... <|im_end|>); early revisions of Phi-3-mini's template drop the system turn",
        merge="q, k and v are one fused qkv_proj and gate and up one gate_up_proj: LoRA trains and merges them "
              "as one matrix each; llama.cpp right-strips Phi-3's special tokens (as its tokenizer does) only in a "
              "GGUF named phi3, so a Phi-3-mini export's name gets ' (Phi-3)', and a GPT-2-vocabulary one (phi-4) "
              "loses the word, which would make llama.cpp look up tokens it lacks",
        models=(
            Published("microsoft/Phi-3-mini-4k-instruct", "3.8B", 3.82, MIT,
                      shape("phi3", 32064, 3072, 8192, 32, 32, 32, False, 4096)),
            Published("microsoft/Phi-4-mini-instruct", "3.8B", 3.84, MIT,
                      shape("phi3", 200064, 3072, 8192, 32, 24, 8, True, 131072)),
            Published("microsoft/phi-4", "14B", 14.7, MIT,
                      shape("phi3", 100352, 5120, 17920, 40, 40, 10, False, 16384)),
        )),
    Family(
        "OLMo 2", ("olmo2",), ("Olmo2ForCausalLM",), LLAMA_LAYERS, system_role=True, thinking=False,
        gguf="olmo2", licence=APACHE,
        template="<|system|>, <|user|>, <|assistant|> turns, replies ending in <|endoftext|>",
        merge="norms after attention and MLP, q and k RMS-normed over the whole layer",
        models=(
            Published("allenai/OLMo-2-0425-1B-Instruct", "1B", 1.48, APACHE,
                      shape("olmo2", 100352, 2048, 8192, 16, 16, 16, False, 4096)),
            Published("allenai/OLMo-2-1124-7B-Instruct", "7B", 7.3, APACHE,
                      shape("olmo2", 100352, 4096, 11008, 32, 32, 32, False, 4096)),
        )),
    Family(
        "Granite 3", ("granite",), ("GraniteForCausalLM",), LLAMA_LAYERS, system_role=True, thinking=False,
        gguf="granite", licence=APACHE,
        template="<|start_of_role|>role<|end_of_role|> ... <|end_of_text|>; rows without a system turn get a "
                 "default naming Granite, IBM, a knowledge cut-off and today's date",
        merge="embedding, attention and residual multipliers and the logits scaling live in the config "
              "(kept by merging, carried by the granite GGUF architecture)",
        models=(
            Published("ibm-granite/granite-3.1-2b-instruct", "2B", 2.53, APACHE,
                      shape("granite", 49155, 2048, 8192, 40, 32, 8, True, 131072)),
            Published("ibm-granite/granite-3.3-8b-instruct", "8B", 8.17, APACHE,
                      shape("granite", 49159, 4096, 12800, 40, 32, 8, True, 131072)),
        )),
    Family(
        "SmolLM2/SmolLM3", ("llama", "smollm3"), ("LlamaForCausalLM", "SmolLM3ForCausalLM"), LLAMA_LAYERS,
        system_role=True, thinking=True, gguf="llama", licence=APACHE,
        template="ChatML; SmolLM2 writes the default system turn 'You are a helpful AI assistant named SmolLM, "
                 "trained by Hugging Face'; SmolLM3 takes enable_thinking (/think, /no_think) and writes a "
                 "metadata system turn with today's date",
        merge="embeddings tied; SmolLM3 leaves rotary embeddings out of every fourth layer (NoPE)",
        models=(
            Published("HuggingFaceTB/SmolLM2-135M-Instruct", "135M", 0.135, APACHE,
                      shape("llama", 49152, 576, 1536, 30, 9, 3, True, 8192)),
            Published("HuggingFaceTB/SmolLM2-360M-Instruct", "360M", 0.362, APACHE,
                      shape("llama", 49152, 960, 2560, 32, 15, 5, True, 8192)),
            Published("HuggingFaceTB/SmolLM2-1.7B-Instruct", "1.7B", 1.71, APACHE,
                      shape("llama", 49152, 2048, 8192, 24, 32, 32, True, 8192)),
            Published("HuggingFaceTB/SmolLM3-3B", "3B", 3.08, APACHE,
                      shape("smollm3", 128256, 2048, 11008, 36, 16, 4, True, 65536)),
        ),
        gguf_by_model_type=(("smollm3", "smollm3"),)),
)


def _config_fields(config: Any) -> tuple[str, list[str], int | None]:
    """(model_type, architectures, vocab_size) of a config.json dict, a transformers config or a bare name."""
    if isinstance(config, str):
        return config.strip().lower(), [config.strip()], None
    if isinstance(config, Mapping):
        get = config.get
    else:
        def get(key, default=None):
            return getattr(config, key, default)
    model_type = str(get("model_type") or "").lower()
    architectures = list(get("architectures") or [])
    vocab = get("vocab_size")
    text = get("text_config")
    if text is not None and not vocab:  # image-text checkpoints nest the language model's shape
        _, _, vocab = _config_fields(text)
    return model_type, architectures, vocab if isinstance(vocab, int) else None


def family_of(config_or_model_type: Any) -> Family | None:
    """The family row of a config (a config.json dict or a transformers config) or a bare ``model_type`` or
    architecture class name; None when the table does not know it.

    Several rows share ``llama`` (Llama 3.x and SmolLM2): the row with a published model of the same vocabulary
    size wins, else the first."""
    if config_or_model_type is None:
        return None
    model_type, architectures, vocab = _config_fields(config_or_model_type)
    rows = [f for f in FAMILIES if model_type in f.model_types]
    if not rows:
        rows = [f for f in FAMILIES if any(a in f.architectures for a in architectures)]
    if len(rows) > 1 and vocab is not None:
        same = [f for f in rows if any(m.config["vocab_size"] == vocab and m.config["model_type"] == model_type
                                       for m in f.models)]
        rows = same or rows
    return rows[0] if rows else None


def published_models() -> list[tuple[Family, Published]]:
    """Every published checkpoint of the table, family by family."""
    return [(f, m) for f in FAMILIES for m in f.models]


def published(hub_id: str) -> tuple[Family, Published] | None:
    """The row and checkpoint of a hub id: exact (case-insensitive), else by the part after '/'."""
    want = (hub_id or "").strip().rstrip("/").lower()
    if not want:
        return None
    everything = published_models()
    for pair in everything:
        if pair[1].hub_id.lower() == want:
            return pair
    tail = want.rsplit("/", 1)[-1]
    return next((pair for pair in everything if pair[1].name.lower() == tail), None)


def model_label(family: Family, model: Published) -> str:
    """How the Train tab lists a checkpoint, e.g. "Qwen2.5-0.5B-Instruct · Qwen2.5 · 0.5B · Apache-2.0"."""
    return " · ".join([model.name, family.name, model.size, model.licence])


def gguf_families() -> list[str]:
    """Names of the families llama.cpp's converter takes."""
    return [f.name for f in FAMILIES if f.gguf]


def gguf_problem(config: Any) -> str | None:
    """None when llama.cpp's converter takes this model's architecture, else the sentence that says which
    families GGUF export supports."""
    family = family_of(config)
    model_type, _, _ = _config_fields(config)
    if family is not None and family.gguf_arch(model_type):
        return None
    what = f"'{model_type}'" if model_type else "this model's architecture"
    why = (f"llama.cpp's converter does not take {what} checkpoints of {family.name}" if family is not None
           else f"{what} is not one of them")
    return (f"GGUF export supports these families: {', '.join(gguf_families())}; {why} (the merged model can still "
            "be exported as safetensors)")
