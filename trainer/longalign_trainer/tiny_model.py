"""A tiny random Llama with a real tokenizer and chat template, built offline in seconds.

Models cannot be downloaded here, yet every loading path (transformers, DeepSpeed, vLLM) must be exercised
for real. This builds a complete Hugging Face model folder from nothing: a byte-level BPE tokenizer trained on
text that ships with Python itself (the standard library's docstrings), a chat template that marks assistant
turns for loss masking, and a randomly initialised ``LlamaForCausalLM``. ``head_dim`` is 64 because vLLM's CPU
attention rejects smaller heads.

    longalign tiny-model OUT_DIR      # or build_tiny_model(OUT_DIR) from Python
"""

from __future__ import annotations

import importlib
import inspect
import json
from pathlib import Path

from longalign_trainer.atomic_write import make_readable

SPECIAL_TOKENS = ["<unk>", "<s>", "</s>", "<pad>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>"]

# Each turn is "<|role|>\n{content}<|end|>\n". The assistant's content and its closing <|end|> sit inside a
# {% generation %} block, so `apply_chat_template(..., return_assistant_tokens_mask=True)` marks exactly the
# tokens the model must learn to produce (its answer and the end of turn), and nothing of the prompt.
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% if message['role'] == 'assistant' %}"
    "{{ '<|assistant|>\n' }}{% generation %}{{ message['content'] + '<|end|>' }}{% endgeneration %}{{ '\n' }}"
    "{% else %}"
    "{{ '<|' + message['role'] + '|>\n' + message['content'] + '<|end|>\n' }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
)

CORPUS_MODULES = (
    "argparse",
    "asyncio",
    "collections",
    "contextlib",
    "csv",
    "dataclasses",
    "datetime",
    "decimal",
    "difflib",
    "email",
    "fractions",
    "functools",
    "heapq",
    "http.client",
    "inspect",
    "json",
    "logging",
    "pathlib",
    "pickle",
    "random",
    "re",
    "shutil",
    "statistics",
    "string",
    "subprocess",
    "tarfile",
    "textwrap",
    "threading",
    "typing",
    "unittest",
    "urllib.parse",
    "uuid",
    "zipfile",
)


def local_corpus() -> list[str]:
    """Paragraph-rich English text available on every Python install: the docstrings of stdlib modules."""
    texts = []
    for name in CORPUS_MODULES:
        module = importlib.import_module(name)
        for _, obj in [(name, module), *inspect.getmembers(module)]:
            doc = inspect.getdoc(obj)
            if doc and len(doc) > 200 and doc not in texts:
                texts.append(doc)
    return texts


def build_tokenizer(out_dir: Path, vocab_size: int = 4096):
    """Train a byte-level BPE tokenizer on the local corpus and save it (with the chat template) to ``out_dir``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(local_corpus(), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="<|end|>",
        unk_token="<unk>",
        pad_token="<pad>",
        additional_special_tokens=["<|system|>", "<|user|>", "<|assistant|>", "</s>"],
    )
    fast.chat_template = CHAT_TEMPLATE
    fast.model_max_length = 1 << 20
    fast.save_pretrained(out_dir)
    return fast


def build_tiny_model(
    out_dir: str | Path,
    *,
    hidden_size: int = 256,
    layers: int = 2,
    heads: int = 4,
    kv_heads: int = 2,
    intermediate_size: int = 512,
    vocab_size: int = 4096,
    max_position_embeddings: int = 32768,
    seed: int = 0,
) -> Path:
    """Write a random-weight Llama (safetensors), its tokenizer and chat template to ``out_dir``."""
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tok = build_tokenizer(out, vocab_size)
    config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        head_dim=hidden_size // heads,
        max_position_embeddings=max_position_embeddings,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        tie_word_embeddings=False,
        dtype="float32",
        # transformers 4.x's keyword, which 5.x still accepts (as rope_parameters) but no longer declares
        rope_theta=500000.0,  # type: ignore[call-arg]
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.save_pretrained(out, safe_serialization=True)
    GenerationConfig(
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id
    ).save_pretrained(out)
    (out / "longalign-tiny.json").write_text(json.dumps({"seed": seed, "built_by": "longalign_trainer.tiny_model"}))
    make_readable(out)
    return out


def add_arguments(parser) -> None:
    """Arguments of ``longalign tiny-model``."""
    parser.add_argument("out_dir", help="folder to write the model into")
    parser.add_argument("--seed", type=int, default=0)


def run(args) -> int:
    """``longalign tiny-model OUT_DIR``."""
    print(build_tiny_model(args.out_dir, seed=args.seed))
    return 0
