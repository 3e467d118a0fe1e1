"""The one reader of safetensors headers, without torch: 8 bytes little-endian length, then that much JSON.

    read_header(path)        the tensors of one file, checked against the format (SafetensorsError if not)
    read_folder(folder)      the tensors of every *.safetensors in a folder (sharded checkpoints too)
    parse_json(raw)          json.loads that answers ValueError for any malformed input

Used to check an uploaded adapter against its base (studio.adapter_check) and to read a model's linear layers
(studio.catalog). No tensor data is read.
"""
from __future__ import annotations

import json
from pathlib import Path

# bytes per element of each safetensors dtype (the format's own list)
SAFETENSORS_DTYPES = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1, "I16": 2, "U16": 2, "F16": 2,
                      "BF16": 2, "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8}
MAX_HEADER_BYTES = 100 * 1024 * 1024       # the safetensors format caps its header at 100 MB


class SafetensorsError(ValueError):
    """A file that is not a valid safetensors file; the message is one human sentence naming it."""


def is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def parse_json(raw: bytes | str):
    """json.loads that answers ValueError for any malformed input, nesting too deep for the parser included."""
    try:
        return json.loads(raw)
    except RecursionError:
        raise ValueError("nested too deeply") from None
    except UnicodeDecodeError:
        raise ValueError("not UTF-8") from None


def tensor_problem(info) -> str | None:
    """Why one tensor entry of a safetensors header is malformed, or None."""
    if not isinstance(info, dict):
        return "an entry that is not an object"
    dtype, shape, offsets = info.get("dtype"), info.get("shape"), info.get("data_offsets")
    if not isinstance(dtype, str) or dtype not in SAFETENSORS_DTYPES:
        return f"an unknown dtype {str(dtype)[:20]!r}"
    if not isinstance(shape, list) or not all(is_int(n) and n >= 0 for n in shape):
        return "a shape that is not a list of sizes"
    if (not isinstance(offsets, list) or len(offsets) != 2 or not all(is_int(n) for n in offsets)
            or not 0 <= offsets[0] <= offsets[1]):
        return "data_offsets that are not [begin, end]"
    count = 1
    for n in shape:
        count *= n
    if offsets[1] - offsets[0] != count * SAFETENSORS_DTYPES[dtype]:
        return "data_offsets that do not match the shape and dtype"
    return None


def read_header(path: Path, validate: bool = True) -> dict[str, dict]:
    """The tensors of a safetensors file (``__metadata__`` left out): a bounded JSON object after the 8-byte
    length. ``validate`` also checks every entry against the format (known dtype, list shape, [begin, end]
    offsets of the right size) and that the data lies in the file; without it only the header is read, as a
    model's layer names need. Raises SafetensorsError."""
    path = Path(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as fh:
            prefix = fh.read(8)
            length = int.from_bytes(prefix, "little")
            if len(prefix) != 8 or not 2 <= length <= min(MAX_HEADER_BYTES, size - 8):
                raise ValueError("bad header length")
            header = parse_json(fh.read(length))
    except (OSError, ValueError):
        raise SafetensorsError(f"{path.name} is not a valid safetensors file") from None
    if not isinstance(header, dict):
        raise SafetensorsError(f"{path.name} is not a valid safetensors file (its header is not a JSON object)")
    tensors = {k: v for k, v in header.items() if k != "__metadata__"}
    if not validate:
        return tensors
    for key, info in tensors.items():
        problem = tensor_problem(info)
        if problem:
            raise SafetensorsError(f"{path.name} is not a valid safetensors file: {key[:80]!r} has {problem}")
    end = max((v["data_offsets"][1] for v in tensors.values()), default=0)
    if 8 + length + end > size:
        raise SafetensorsError(f"{path.name} is cut short: its header promises more data than the file holds")
    return tensors


def read_folder(folder: Path) -> dict[str, dict]:
    """The tensors of every ``*.safetensors`` in ``folder``, in file-name order. Raises SafetensorsError."""
    out: dict[str, dict] = {}
    for path in sorted(Path(folder).glob("*.safetensors")):
        out.update(read_header(path))
    return out
