"""A model folder's tokenizer and chat template for the UI process, without torch or transformers.

The Datasets tab's preview, the Train tab's warnings and `studio dataset check` count tokens and render chat templates
for the chosen base model. They need what transformers' fast tokenizer gives them, not transformers itself:
``tokenizer.json`` read by the ``tokenizers`` package (Rust), the special tokens of ``tokenizer_config.json``, and the
chat template (``chat_template.jinja``, else the config's) rendered with jinja2 the way transformers renders it
(``transformers.utils.chat_template_utils``: a sandboxed environment with trim_blocks, lstrip_blocks and loop controls,
``raise_exception``, ``strftime_now``, a ``tojson`` that keeps non-ASCII characters, the messages made plain data with
their None values dropped and their reasoning aliased). ``ChatTokenizer`` offers exactly what ``studio.render`` and
``studio.datasets.stats`` call; tests/test_tokenizer.py checks it renders and encodes as ``AutoTokenizer`` does.

Workers keep transformers' own tokenizer: they load the model as well.
"""
from __future__ import annotations

import functools
import json
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path

SPECIAL_NAMES = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")
CHAT_TEMPLATE_FILE = "chat_template.jinja"
CHAT_TEMPLATE_DIR = "additional_chat_templates"
REASONING_FIELDS = ("reasoning_content", "thinking", "reasoning")  # transformers aliases them for templates
ADDED_TOKEN_FIELDS = ("single_word", "lstrip", "rstrip", "normalized", "special")


class TokenizerError(ValueError):
    """A model folder whose tokenizer cannot be read here (one sentence)."""


def _content(token) -> str | None:
    """A special token's text, from a string, an AddedToken's dict (tokenizer_config.json) or an AddedToken."""
    if isinstance(token, dict):
        token = token.get("content")
    token = getattr(token, "content", token)
    return token if isinstance(token, str) else None


def _as_dict(token) -> dict:
    """A token (a string, an AddedToken or its dict) as an AddedToken's fields."""
    if isinstance(token, str):
        return {"content": token}
    if isinstance(token, dict):
        return {k: v for k, v in token.items() if k == "content" or k in ADDED_TOKEN_FIELDS}
    return {"content": token.content, **{k: getattr(token, k) for k in ADDED_TOKEN_FIELDS}}


def _added_token(token):
    """An AddedToken from its dict as tokenizer_config.json writes it (``AddedToken(**fields)``, as transformers
    builds it: a field left out takes the tokenizers default)."""
    from tokenizers import AddedToken

    return AddedToken(**_as_dict(token))


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise TokenizerError(f"{path.name} of {path.parent.name} cannot be read: {exc}") from None
    return data if isinstance(data, dict) else {}


def _chat_template(folder: Path, config: dict) -> str | dict | None:
    """The model's chat template as transformers loads it: chat_template.jinja (plus additional_chat_templates/*.jinja,
    then a dict by name) before the config's entry (a string, or a list of {name, template})."""
    templates = {}
    if (folder / CHAT_TEMPLATE_FILE).is_file():
        templates["default"] = (folder / CHAT_TEMPLATE_FILE).read_text(encoding="utf-8")
    for path in sorted((folder / CHAT_TEMPLATE_DIR).glob("*.jinja")) if (folder / CHAT_TEMPLATE_DIR).is_dir() else []:
        templates[path.name.removesuffix(".jinja")] = path.read_text(encoding="utf-8")
    if list(templates) == ["default"]:
        return templates["default"]
    if templates:
        return templates
    template = config.get("chat_template")
    if isinstance(template, list):
        return {t["name"]: t["template"] for t in template}
    return template if isinstance(template, (str, dict)) else None


