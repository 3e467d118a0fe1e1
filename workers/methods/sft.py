"""SFT: TRL's SFTTrainer on conversations and text, tokenised by the studio (assistant-only loss masks,
padding-free or length-grouped batches, the loss from the full logits on CPU)."""
from __future__ import annotations

import functools
import logging
import time
from pathlib import Path

from .base import WorkerMethod, datasets

log = logging.getLogger("studio.train")

PACKED_KERNELS = ("flex_attention", "flash_attention_2")


def prepare(spec, kind: str, rows: list[dict]) -> tuple[str, list[dict]]:
    """Rows supervised fine-tuning can train: conversations and text as they are, the desirable replies of
    unpaired preference rows; prompt-only rows have no reply to learn."""
    from studio.datasets import sft_rows

    if kind == "prompt_only":
        raise ValueError("this dataset holds prompts without replies (prompt-only): SFT has nothing to learn from it")
    rows, note = sft_rows(kind, rows)
    if note:
        log.info(note)
    return ("chat" if kind == "unpaired_preference" else kind), rows


def sft_config(spec, output_dir: Path, n_train: int, has_eval: bool, device: str | None = None):
    from trl import SFTConfig

    from workers.arguments import common_args

    return SFTConfig(
        max_length=spec.max_length,
        dataset_kwargs={"skip_prepare_dataset": False},
        **common_args(spec, output_dir, n_train, has_eval, device),
    )


@functools.cache
def trainer_class():
    """StudioSFTTrainer, built on first use so that importing the registry does not import TRL."""
    import collections

    import torch
    from transformers import Trainer
    from trl import SFTTrainer

    class OwnMetrics(Trainer):
        """Logs the metrics the studio computes itself (``own_metrics``: mode -> name -> values, averaged per log)
        through Trainer.log, the override point transformers documents. StudioSFTTrainer's bases put this class
        after TRL's SFTTrainer and before transformers' Trainer, so TRL's ``log`` adds its own metrics and hands the
        logs on (``super().log``) to this one, whose values replace a TRL metric of the same name."""

        def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
            mode = "train" if self.model.training else "eval"
            own = {("eval_" if mode == "eval" else "") + key: sum(values) / len(values)
                   for key, values in self.own_metrics[mode].items() if values}
            self.own_metrics[mode].clear()
            logs.update(own)
            super().log(logs, start_time)

    class StudioSFTTrainer(SFTTrainer, OwnMetrics):
        """TRL's SFTTrainer; with padding-free batches it counts real tokens, not the 4-D mask's cells, and on
        CPU it takes the loss from the full logits (faster there than TRL's chunked lm_head). The token count
        (``num_tokens``, which the Runs chart turns into tokens/s) and the token accuracy of its own loss are
        computed here and logged through OwnMetrics, never written into TRL's state.

        ``batching``: the spec's batching mode; ``chunked``: TRL's fused, chunked loss."""

        def __init__(self, *args, batching: str = "random", chunked: bool = False, **kwargs):
            self.batching, self.chunked = batching, chunked
            self.tokens_trained = 0  # real (non-padding) tokens of the training batches so far
            self.own_metrics = {"train": collections.defaultdict(list), "eval": collections.defaultdict(list)}
            super().__init__(*args, **kwargs)

        def _get_train_sampler(self, train_dataset=None):
            dataset = train_dataset if train_dataset is not None else self.train_dataset
            if self.batching != "grouped" or dataset is None:
                return super()._get_train_sampler(train_dataset)
            from workers.batching import LengthGroupedSampler

            return LengthGroupedSampler([len(x) for x in dataset["input_ids"]],
                                        self.args.per_device_train_batch_size, self.args.data_seed or self.args.seed)

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            if self.chunked:
                return self._fused_loss(model, inputs, return_outputs, num_items_in_batch)
            return self._logits_loss(model, inputs, return_outputs, num_items_in_batch)

        def _fused_loss(self, model, inputs, return_outputs, num_items_in_batch):
            """TRL's own loss (a fused, chunked lm_head + log-softmax) and metrics; padding-free rows (a 4-D block
            mask, whose cells TRL would count as tokens) count their real tokens here instead."""
            mask = inputs.get("attention_mask")
            if mask is None or mask.dim() != 4:
                return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            mode = "train" if model.training else "eval"
            out = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            if mode == "train":
                self.tokens_trained += int(inputs["input_ids"].numel())
            self.own_metrics[mode]["num_tokens"] = [self.tokens_trained]
            return out

        def _logits_loss(self, model, inputs, return_outputs, num_items_in_batch):
            """The same token-mean cross-entropy from the full logits in fp32, and TRL's token accuracy and
            token count (no entropy: it needs a second softmax over the vocabulary)."""
            mode = "train" if model.training else "eval"
            labels = inputs["labels"]
            inputs = {k: v for k, v in inputs.items() if k != "labels"} | {"use_cache": False}
            outputs = model(**inputs)
            # prompt tuning returns logits for its virtual tokens first: keep the positions of the input
            logits = outputs.logits[:, -labels.size(1):-1].float()
            target = labels[:, 1:].to(logits.device)
            valid = target != -100
            loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.size(-1)), target.reshape(-1),
                                                     ignore_index=-100, reduction="sum")
            count = valid.sum() if num_items_in_batch is None else num_items_in_batch
            loss = loss / torch.as_tensor(count, device=loss.device).clamp(min=1)
            if self.args.average_tokens_across_devices and num_items_in_batch is not None:
                loss = loss * self.accelerator.num_processes  # DDP averages gradients, as in TRL
            with torch.no_grad():
                n = self.accelerator.gather_for_metrics(valid.sum()).sum()
                correct = self.accelerator.gather_for_metrics(((logits.argmax(-1) == target) & valid).sum()).sum()
                self.own_metrics[mode]["mean_token_accuracy"].append((correct / n).item() if n > 0 else 0.0)
            if mode == "train":
                mask = inputs.get("attention_mask")
                real = inputs["input_ids"].numel() if mask is None or mask.dim() == 4 else mask.sum()
                self.tokens_trained += int(self.accelerator.gather_for_metrics(
                    torch.as_tensor(real, device=logits.device)).sum())
            self.own_metrics[mode]["num_tokens"] = [self.tokens_trained]
            return (loss, outputs) if return_outputs else loss

    return StudioSFTTrainer


