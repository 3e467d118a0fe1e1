"""Fuzz the three parsers that take user files: the dataset reader (``studio.library.inspect``), the job-file
loader (``JobSpec.from_yaml``) and the adapter importer (``studio.adapter_import.import_adapter``).

Inputs come from hypothesis: generated from scratch, and mutations of valid seeds (JSONL / CSV / JSON rows, a
job file, a LoRA adapter of a tiny random model, as files and as a zip). Each parser may answer only with its
own error type (DatasetError, SpecError, AdapterError); anything else is a failure, counted once per
(exception type, place in the studio's code).

    python bench/fuzz.py --minutes 2 [--target datasets|spec|adapters ...]

tests/test_fuzz.py runs a short, derandomized pass of the same targets.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import struct
import sys
import tempfile
import time
import traceback
import uuid
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from hypothesis import HealthCheck, given, seed, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

# ---- generic pieces ----------------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats() | st.text(max_size=24),
    lambda kids: st.lists(kids, max_size=5) | st.dictionaries(st.text(max_size=12), kids, max_size=5),
    max_leaves=12)


def _apply_edits(seed_bytes: bytes, edits: list[tuple[int, int, bytes]]) -> bytes:
    """Byte-level mutation: each edit (kind, position, bytes) flips, inserts, deletes or overwrites."""
    data = bytearray(seed_bytes)
    for kind, pos, chunk in edits:
        pos = pos % (len(data) + 1)
        if kind == 0 and data:
            data[pos % len(data)] ^= chunk[0] or 1
        elif kind == 1:
            data[pos:pos] = chunk
        elif kind == 2:
            del data[pos:pos + len(chunk)]
        else:
            data[pos:pos + len(chunk)] = chunk
    return bytes(data)


def mutations(seed_bytes: bytes, alphabet: bytes = b"") -> st.SearchStrategy[bytes]:
    """A few byte edits of ``seed_bytes``; ``alphabet`` biases inserted bytes towards a format's syntax."""
    chunk = st.binary(min_size=1, max_size=8)
    if alphabet:
        chunk = chunk | st.lists(st.sampled_from(alphabet), min_size=1, max_size=8).map(bytes)
    edit = st.tuples(st.integers(0, 3), st.integers(0, max(len(seed_bytes), 1) * 2), chunk)
    return st.lists(edit, min_size=1, max_size=6).map(lambda edits: _apply_edits(seed_bytes, edits))


def patched(seed_dict: dict, extra_keys: list[str] = ()) -> st.SearchStrategy[dict]:
    """``seed_dict`` with some values replaced by arbitrary JSON values and some keys dropped."""
    keys = st.sampled_from(sorted(seed_dict) + list(extra_keys))
    return st.tuples(st.dictionaries(keys, json_values, max_size=4), st.lists(keys, max_size=2)).map(
        lambda p: {k: v for k, v in {**seed_dict, **p[0]}.items() if k not in p[1]})


@dataclass
class Target:
    """One parser: how to build its inputs and how to feed it one; ``allowed`` is its own error type."""
    name: str
    inputs: Callable[["Context"], st.SearchStrategy]
    feed: Callable[["Context", Any], None]
    allowed: Callable[[], type[Exception]]


@dataclass
class Context:
    work: Path                      # scratch folder; STUDIO_HOME lives under it
    base_model: str = ""            # the tiny model the adapter seeds were trained on
    seeds: dict[str, Any] = field(default_factory=dict)


# ---- datasets ----------------------------------------------------------------------------------

DATASET_ROWS = [
    {"messages": [{"role": "user", "content": "Hi there"}, {"role": "assistant", "content": "Hello!"}]},
    {"prompt": "What is 2+2?", "completion": "4"},
    {"instruction": "Say hi", "input": "", "output": "hi"},
    {"text": "A plain line of text."},
    {"prompt": "Pick one", "chosen": "good", "rejected": "bad"},
]
CSV_SEED = b'prompt,completion\n"What is 2+2?",4\nHello,"Hi, there"\n"multi\nline",ok\n'
JSONL_ALPHABET = b'{}[]":,\\\n 0123456789.-eE'
CSV_ALPHABET = b',"\n\r\t;|\\ \xef\xbb\xbf'


