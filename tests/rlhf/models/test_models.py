"""Offline models: the tiny builder, LoRA merging, path resolution, and the packaged SmolLM2."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from rlhf.config.training import LoraConfig
from rlhf.models.loading import count_parameters, resolve_model_path
from rlhf.models.lora import apply_lora, merge_lora, merge_lora_state
from rlhf.models.paths import ModelError
from rlhf.models.tiny import build_tiny_model

# vLLM in this process or a subprocess, and no Ray: runs beside the `alone` tests in make test.
pytestmark = pytest.mark.no_ray

QUESTION = "What is the capital of France?"


def load_lm(path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()


def load_tok(path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path)


# ----------------------------------------------------------------------------- tiny builder


def test_tiny_model_loads_in_transformers(tmp_path):
    path = build_tiny_model(tmp_path / "tiny")
    assert (path / "config.json").is_file() and (path / "model.safetensors").is_file()
    model, tok = load_lm(path), load_tok(path)
    assert count_parameters(model) < 1_000_000
    assert tok.chat_template
    ids = tok.apply_chat_template(
        [{"role": "user", "content": "What is 2 plus 3?"}], add_generation_prompt=True, return_tensors="pt",
        return_dict=True,
    )["input_ids"]
    assert tok.decode(ids[0]).endswith("<|im_start|>assistant\n")
    with torch.no_grad():
        logits = model(ids).logits
    assert logits.shape == (1, ids.shape[1], len(tok))
    assert torch.isfinite(logits).all()
    assert model.config.eos_token_id == tok.eos_token_id


def test_tiny_model_is_deterministic_and_cached(tmp_path):
    a = build_tiny_model(tmp_path / "a", seed=3)
    b = build_tiny_model(tmp_path / "b", seed=3)
    assert (a / "model.safetensors").read_bytes() == (b / "model.safetensors").read_bytes()
    stamp = (a / "model.safetensors").stat().st_mtime_ns
    assert build_tiny_model(a, seed=3) == a  # cached: not rewritten
    assert (a / "model.safetensors").stat().st_mtime_ns == stamp


def test_shared_tiny_model_fixture(tiny_model_dir):
    assert isinstance(tiny_model_dir, str)
    assert resolve_model_path(tiny_model_dir) == os.path.realpath(tiny_model_dir)


# ----------------------------------------------------------------------------- LoRA


def test_merge_lora_state_by_hand():
    w0 = torch.tensor([[1.0, 0.0, 2.0], [0.0, 1.0, -1.0]])  # [out=2, in=3]
    a = torch.tensor([[1.0, 2.0, 3.0]])  # [r=1, in=3]
    b = torch.tensor([[1.0], [-2.0]])  # [out=2, r=1]
    state = {
        "base_model.model.layer.q.base_layer.weight": w0,
        "base_model.model.layer.q.base_layer.bias": torch.tensor([0.5, 0.5]),
        "base_model.model.layer.q.lora_A.default.weight": a,
        "base_model.model.layer.q.lora_B.default.weight": b,
        "base_model.model.embed.weight": torch.ones(4, 3),
    }
    merged = merge_lora_state(state, scale=0.5)
    assert set(merged) == {"layer.q.weight", "layer.q.bias", "embed.weight"}
    # B @ A = [[1, 2, 3], [-2, -4, -6]]; times 0.5 added to W0.
    expected = torch.tensor([[1.5, 1.0, 3.5], [-1.0, -1.0, -4.0]])
    torch.testing.assert_close(merged["layer.q.weight"], expected)
    torch.testing.assert_close(merged["layer.q.bias"], torch.tensor([0.5, 0.5]))
    torch.testing.assert_close(merged["embed.weight"], torch.ones(4, 3))


def test_merge_lora_state_keeps_dtype():
    state = {
        "base_model.model.l.base_layer.weight": torch.zeros(2, 2, dtype=torch.bfloat16),
        "base_model.model.l.lora_A.default.weight": torch.eye(2, dtype=torch.bfloat16),
        "base_model.model.l.lora_B.default.weight": torch.eye(2, dtype=torch.bfloat16),
    }
    merged = merge_lora_state(state, scale=2.0)
    assert merged["l.weight"].dtype == torch.bfloat16
    torch.testing.assert_close(merged["l.weight"].float(), 2 * torch.eye(2))


def test_apply_lora_disabled_returns_the_model(tiny_model_dir):
    model = load_lm(tiny_model_dir)
    assert apply_lora(model, LoraConfig(enabled=False)) is model
    assert merge_lora(model) is model  # nothing to fold


def test_lora_merge_matches_merged_state_in_a_fresh_model(tiny_model_dir):
    lora = LoraConfig(enabled=True, r=4, alpha=8, target_modules=["q_proj", "v_proj"])
    peft_model = apply_lora(load_lm(tiny_model_dir), lora).eval()
    trainable = [n for n, p in peft_model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    # peft starts B at zero (a no-op adapter); give the adapters weight so the merge shows.
    torch.manual_seed(0)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.5)
    ids = torch.randint(0, peft_model.config.vocab_size, (2, 12))
    with torch.no_grad():
        adapted = peft_model(ids).logits
        base = load_lm(tiny_model_dir)(ids).logits
    assert not torch.allclose(adapted, base, atol=1e-4)  # the adapters do change the output

    state = {k: v.clone() for k, v in peft_model.state_dict().items()}
    fresh = load_lm(tiny_model_dir)
    result = fresh.load_state_dict(merge_lora_state(state, scale=lora.alpha / lora.r), strict=False)
    assert result.unexpected_keys == []
    assert set(result.missing_keys) <= {"lm_head.weight"}  # tied to the embedding
    merged = merge_lora(peft_model)
    assert not any("lora_" in n for n, _ in merged.named_parameters())
    with torch.no_grad():
        torch.testing.assert_close(fresh(ids).logits, adapted, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(merged(ids).logits, adapted, atol=1e-5, rtol=1e-4)


# ----------------------------------------------------------------------------- resolve_model_path


def test_resolve_empty_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ModelError, match="empty"):
        resolve_model_path("")


def test_resolve_folder_without_config(tmp_path):
    with pytest.raises(ModelError, match="has no config.json") as err:
        resolve_model_path(str(tmp_path))
    assert str(tmp_path) in str(err.value)


@pytest.mark.parametrize("name", ["no-such-model", "some-org/no-such-model"])
def test_resolve_unknown_name_offline(name, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelError, match=f"'{name}' is not a local folder and no hub is reachable"):
        resolve_model_path(name)


def test_resolve_tiny_alias():
    path = resolve_model_path("tiny")
    assert os.path.isfile(os.path.join(path, "config.json"))


# ----------------------------------------------------------------------------- SmolLM2 (slow)


VLLM_SCRIPT = textwrap.dedent(
    """
    import json
    import sys


    def main():
        from transformers import AutoTokenizer
        from vllm import LLM, SamplingParams

        path, question = sys.argv[1], sys.argv[2]
        tok = AutoTokenizer.from_pretrained(path)
        prompt = tok.apply_chat_template(
            [{"role": "user", "content": question}], tokenize=False, add_generation_prompt=True
        )
        llm = LLM(model=path, dtype="float32", enforce_eager=True, max_model_len=512)
        out = llm.generate([prompt], SamplingParams(temperature=0, max_tokens=20))
        print("ANSWER=" + json.dumps(out[0].outputs[0].text), flush=True)


    if __name__ == "__main__":
        main()
    """
)


@pytest.fixture(scope="module")
def smollm2_dir():
    from rlhf.models.packaged import prepare_smollm2

    return str(prepare_smollm2())


@pytest.mark.slow
def test_smollm2_answers_in_transformers(smollm2_dir):
    model, tok = load_lm(smollm2_dir), load_tok(smollm2_dir)
    assert not hasattr(model.config, "quantization_config")  # a plain fp32 checkpoint
    inputs = tok.apply_chat_template(
        [{"role": "user", "content": QUESTION}], add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=20, do_sample=False)
    answer = tok.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
    assert "Paris" in answer, answer


@pytest.mark.slow
def test_smollm2_answers_in_vllm(smollm2_dir, tmp_path):
    script = tmp_path / "ask_vllm.py"
    script.write_text(VLLM_SCRIPT)
    env = dict(os.environ, VLLM_ENABLE_V1_MULTIPROCESSING="0")
    env.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    proc = subprocess.run(
        [sys.executable, str(script), smollm2_dir, QUESTION],
        capture_output=True, text=True, timeout=900, env=env, cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    lines = [line for line in proc.stdout.splitlines() if line.startswith("ANSWER=")]
    assert lines, proc.stdout[-2000:] + proc.stderr[-2000:]
    answer = json.loads(lines[-1].removeprefix("ANSWER="))
    assert "Paris" in answer, answer


# ----------------------------------------------------------------------------- response logprobs


@pytest.mark.parametrize("attention", ["eager", "sdpa"])
def test_response_logprobs_equal_a_full_forward_by_hand(tiny_model_dir, attention):
    """Only the response columns get logits (logits_to_keep); the numbers must equal slicing a
    full forward pass, with left-padded prompts and right-padded responses."""
    from rlhf.models.loading import load_causal_lm
    from rlhf.models.logprobs import response_logprobs
    from rlhf.rl.batch import pack_sequences, position_ids_from_mask
    from rlhf.rl.losses import entropy_from_logits

    model = load_causal_lm(str(tiny_model_dir), "float32", attention).eval()
    prompts, responses = [[5, 6, 7], [8, 9, 10, 11, 12]], [[13, 14, 15, 16], [17, 18]]
    seqs, attn, mask, plen = pack_sequences(prompts, responses, pad_id=0)
    with torch.no_grad():
        logp, ent = response_logprobs(model, seqs, attn, plen, mask.shape[1], with_entropy=True)
        full = model(input_ids=seqs, attention_mask=attn, position_ids=position_ids_from_mask(attn)).logits
    for row, response in enumerate(responses):
        for t, token in enumerate(response):
            expected = torch.log_softmax(full[row, plen - 1 + t], -1)[token]
            assert logp[row, t].item() == pytest.approx(expected.item(), abs=1e-5)
    cols = full[:, plen - 1 : plen - 1 + mask.shape[1]]
    assert torch.allclose(ent, entropy_from_logits(cols), atol=1e-5)


@pytest.mark.parametrize("attention", ["eager", "sdpa", "cache"])
@pytest.mark.parametrize("lengths", [[4, 1, 3, 2, 2, 4], [1, 1, 1, 1, 1, 1]])
def test_shared_prompt_pass_gives_the_full_pass_logprobs_and_gradients(tiny_model_dir, lengths, attention,
                                                                        monkeypatch):
    """Groups of samples with one prompt each: running each prompt once (one row per prompt under
    a 4D mask, or the responses on the prompt's cached keys and values) must give the same
    logprobs, entropy and parameter gradients as one full pass per row (prompts of different
    lengths, so left padding differs between groups; one-token responses)."""
    from rlhf.models import logprobs as lp_module
    from rlhf.models.loading import load_causal_lm
    from rlhf.models.logprobs import prompt_groups, response_logprobs
    from rlhf.rl.batch import pack_sequences

    model = load_causal_lm(str(tiny_model_dir), "float32", "sdpa" if attention == "cache" else attention)
    if attention == "cache":  # the path of attention kernels without 4D masks (flash attention)
        monkeypatch.setattr(lp_module, "takes_4d_masks", lambda model: False)
    prompts = [[5, 6, 7]] * 2 + [[8, 9, 10, 11, 12]] * 3 + [[20, 21]]
    responses = [[13 + i + k for k in range(n)] for i, n in enumerate(lengths)]
    seqs, attn, mask, plen = pack_sequences(prompts, responses, pad_id=0)
    first, inverse = prompt_groups(seqs, attn, plen)
    assert first.tolist() == [0, 2, 5] and inverse.tolist() == [0, 0, 1, 1, 1, 2]
    results = []
    for share in (False, True):
        model.zero_grad()
        logp, ent = response_logprobs(model, seqs, attn, plen, mask.shape[1], with_entropy=True, share_prompts=share)
        (logp * mask).sum().backward()
        grads = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
        results.append((logp.detach() * mask, ent.detach() * mask, grads))
    (full_lp, full_ent, full_g), (lp, ent, g) = results
    assert torch.allclose(lp, full_lp, atol=1e-5)
    assert torch.allclose(ent, full_ent, atol=1e-5)
    assert torch.allclose(g, full_g, atol=1e-4, rtol=1e-4)
    assert full_g.abs().sum() > 0


def test_prompt_groups_is_none_when_no_prompt_repeats():
    from rlhf.models.logprobs import prompt_groups
    from rlhf.rl.batch import pack_sequences

    seqs, attn, _, plen = pack_sequences([[5, 6], [5, 7], [5, 6]], [[1], [1], [1]], pad_id=0)
    assert prompt_groups(seqs, attn, plen) is None
