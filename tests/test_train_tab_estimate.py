"""The Train tab's memory estimate follows every field it reads. The fields it recomputes on (ESTIMATE_INPUTS)
come from the spec's field metadata (``estimate=True``); here a JobSpec that records each field read from it
runs through the estimate the form shows, for every method, adapter type and quantisation, on a GPU and on a
CPU worker, and the fields it read must be exactly those; the built form recomputes the estimate on a change
of each."""
import itertools
import os
import socket
from dataclasses import fields

import pytest

from studio.adapter_types import PEFT_TYPES
from studio.method_info import METHOD_INFO
from studio.spec import JobSpec

SPEC_FIELDS = {f.name for f in fields(JobSpec)}


def recording_spec(reads: set[str]):
    """A JobSpec class whose instances add to ``reads`` the name of every field read from them."""

    class Recording(JobSpec):
        def __getattribute__(self, name):
            if name in SPEC_FIELDS:
                reads.add(name)
            return object.__getattribute__(self, name)

    return Recording


VARIANTS = [dict(method=m, peft_type=p, **q) for m, p, q in itertools.product(
    METHOD_INFO, PEFT_TYPES, (dict(load_in_4bit=True), dict(load_in_4bit=False),
                              dict(load_in_4bit=False, load_in_8bit=True)))]
VARIANTS += [dict(dequant_cache=d, padding_free=f, precision=p)
             for d, f, p in itertools.product(("auto", "on", "off"), ("auto", "on", "off"), ("auto", "fp32"))]


def read_by_the_estimate(shown) -> set[str]:
    """The spec fields ``shown(spec)`` reads over every variant."""
    reads: set[str] = set()
    cls = recording_spec(reads)
    for variant in VARIANTS:
        spec = cls(dataset="d", reward_answer="boxed", **variant)
        text = shown(spec)
        assert "Estimated peak memory" in text, (variant, text)
    return reads


def test_the_estimate_inputs_are_the_fields_the_estimate_reads(studio_home):
    from studio import db
    from studio.ui.train_tab import ESTIMATE_INPUTS, estimate_markdown

    assert len(ESTIMATE_INPUTS) == len(set(ESTIMATE_INPUTS))
    read = read_by_the_estimate(estimate_markdown)  # no worker: estimated for a CUDA GPU
    db.register_worker(id=f"{socket.gethostname()}:{os.getpid()}", host=socket.gethostname(), pid=os.getpid(),
                       device="cpu", device_name="CPU", memory_gb=64.0, gpu_count=0, bf16=False)
    read |= read_by_the_estimate(estimate_markdown)  # for the CPU worker: its precision, batching, dequant cache
    assert read - set(ESTIMATE_INPUTS) == set(), "the estimate reads these, but the form does not recompute on them"
    assert set(ESTIMATE_INPUTS) - read == set(), "the form recomputes on these, but the estimate never reads them"
    for name in ("precision", "padding_free", "dequant_cache", "use_dora", "lora_dropout",
                 "bnb_4bit_use_double_quant"):  # the six the hand-kept list once missed
        assert name in ESTIMATE_INPUTS, name


def test_a_change_of_any_estimate_input_recomputes_the_estimate():
    import gradio as gr

    from studio.ui import train_tab

    with gr.Blocks() as blocks:
        with gr.Tabs():
            built = train_tab.build()
    ids = {c._id: name for name, c in built["components"].items()}
    estimate = built["estimate"]._id
    triggers = {ids.get(block) for f in blocks.fns.values() if f.name == "on_estimate"
                and [c._id for c in f.outputs] == [estimate] for block, event in f.targets if event == "change"}
    assert set(train_tab.ESTIMATE_INPUTS) <= triggers, set(train_tab.ESTIMATE_INPUTS) - triggers


@pytest.mark.parametrize("name,value", [("precision", "bf16"), ("padding_free", "off"), ("dequant_cache", "on"),
                                        ("use_dora", True), ("lora_dropout", 0.0),
                                        ("bnb_4bit_use_double_quant", False)])
def test_the_estimate_shown_changes_with_fields_once_missed(studio_home, name, value):
    """The Train form's handler, as gradio calls it: one field changed, the text it shows changes."""
    from studio import db
    from studio.ui import form, train_tab

    db.register_worker(id=f"{socket.gethostname()}:{os.getpid()}", host=socket.gethostname(), pid=os.getpid(),
                       device="cpu", device_name="CPU", memory_gb=64.0, gpu_count=0, bf16=False)
    names = [f.name for f in fields(JobSpec)]
    before = form.values_from_spec(names, JobSpec(dataset="d"))
    after = form.values_from_spec(names, JobSpec(dataset="d", **{name: value}))
    assert train_tab.on_estimate(names, *before) != train_tab.on_estimate(names, *after), name