def dataset_inputs(ctx: Context) -> st.SearchStrategy[tuple[str, bytes, bool]]:
    from studio.datasets import EXTENSIONS

    jsonl = b"\n".join(json.dumps(r).encode() for r in DATASET_ROWS) + b"\n"
    as_json = json.dumps(DATASET_ROWS[:2]).encode()
    rows = st.lists(st.sampled_from(DATASET_ROWS).flatmap(lambda r: patched(r, ["messages", "text", "role"])),
                    min_size=1, max_size=6)
    generated = st.one_of(
        st.tuples(st.just(".jsonl"), rows.map(lambda rs: b"\n".join(json.dumps(r).encode() for r in rs))),
        st.tuples(st.just(".json"), rows.map(lambda rs: json.dumps(rs).encode())),
        st.tuples(st.just(".jsonl"), st.lists(json_values, max_size=4).map(
            lambda vs: b"\n".join(json.dumps(v).encode() for v in vs))),
        st.tuples(st.sampled_from(EXTENSIONS), st.binary(max_size=300)),
        st.tuples(st.sampled_from((".csv", ".tsv", ".txt")), st.text(max_size=200).map(str.encode)),
    )
    mutated = st.one_of(
        st.tuples(st.just(".jsonl"), mutations(jsonl, JSONL_ALPHABET)),
        st.tuples(st.just(".json"), mutations(as_json, JSONL_ALPHABET)),
        st.tuples(st.sampled_from((".csv", ".tsv")), mutations(CSV_SEED, CSV_ALPHABET)),
        st.tuples(st.just(".parquet"), mutations(ctx.seeds["parquet"])),
    )
    return st.tuples(st.one_of(generated, mutated), st.booleans()).map(lambda t: (t[0][0], t[0][1], t[1]))


def feed_dataset(ctx: Context, value: tuple[str, bytes, bool]) -> None:
    from studio import library

    ext, data, drop_bad = value
    path = ctx.work / f"upload{ext}"
    path.write_bytes(data)
    library.inspect(path, drop_bad=drop_bad)


def _dataset_error() -> type[Exception]:
    from studio.datasets import DatasetError

    return DatasetError


def parquet_seed() -> bytes:
    import pyarrow as pa
    import pyarrow.parquet as pq

    out = io.BytesIO()
    pq.write_table(pa.Table.from_pylist([{"prompt": "What is 2+2?", "completion": "4"},
                                         {"prompt": "Hi", "completion": "Hello"}]), out)
    return out.getvalue()


# ---- job files -----------------------------------------------------------------------------------

YAML_ALPHABET = b"{}[]:,-#&*!|>'\"%@`?\n \t0123456789.eE~"


def spec_inputs(ctx: Context) -> st.SearchStrategy[str]:
    from studio.spec import JobSpec

    import yaml

    valid = JobSpec(dataset="tiny-data", name="fuzzed").to_dict()
    text = yaml.safe_dump(valid, sort_keys=False).encode()
    return st.one_of(
        st.text(max_size=300),
        patched(valid, ["nonsense", "learning_rat"]).map(lambda d: yaml.safe_dump(d, sort_keys=False)),
        mutations(text, YAML_ALPHABET).map(lambda b: b.decode("utf-8", "replace")),
    )


def feed_spec(ctx: Context, text: str) -> None:
    from studio.spec import JobSpec

    JobSpec.from_yaml(text)


def _spec_error() -> type[Exception]:
    from studio.spec import SpecError

    return SpecError


# ---- adapters ------------------------------------------------------------------------------------

SAFETENSORS_FIELDS = ["dtype", "shape", "data_offsets"]


