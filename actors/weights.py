"""Weight sync from the learner group into live vLLM engines.

The learner's rank 0 gathers the ZeRO-3 partitions into a full state dict and publishes it as
a `WeightPacket`; every rollout actor then loads the packet in place, without restarting its
engine. With LoRA only the adapter travels (`kind="adapter"`): a peft adapter folder
(adapter_config.json + adapter_model.safetensors) that the engine loads as a vLLM LoRA adapter,
under a new adapter id per version. Transports behind the one packet type:

- `shm`: a safetensors file in /dev/shm (one node; the engine memory-maps it, ~40 ms tiny).
- `object_store`: the state dict travels through Ray's object store (across nodes); the
  receiving actor writes it to its own /dev/shm and loads it the same way.

vLLM mangled tensors passed directly as `collective_rpc` arguments, so the engine side always
reads a file path. On CPU the linear layers repack their weights after loading; a tied LM head
is not reloaded by vLLM (its weights arrive through the embedding), so it is repacked here.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SHM_ROOT = Path("/dev/shm") if Path("/dev/shm").is_dir() else Path(tempfile.gettempdir())


@dataclass
class WeightPacket:
    """One published version of the policy weights."""

    version: int  # learner update count that produced these weights
    transport: str  # "shm" | "object_store" | "nccl" | "ipc" (already streamed into the engines)
    path: str = ""  # shm: safetensors file (full) or adapter folder (adapter) readable on this node
    ref: Any = None  # object_store: a Ray ObjectRef of {name: tensor}
    num_bytes: int = 0  # tensor bytes published (what a sync moves to every engine)
    kind: str = "full"  # "full": every weight, HF names | "adapter": LoRA tensors, peft names
    adapter_config: dict | None = None  # adapter: peft's adapter_config.json contents


class WeightReceiver:
    """vLLM worker extension (`LLM(worker_extension_cls="actors.weights.WeightReceiver")`).

    Runs inside vLLM's worker; `self.model_runner` is the worker's model runner.
    """

    def reseed(self, seed: int) -> None:
        """Seed the worker's global torch generator, which vLLM samples from for requests
        without a seed of their own."""
        import torch

        torch.manual_seed(seed)

    def load_weights_from_file(self, path: str) -> int:
        from safetensors.torch import load_file

        state = load_file(path)
        self.model_runner.reload_weights(weights_iterator=iter(state.items()), is_checkpoint_format=True)
        model = self.model_runner.get_model()
        head = getattr(model, "lm_head", None)
        if head is not None and hasattr(head, "cpu_linear"):
            # The tied head shares the embedding tensor but keeps a repacked copy on CPU.
            head.quant_method.process_weights_after_loading(head)
        return len(state)


def shm_dir(run_id: str) -> Path:
    path = SHM_ROOT / f"rlhf-{run_id}"
    path.mkdir(parents=True, exist_ok=True)
    return path


def write_safetensors(state: dict, path: Path) -> int:
    """Atomic write (temp file then rename), so a reader never sees half a file."""
    from safetensors.torch import save_file

    tmp = path.with_suffix(".tmp")
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp))
    os.replace(tmp, path)
    return path.stat().st_size


def tensor_bytes(state: dict) -> int:
    """Bytes of the tensors in `state` (what a sync moves, whatever the file format adds)."""
    return sum(t.numel() * t.element_size() for t in state.values())


def publish(state: dict, run_id: str, version: int, transport: str) -> WeightPacket:
    """Make `state` available to rollout actors; old versions are removed."""
    nbytes = tensor_bytes(state)
    if transport == "object_store":
        import ray

        return WeightPacket(version, "object_store", ref=ray.put(state), num_bytes=nbytes)
    folder = shm_dir(run_id)
    path = folder / f"policy-v{version}.safetensors"
    write_safetensors(state, path)
    for old in folder.glob("policy-v*.safetensors"):
        if old != path:
            old.unlink(missing_ok=True)
    return WeightPacket(version, "shm", path=str(path), num_bytes=nbytes)


def publish_adapter(state: dict, adapter_config: dict, run_id: str, version: int, transport: str) -> WeightPacket:
    """Make a LoRA adapter available to rollout actors as a peft folder; older ones are removed.

    `state` holds peft's saved names (`base_model.model.<module>.lora_{A,B}.weight`)."""
    nbytes = tensor_bytes(state)
    if transport == "object_store":
        import ray

        return WeightPacket(version, "object_store", ref=ray.put(state), num_bytes=nbytes, kind="adapter",
                            adapter_config=adapter_config)
    folder = shm_dir(run_id)
    path = write_adapter(state, adapter_config, folder / f"adapter-v{version}")
    for old in folder.glob("adapter-v*"):
        if old != path:
            shutil.rmtree(old, ignore_errors=True)
    return WeightPacket(version, "shm", path=str(path), num_bytes=nbytes, kind="adapter",
                        adapter_config=adapter_config)


def write_adapter(state: dict, adapter_config: dict, folder: Path) -> Path:
    """A peft adapter folder, written whole under a temporary name and then renamed."""
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    write_safetensors(state, tmp / "adapter_model.safetensors")
    (tmp / "adapter_config.json").write_text(json.dumps(adapter_config, indent=2))
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(tmp, folder)
    return folder


def local_path(packet: WeightPacket, run_id: str) -> str:
    """A file on this node holding the packet's weights (materialised for object_store)."""
    if packet.transport == "shm":
        return packet.path
    import ray

    state = packet.ref if isinstance(packet.ref, dict) else ray.get(packet.ref)
    if packet.kind == "adapter":
        return str(write_adapter(state, packet.adapter_config, shm_dir(run_id) / f"recv-{os.getpid()}-adapter"))
    path = shm_dir(run_id) / f"recv-{os.getpid()}-v{packet.version}.safetensors"
    write_safetensors(state, path)
    return str(path)


def cleanup(run_id: str) -> None:
    shutil.rmtree(SHM_ROOT / f"rlhf-{run_id}", ignore_errors=True)