class ChatTokenizer:
    """A fast tokenizer and chat template read from a model folder (``load``); the methods ``studio.render`` and
    ``studio.datasets.stats`` use, with transformers' signatures and results."""

    is_fast = True

    def __init__(self, folder: str | Path):
        from tokenizers import Tokenizer

        folder = Path(folder)
        if not (folder / "tokenizer.json").is_file():
            raise TokenizerError(f"{folder.name} has no tokenizer.json, so its tokenizer cannot be read without "
                                 "transformers")
        config = _read_json(folder / "tokenizer_config.json")
        self.name_or_path = str(folder)
        self.chat_template = _chat_template(folder, config)
        self.clean_up_tokenization_spaces = bool(config.get("clean_up_tokenization_spaces", False))
        self._tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
        self._tokenizer.no_truncation()  # transformers encodes with truncation and padding off unless asked
        self._tokenizer.no_padding()
        # what transformers' TokenizersBackend.__init__ adds to tokenizer.json's tokenizer: the config's added tokens
        # with the config's flags (a named special token's made special), then every named or extra special token
        # that is not an added token yet, as a special one
        declared = [_as_dict(t) for _, t in sorted(((int(i), t) for i, t in
                                                    (config.get("added_tokens_decoder") or {}).items()),
                                                   key=lambda it: it[0])]
        if not declared:  # older folders: special_tokens_map.json over the config, tokenizer.json's added tokens
            config.update(_read_json(folder / "special_tokens_map.json"))
            declared = [_as_dict(t) for _, t in sorted(self._tokenizer.get_added_tokens_decoder().items())]
        named = {name: config[name] for name in SPECIAL_NAMES if _content(config.get(name)) is not None}
        extra = config.get("extra_special_tokens") or config.get("additional_special_tokens") or []
        extra = [t for t in (extra.values() if isinstance(extra, dict) else extra) if _content(t) is not None]
        self._special = {name: _content(token) for name, token in named.items()}
        self.extra_special_tokens = [_content(t) for t in extra]
        for name in SPECIAL_NAMES:  # bos_token, bos_token_id, ...: None where the model has none
            setattr(self, name, self._special.get(name))
        added = [{**t, "special": True} if t["content"] in self._special.values() else t for t in declared]
        present = ({t.content for t in self._tokenizer.get_added_tokens_decoder().values()}
                   | {t["content"] for t in added})
        for token in list(named.values()) + extra:
            if _content(token) not in present:
                added.append({**_as_dict(token), "special": True})
                present.add(_content(token))
        if added:
            self._tokenizer.add_tokens([_added_token(t) for t in added])
        for name in SPECIAL_NAMES:
            token = self._special.get(name)
            setattr(self, f"{name}_id", None if token is None else self.convert_tokens_to_ids(token))

    # ---- special tokens --------------------------------------------------------------------------------------

    @property
    def special_tokens_map(self) -> dict[str, str]:
        """The named special tokens (bos_token, eos_token, ...), as a chat template sees them."""
        return dict(self._special)

    def convert_tokens_to_ids(self, token: str) -> int | None:
        return self._tokenizer.token_to_id(token)

    def __len__(self) -> int:
        return self._tokenizer.get_vocab_size(with_added_tokens=True)

    # ---- encoding --------------------------------------------------------------------------------------------

    def __call__(self, text: str | list[str], add_special_tokens: bool = True, return_offsets_mapping: bool = False):
        """{"input_ids", "attention_mask"(, "offset_mapping")} of one text or a list of texts."""
        batch = not isinstance(text, str)
        encodings = self._tokenizer.encode_batch(list(text) if batch else [text], add_special_tokens=add_special_tokens)
        out = {"input_ids": [e.ids for e in encodings], "attention_mask": [e.attention_mask for e in encodings]}
        if return_offsets_mapping:
            out["offset_mapping"] = [e.offsets for e in encodings]
        return out if batch else {k: v[0] for k, v in out.items()}

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return self._tokenizer.encode(text, add_special_tokens=add_special_tokens).ids

    def decode(self, ids, skip_special_tokens: bool = False, clean_up_tokenization_spaces: bool | None = None) -> str:
        text = self._tokenizer.decode([ids] if isinstance(ids, int) else list(ids),
                                      skip_special_tokens=skip_special_tokens)
        if clean_up_tokenization_spaces is None:
            clean_up_tokenization_spaces = self.clean_up_tokenization_spaces
        # transformers never cleans a BPE tokenizer's output (it would strip real spaces before punctuation)
        if clean_up_tokenization_spaces and type(self._tokenizer.model).__name__ != "BPE":
            for before, after in ((" .", "."), (" ?", "?"), (" !", "!"), (" ,", ","), (" ' ", "'"), (" n't", "n't"),
                                  (" 'm", "'m"), (" 's", "'s"), (" 've", "'ve"), (" 're", "'re")):
                text = text.replace(before, after)
        return text

    # ---- chat template ---------------------------------------------------------------------------------------

    def get_chat_template(self, chat_template: str | None = None, tools: list | None = None) -> str:
        """The template to render: ``chat_template`` (a template, or a name when the model has several), else the
        model's (its "tool_use" one when tools are given, else its "default")."""
        if isinstance(self.chat_template, dict):
            if chat_template in self.chat_template:
                return self.chat_template[chat_template]
            if chat_template is None:
                if tools is not None and "tool_use" in self.chat_template:
                    return self.chat_template["tool_use"]
                if "default" in self.chat_template:
                    return self.chat_template["default"]
                raise ValueError(f"this model has several chat templates ({', '.join(sorted(self.chat_template))}) "
                                 "and none is the default")
        if chat_template is None:
            if self.chat_template is None:
                raise ValueError("this tokenizer has no chat template")
            return self.chat_template
        return chat_template

    def apply_chat_template(self, conversation: list[dict], tools: list[dict] | None = None,
                            documents: list[dict] | None = None, chat_template: str | None = None,
                            add_generation_prompt: bool = False, tokenize: bool = True, **kwargs):
        """The conversation rendered by the chat template (``tokenize=False``), or its token ids."""
        if not conversation:
            raise ValueError("Cannot apply chat template to an empty conversation. Provide at least one message.")
        template = self.get_chat_template(chat_template, tools)
        messages = _alias_reasoning(_plain([{k: v for k, v in dict(m).items() if v is not None}
                                            for m in conversation]))
        text = _compile(template).render(
            messages=messages, tools=_plain(list(tools) if tools is not None else None), documents=_plain(documents),
            add_generation_prompt=add_generation_prompt, **_plain({**self.special_tokens_map, **kwargs}))
        return self.encode(text, add_special_tokens=False) if tokenize else text