def _safetensors_parts(raw: bytes) -> tuple[dict, bytes]:
    (length,) = struct.unpack("<Q", raw[:8])
    return json.loads(raw[8:8 + length]), raw[8 + length:]


def _safetensors(header: dict, data: bytes, length_delta: int = 0) -> bytes:
    text = json.dumps(header).encode()
    return struct.pack("<Q", max(len(text) + length_delta, 0)) + text + data


def adapter_inputs(ctx: Context) -> st.SearchStrategy[tuple[bool, dict[str, bytes]]]:
    config = json.loads(ctx.seeds["adapter_config.json"])
    header, data = _safetensors_parts(ctx.seeds["adapter_model.safetensors"])
    tensor = sorted(k for k in header if k != "__metadata__")[0]
    configs = st.one_of(patched(config, ["r", "lora_alpha", "target_modules", "rank_pattern", "peft_type"]).map(
        lambda c: json.dumps(c).encode()), mutations(ctx.seeds["adapter_config.json"], JSONL_ALPHABET))
    headers = st.one_of(
        patched(header[tensor], SAFETENSORS_FIELDS).map(lambda entry: {**header, tensor: entry}),
        patched(header, ["__metadata__", "x.lora_A.weight"]),
    )
    weights = st.one_of(
        st.tuples(headers, st.integers(-3, 3)).map(lambda h: _safetensors(h[0], data, h[1])),
        mutations(ctx.seeds["adapter_model.safetensors"][:4096]).map(
            lambda head: head + ctx.seeds["adapter_model.safetensors"][4096:]),
    )
    files = st.fixed_dictionaries({"adapter_config.json": st.just(ctx.seeds["adapter_config.json"]) | configs,
                                   "adapter_model.safetensors": st.just(ctx.seeds["adapter_model.safetensors"])
                                   | weights})
    zipped = st.tuples(files, st.just(None)).map(lambda t: {"upload.zip": _zip(t[0])})
    broken_zip = mutations(_zip({k: ctx.seeds[k] for k in ("adapter_config.json", "adapter_model.safetensors")}),
                           ).map(lambda z: {"upload.zip": z})
    seed_files = {k: ctx.seeds[k] for k in ("adapter_config.json", "adapter_model.safetensors")}
    name = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), min_size=1,
                   max_size=40)  # zip names end at NUL and are UTF-8
    odd_names = st.lists(name, min_size=1, max_size=4).map(
        lambda names: {"upload.zip": _zip({**seed_files, **{n: b"x" for n in names}})})
    return st.one_of(files, zipped, broken_zip, odd_names, st.binary(max_size=200).map(lambda b: {"upload.zip": b}))


def _zip(files: dict[str, bytes]) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    return out.getvalue()


def feed_adapter(ctx: Context, files: dict[str, bytes]) -> None:
    from studio import adapter_import, adapter_library

    upload = ctx.work / f"upload-{uuid.uuid4().hex[:8]}"
    upload.mkdir()
    try:
        for name, data in files.items():
            (upload / name).write_bytes(data)
        name = f"fuzz-{uuid.uuid4().hex[:8]}"
        adapter_import.import_adapter([str(upload / n) for n in files], name, ctx.base_model)
        adapter_library.delete_import(name)
    finally:
        shutil.rmtree(upload, ignore_errors=True)


def _adapter_error() -> type[Exception]:
    from studio.adapter_library import AdapterError

    return AdapterError


TARGETS = {
    "datasets": Target("datasets", dataset_inputs, feed_dataset, _dataset_error),
    "spec": Target("spec", spec_inputs, feed_spec, _spec_error),
    "adapters": Target("adapters", adapter_inputs, feed_adapter, _adapter_error),
}


def adapter_seeds(base_dir: Path, work: Path) -> dict[str, bytes]:
    sys.path.insert(0, str(ROOT / "tests"))
    from adapter_fixtures import make_adapter

    folder = make_adapter(base_dir, work / "seed-adapter", 1)
    return {n: (folder / n).read_bytes() for n in ("adapter_config.json", "adapter_model.safetensors")}