def build(spec, kind, model, tokenizer, train_rows, eval_rows, output_dir: Path, callbacks, device):
    from workers.arguments import device_name, encode_rows

    started = time.perf_counter()
    train_enc = encode_rows(tokenizer, train_rows, kind, spec)
    if not train_enc:
        raise ValueError("no training row has any token to learn from after truncation; raise max length")
    eval_enc = encode_rows(tokenizer, eval_rows, kind, spec) if eval_rows else []
    log.info("timing dataset-encoding %.3f s at step 0", time.perf_counter() - started)
    args = sft_config(spec, output_dir, len(train_enc), bool(eval_enc), device)
    collator = None
    batching = spec.batching()
    if batching == "padding_free":
        from workers.batching import PaddingFreeCollator

        # flex / flash attention read the packed rows from position ids (transformers builds the document
        # mask itself, TRL runs training with use_cache=False); sdpa and eager need the explicit block mask
        collator = PaddingFreeCollator(block_mask=spec.attn_implementation not in PACKED_KERNELS)
    chunked = spec.chunked_loss == "on" or (spec.chunked_loss == "auto" and (device or device_name()) != "cpu")
    train_ds, eval_ds = datasets(train_enc, eval_enc)
    return trainer_class()(model=model, args=args, train_dataset=train_ds, eval_dataset=eval_ds,
                           processing_class=tokenizer, callbacks=callbacks, data_collator=collator,
                           batching=batching, chunked=chunked)


METHOD = WorkerMethod("sft", prepare, build, config=sft_config)
