"""The tiny model is a complete Hugging Face model folder whose chat template masks exactly the answers."""

from __future__ import annotations

import subprocess
import sys

import torch
import transformers


def test_tiny_model_loads_and_masks_only_assistant_tokens(tmp_path):
    out = tmp_path / "tiny"
    done = subprocess.run(
        [sys.executable, "-m", "longalign_operator.cli", "tiny-model", str(out)],
        capture_output=True,
        text=True,
        check=True,
    )
    assert done.stdout.strip() == str(out)
    # readable by every user, as a model folder from a hub: a server in a pod runs as another user than its builder
    assert {f.name: f.stat().st_mode & 0o044 for f in out.iterdir()} == {f.name: 0o044 for f in out.iterdir()}
    tok = transformers.AutoTokenizer.from_pretrained(out)
    model = transformers.AutoModelForCausalLM.from_pretrained(out)
    assert model.config.head_dim >= 64  # vLLM's CPU attention rejects smaller heads
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "What does json.dumps return?"},
        {"role": "assistant", "content": "A string."},
        {"role": "user", "content": "And json.loads?"},
        {"role": "assistant", "content": "An object."},
    ]
    enc = tok.apply_chat_template(messages, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
    answer_ids = [i for i, m in zip(enc["input_ids"], enc["assistant_masks"], strict=True) if m]
    assert tok.decode(answer_ids) == "A string.<|end|>An object.<|end|>"
    assert enc["input_ids"][0] == tok.bos_token_id
    logits = model(input_ids=torch.tensor([enc["input_ids"]])).logits
    assert logits.shape == (1, len(enc["input_ids"]), len(tok))