# ---- running -------------------------------------------------------------------------------------

HYPOTHESIS = dict(deadline=None, database=None, suppress_health_check=list(HealthCheck), print_blob=False)


def failure_key(exc: BaseException) -> str:
    """Exception type and the deepest frame in the studio's own code (else the deepest frame)."""
    frames = traceback.extract_tb(exc.__traceback__)
    own = [f for f in frames if str(ROOT / "studio") in f.filename] or frames
    where = f"{Path(own[-1].filename).relative_to(ROOT) if own[-1].filename.startswith(str(ROOT)) else own[-1].filename}" \
            f":{own[-1].lineno} {own[-1].name}" if own else "?"
    return f"{type(exc).__name__} at {where}"


def run_for(target: Target, ctx: Context, seconds: float) -> tuple[int, dict[str, tuple[str, Any]]]:
    """Feed generated inputs to one parser for ``seconds``; returns (inputs tried, failures by key)."""
    allowed = target.allowed()
    strategy = target.inputs(ctx)
    tried, failures = 0, {}
    deadline = time.time() + seconds

    @settings(max_examples=200, **HYPOTHESIS)
    @given(strategy)
    def batch(value):
        nonlocal tried
        if time.time() > deadline:
            return
        tried += 1
        try:
            target.feed(ctx, value)
        except allowed:
            pass
        except Exception as exc:  # noqa: BLE001 - every other exception is what the fuzzer looks for
            failures.setdefault(failure_key(exc), (f"{type(exc).__name__}: {str(exc)[:200]}", value))

    round_ = 0
    while time.time() < deadline:
        seed(round_)(batch)()
        round_ += 1
    return tried, failures


def make_context(work: Path, need_adapter: bool) -> Context:
    home = work / "studio-home"
    os.environ["STUDIO_HOME"] = str(home)
    os.environ["STUDIO_MODEL_ROOTS"] = str(work)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from studio import settings as studio_settings

    studio_settings.reset_settings()
    ctx = Context(work=work, seeds={"parquet": parquet_seed()})
    if need_adapter:
        sys.path.insert(0, str(ROOT / "tests"))
        from tiny import build_tiny_model

        base = build_tiny_model(work / "tiny-base")
        ctx.base_model = str(base)
        ctx.seeds.update(adapter_seeds(base, work))
    return ctx


def save_reproducer(target: str, key: str, value: Any, out: Path) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    stem = out / f"{target}-{abs(hash(key)) % 10**8:08d}"
    if target == "datasets":
        path = stem.with_suffix(value[0])
        path.write_bytes(value[1])
    elif target == "spec":
        path = stem.with_suffix(".yaml")
        path.write_text(value, errors="surrogatepass")
    else:
        path = stem.with_suffix(".zip")
        path.write_bytes(_zip(value))
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=1.0, help="minutes per parser")
    parser.add_argument("--target", action="append", choices=list(TARGETS), help="parsers to fuzz (default: all)")
    parser.add_argument("--save", type=Path, default=None, help="write one reproducer file per failure here")
    args = parser.parse_args(argv)
    names = args.target or list(TARGETS)
    total = 0
    with tempfile.TemporaryDirectory(prefix="studio-fuzz-") as tmp:
        ctx = make_context(Path(tmp), "adapters" in names)
        for name in names:
            tried, failures = run_for(TARGETS[name], ctx, args.minutes * 60)
            total += len(failures)
            print(f"{name}: {tried} inputs, {len(failures)} distinct failures", flush=True)
            for key, (message, value) in sorted(failures.items()):
                saved = f" -> {save_reproducer(name, key, value, args.save)}" if args.save else ""
                print(f"  {key}: {message}{saved}", flush=True)
    return 1 if total else 0


if __name__ == "__main__":
    raise SystemExit(main())
