"""A short, reproducible fuzz pass over the three parsers that take user files (bench/fuzz.py runs them
longer): whatever the input, each answers with its own error type or not at all."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
from hypothesis import given, settings

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
import fuzz  # noqa: E402

EXAMPLES = {"datasets": 1000, "spec": 600, "adapters": 400}


@pytest.fixture
def fuzz_context(studio_home, tmp_path) -> fuzz.Context:
    return fuzz.Context(work=tmp_path, seeds={"parquet": fuzz.parquet_seed()})


@pytest.fixture
def adapter_context(fuzz_context, tiny_model_dir) -> fuzz.Context:
    fuzz_context.base_model = str(tiny_model_dir)
    fuzz_context.seeds.update(fuzz.adapter_seeds(tiny_model_dir, fuzz_context.work))
    return fuzz_context


def _fuzz(name: str, ctx: fuzz.Context) -> None:
    target = fuzz.TARGETS[name]
    allowed = target.allowed()

    @settings(max_examples=EXAMPLES[name], derandomize=True, **fuzz.HYPOTHESIS)
    @given(target.inputs(ctx))
    def parse(value):
        try:
            target.feed(ctx, value)
        except allowed:
            pass

    parse()


def test_the_dataset_reader_answers_only_with_dataset_errors(fuzz_context):
    _fuzz("datasets", fuzz_context)


def test_the_job_file_loader_answers_only_with_spec_errors(fuzz_context):
    _fuzz("spec", fuzz_context)


def test_the_adapter_importer_answers_only_with_adapter_errors(adapter_context, studio_home):
    _fuzz("adapters", adapter_context)
    assert not list((studio_home / "tmp").iterdir())  # no staging folder survives a refused import
