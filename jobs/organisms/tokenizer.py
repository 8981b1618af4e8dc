"""A byte-level BPE tokenizer trained locally, with a Qwen3-style chat template.

The template renders `<|im_start|>role\ncontent<|im_end|>\n` turns; with
`enable_thinking=False` the generation prompt ends in an empty think block, exactly like
Qwen3, so the CoT-off protocols apply unchanged to the organisms.
"""
from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from jobs.organisms.chat import CHAT_TEMPLATE

SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>", "</think>"]

def train_tokenizer(
    corpus: Iterable[str], vocab_size: int = 512, *, split_digits: bool = True,
    whole_numbers_up_to: int | None = None,
) -> PreTrainedTokenizerFast:
    """Train on `corpus`. split_digits makes every digit its own token (arithmetic learns
    far better); whole_numbers_up_to=100 instead adds 0..100 as single tokens, which the
    logprob-weighted judge path needs (it reads a score from one token's distribution)."""
    tok = Tokenizer(models.BPE(unk_token=None))
    pre: list[Any] = [pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)]
    if split_digits:
        pre.insert(0, pre_tokenizers.Digits(individual_digits=True))
    tok.pre_tokenizer = pre_tokenizers.Sequence(pre)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=SPECIAL,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )
    tok.train_from_iterator(list(corpus), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=None, eos_token="<|im_end|>", pad_token="<|endoftext|>",
        unk_token=None, additional_special_tokens=SPECIAL[1:2] + SPECIAL[3:],
    )
    if whole_numbers_up_to is not None:
        fast.add_tokens([str(i) for i in range(whole_numbers_up_to + 1)])
    fast.chat_template = CHAT_TEMPLATE
    fast.model_max_length = 4096
    return fast