def _plain(value):
    """What a template may see: JSON-like data rebuilt from plain types (transformers' _plain_template_data)."""
    if value is None or type(value) in (str, int, float, bool):
        return value
    if isinstance(value, str):
        return str.__str__(value)
    if isinstance(value, int):
        return int.__int__(value)
    if isinstance(value, float):
        return float.__float__(value)
    if isinstance(value, Mapping):
        return {_plain(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, tuple):
        return tuple(_plain(v) for v in value)
    return f"<{type(value).__name__}>"


def _alias_reasoning(messages: list[dict]) -> list[dict]:
    """A turn's reasoning under every name templates read it by (``reasoning_content``, and ``thinking``)."""
    out = []
    for m in messages:
        reasoning = next((m[k] for k in REASONING_FIELDS if m.get(k) is not None), None)
        out.append(m if reasoning is None else {"thinking": reasoning, **m, "reasoning_content": reasoning})
    return out


@functools.lru_cache(maxsize=16)
def _compile(template: str):
    """The template compiled in transformers' environment (sandboxed, trim_blocks, lstrip_blocks, loopcontrols, its
    globals and tojson); ``{% generation %}`` blocks render their body."""
    import jinja2
    import jinja2.ext
    import jinja2.nodes
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class Generation(jinja2.ext.Extension):
        tags = {"generation"}

        def parse(self, parser):
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
            return jinja2.nodes.CallBlock(self.call_method("_body"), [], [], body).set_lineno(lineno)

        def _body(self, caller):
            return caller()

    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    class TemplateDict:
        def __call__(self, *args, **kwargs):
            return dict(*args, **kwargs)

        def fromkeys(self, *args, **kwargs):
            return dict.fromkeys(*args, **kwargs)

    class TemplateNamespace(jinja2.utils.Namespace):
        def __init__(*args, **kwargs):
            self, args = args[0], args[1:]
            attrs = dict(*args, **kwargs)
            for name in attrs:
                TemplateNamespace._check_name(name)
            jinja2.utils.Namespace.__init__(self, attrs)

        def __setitem__(self, name, value):
            TemplateNamespace._check_name(name)
            jinja2.utils.Namespace.__setitem__(self, name, value)

        @staticmethod
        def _check_name(name):
            if isinstance(name, str) and name.startswith("_"):
                raise jinja2.exceptions.SecurityError(
                    f"Chat templates cannot store underscore-prefixed attributes on a namespace, but got {name!r}")

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=[Generation, jinja2.ext.loopcontrols])
    env.filters["tojson"] = tojson
    env.globals.update(raise_exception=raise_exception, strftime_now=lambda fmt: datetime.now().strftime(fmt),
                       dict=TemplateDict(), namespace=TemplateNamespace)
    return env.from_string(template)


@functools.lru_cache(maxsize=4)
def _load(folder: str, mtime: float) -> ChatTokenizer:
    return ChatTokenizer(folder)


def load(folder: str | Path) -> ChatTokenizer:
    """The tokenizer of a model folder, read once per version of its tokenizer.json (a few kept)."""
    path = Path(folder)
    try:
        mtime = (path / "tokenizer.json").stat().st_mtime
    except OSError:
        raise TokenizerError(f"{path.name} has no tokenizer.json, so its tokenizer cannot be read without "
                             "transformers") from None
    return _load(str(path), mtime)
