"""GPU weight-sync transports (actors/gpu_weights.py) without CUDA, Ray or an engine: the pure
choices and plans, the real vLLM dataclasses they build, and one sync through vLLM's own NCCL
trainer engine with only its CUDA data plane (rendezvous, packed broadcast) replaced."""

from __future__ import annotations

import sys
import types

import pytest
import torch

from actors import gpu_weights as gw
from rlhf.models.lora import merge_lora_state

pytestmark = pytest.mark.no_ray  # runs beside the `alone` tests in make test

# ----------------------------------------------------------------------------- choose_transport


@pytest.mark.parametrize("setting, use_gpu, multi_node, colocated, expected", [
    ("auto", False, False, False, "shm"),
    ("auto", False, True, False, "object_store"),
    ("auto", False, False, True, "shm"),
    ("auto", True, False, False, "shm"),  # GPU transports only by name (never run on a GPU yet)
    ("auto", True, True, False, "object_store"),
    ("auto", True, False, True, "shm"),
    ("shm", False, False, False, "shm"),
    ("shm", True, False, True, "shm"),
    ("object_store", False, True, False, "object_store"),
    ("object_store", True, True, False, "object_store"),
    ("nccl", True, False, False, "nccl"),
    ("nccl", True, True, False, "nccl"),
    ("nccl", True, False, True, "nccl"),
    ("ipc", True, False, True, "ipc"),
])
def test_choose_transport(setting, use_gpu, multi_node, colocated, expected):
    assert gw.choose_transport(setting, use_gpu, multi_node, colocated) == expected


@pytest.mark.parametrize("setting, use_gpu, multi_node, colocated, message", [
    ("nccl", False, False, False, "nccl needs GPUs .* stale weights"),
    ("nccl", False, True, False, "nccl needs GPUs .* object_store"),
    ("ipc", False, False, True, "ipc .* needs GPUs"),
    ("ipc", True, True, True, "ipc cannot span nodes"),
    ("ipc", True, False, False, "ipc needs the engines on the learner's GPUs"),
    ("cuda", True, False, False, "expected one of auto, shm, object_store, nccl, ipc"),
])
def test_choose_transport_refuses(setting, use_gpu, multi_node, colocated, message):
    with pytest.raises(ValueError, match=message):
        gw.choose_transport(setting, use_gpu, multi_node, colocated)


# ----------------------------------------------------------------------------- plan_buckets


def test_plan_buckets_by_hand():
    params = [("a", 4), ("b", 4), ("c", 4), ("d", 10), ("e", 1), ("f", 1)]
    # a+b fill 8 exactly; c would make 12; d alone is over the bucket; e+f share one.
    assert gw.plan_buckets(params, 8) == [["a", "b"], ["c"], ["d"], ["e", "f"]]


def test_plan_buckets_oversize_first_and_last():
    assert gw.plan_buckets([("big", 100), ("x", 1), ("y", 1)], 10) == [["big"], ["x", "y"]]
    assert gw.plan_buckets([("x", 1), ("big", 100)], 10) == [["x"], ["big"]]
    assert gw.plan_buckets([], 10) == []


@pytest.mark.parametrize("bucket_bytes", [1, 3, 7, 16, 1000])
def test_plan_buckets_keeps_order_and_every_name_once(bucket_bytes):
    params = [(f"p{i}", (i * 7) % 11 + 1) for i in range(40)]
    buckets = gw.plan_buckets(params, bucket_bytes)
    assert [name for bucket in buckets for name in bucket] == [name for name, _ in params]
    size = dict(params)
    for bucket in buckets:
        assert len(bucket) == 1 or sum(size[n] for n in bucket) <= bucket_bytes


def test_plan_buckets_keeps_a_lora_layer_together():
    q = "base_model.model.model.layers.0.self_attn.q_proj"
    params = [(f"{q}.base_layer.weight", 8), (f"{q}.base_layer.bias", 1), (f"{q}.lora_A.default.weight", 2),
              (f"{q}.lora_B.default.weight", 2), ("base_model.model.model.norm.weight", 8)]
    assert gw.plan_buckets(params, 10) == [[n for n, _ in params[:4]], [params[4][0]]]


def test_plan_buckets_rejects_empty_buckets():
    with pytest.raises(ValueError, match="positive"):
        gw.plan_buckets([("a", 1)], 0)


# ----------------------------------------------------------------------------- names

Q = "model.layers.0.self_attn.q_proj"
PEFT = "base_model.model."


def test_engine_names_deepspeed_and_peft():
    names = [
        f"module.{Q}.weight",  # DeepSpeed engine, no LoRA
        f"{Q}.bias",  # already plain
        f"module.{PEFT}{Q}.base_layer.weight",
        f"{PEFT}{Q}.base_layer.bias",
        f"module.{PEFT}{Q}.lora_A.default.weight",
        f"{PEFT}{Q}.lora_B.default.weight",
        f"{PEFT}score.original_module.weight",
        f"{PEFT}score.modules_to_save.default.weight",
    ]
    assert gw.engine_names(names) == {
        names[0]: f"{Q}.weight",
        names[1]: f"{Q}.bias",
        names[2]: f"{Q}.weight",
        names[3]: f"{Q}.bias",
        names[4]: f"{Q}.weight",
        names[5]: f"{Q}.weight",
        names[7]: "score.weight",
    }


def lora_state() -> dict[str, torch.Tensor]:
    """A tiny peft-style state dict: one LoRA layer (r=2), a plain norm, a modules_to_save head."""
    g = torch.Generator().manual_seed(0)
    return {
        "model.embed_tokens.weight": torch.randn(5, 4, generator=g),
        f"{PEFT}{Q}.base_layer.weight": torch.randn(4, 4, generator=g),
        f"{PEFT}{Q}.base_layer.bias": torch.randn(4, generator=g),
        f"{PEFT}{Q}.lora_A.default.weight": torch.randn(2, 4, generator=g),
        f"{PEFT}{Q}.lora_B.default.weight": torch.randn(4, 2, generator=g),
        f"{PEFT}model.norm.weight": torch.randn(4, generator=g),
        f"{PEFT}score.original_module.weight": torch.randn(3, 4, generator=g),
        f"{PEFT}score.modules_to_save.default.weight": torch.randn(3, 4, generator=g),
    }


def test_engine_names_agree_with_merge_lora_state():
    state = lora_state()
    assert sorted(set(gw.engine_names(state).values())) == sorted(merge_lora_state(state, 0.5))


def test_fold_bucket_merges_lora_casts_and_copies():
    state = lora_state()
    bucket = [(f"module.{name}", tensor) for name, tensor in state.items()]
    folded = dict(gw.fold_bucket(bucket, torch.bfloat16, lora_scale=0.5))
    assert list(folded) == ["model.embed_tokens.weight", f"{Q}.weight", f"{Q}.bias", "model.norm.weight",
                            "score.weight"]
    assert all(t.dtype == torch.bfloat16 for t in folded.values())
    base, a, b = (state[f"{PEFT}{Q}.{k}"] for k in ("base_layer.weight", "lora_A.default.weight",
                                                      "lora_B.default.weight"))
    torch.testing.assert_close(folded[f"{Q}.weight"], (base + 0.5 * b @ a).bfloat16())
    torch.testing.assert_close(folded["score.weight"], state[f"{PEFT}score.modules_to_save.default.weight"].bfloat16())
    # Copies: the learner may release (or reuse) what it gathered.
    same = dict(gw.fold_bucket([("model.norm.weight", state[f"{PEFT}model.norm.weight"])], torch.float32))
    state[f"{PEFT}model.norm.weight"].zero_()
    assert same["model.norm.weight"].abs().sum() > 0


def test_fold_bucket_needs_lora_scale_for_adapters():
    with pytest.raises(ValueError, match="lora_scale"):
        gw.fold_bucket(list(lora_state().items()), torch.float32)


def test_wire_meta_matches_what_the_buckets_yield():
    state = lora_state()
    names = list(state)
    plan = gw.plan_buckets([(n, t.numel() * 4) for n, t in state.items()], 40)
    assert len(plan) > 2  # several buckets, one of them the LoRA layer
    sent = [(n, tuple(t.shape)) for bucket in plan
            for n, t in gw.fold_bucket([(k, state[k]) for k in bucket], torch.float32, 0.5)]
    assert gw.wire_meta([(n, tuple(state[n].shape)) for n in names]) == sent


def test_full_shapes_reads_zero3_sizes():
    module = torch.nn.Linear(4, 3)
    module.weight.ds_shape, module.weight.ds_numel = torch.Size([30, 4]), 120  # as a ZeRO-3 partition
    assert gw.full_shapes(module) == [("weight", (30, 4), 480), ("bias", (3,), 12)]


def test_gathered_buckets_gathers_one_bucket_at_a_time(monkeypatch):
    events = []

    class Gathered:
        def __init__(self, params, modifier_rank):
            assert modifier_rank is None  # read-only gather: no broadcast back on release
            self.n = len(params)

        def __enter__(self):
            events.append(("gather", self.n))

        def __exit__(self, *exc):
            events.append(("release", self.n))

    fake = types.SimpleNamespace(zero=types.SimpleNamespace(GatheredParameters=Gathered))
    monkeypatch.setitem(sys.modules, "deepspeed", fake)
    module = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 1, bias=False))
    buckets = gw.gathered_buckets(module, [["0.weight", "0.bias"], ["1.weight"]])
    first = next(buckets)
    assert [n for n, _ in first] == ["0.weight", "0.bias"] and events == [("gather", 2)]
    second = next(buckets)
    assert [n for n, _ in second] == ["1.weight"] and events == [("gather", 2), ("release", 2), ("gather", 1)]
    assert next(buckets, None) is None and events[-1] == ("release", 1)


# ----------------------------------------------------------------------------- vLLM objects


def test_engine_kwargs_build_vllm_config():
    from vllm.config import WeightTransferConfig

    for backend in ("nccl", "ipc"):
        config = gw.engine_kwargs(backend)["weight_transfer_config"]
        assert isinstance(config, WeightTransferConfig) and config.backend == backend
    with pytest.raises(ValueError):
        gw.engine_kwargs("shm")
    assert gw.engine_env("ipc") == {"VLLM_ALLOW_INSECURE_SERIALIZATION": "1"} and gw.engine_env("nccl") == {}


def test_trainer_init_info_nccl_and_ipc():
    from vllm.distributed.weight_transfer.ipc_engine import IPCTrainerInitInfo
    from vllm.distributed.weight_transfer.nccl_engine import NCCLTrainerInitInfo

    info = gw.trainer_init_info("nccl", 0, [1, 2], 256, 1000, "10.0.0.1", 29555)
    assert isinstance(info, NCCLTrainerInitInfo) and info.backend == "nccl" and info.is_sender
    assert (info.master_address, info.master_port, info.world_size) == ("10.0.0.1", 29555, 4)
    assert (info.packed, info.packed_buffer_size_bytes, info.packed_num_buffers) == (True, 256, 2)
    ipc = gw.trainer_init_info("ipc", 1, [1], 256, 1000)
    assert isinstance(ipc, IPCTrainerInitInfo) and not ipc.is_sender
    assert ipc.packed and ipc.packed_buffer_size_bytes == 1000  # the largest tensor must fit
    with pytest.raises(ValueError):
        gw.trainer_init_info("sparse_nccl", 0, [1], 256)


def test_engine_init_payloads_parse_as_vllm_worker_init_info():
    from vllm.distributed.weight_transfer.ipc_engine import IPCWeightTransferInitInfo
    from vllm.distributed.weight_transfer.nccl_common import NCCLWeightTransferInitInfo, worker_init_payload

    calls = []
    client = gw.EngineClient(lambda method, args: calls.append((method, args)), engine_tp=[1, 2, 1])
    # What vLLM's NCCL trainer hands the client: one payload, rank_offset=1 for everyone.
    stock = NCCLWeightTransferInitInfo(master_address="h", master_port=1, rank_offset=1, world_size=5, packed=True)
    client.init_weight_transfer_engine(worker_init_payload(stock))
    method, args = calls[-1]
    assert method == "init_weight_transfer"
    parsed = [NCCLWeightTransferInitInfo(**payload) for (payload,) in args]  # as the worker parses it
    assert [p.rank_offset for p in parsed] == [1, 2, 4]  # engine 1 has two workers: ranks 2, 3
    assert all((p.master_address, p.world_size, p.packed) == ("h", 5, True) for p in parsed)
    client.init_weight_transfer_engine({"packed": True})  # ipc: no ranks
    assert [IPCWeightTransferInitInfo(**p).packed for (p,) in calls[-1][1]] == [True] * 3


def test_update_info_carries_a_buckets_names_dtypes_shapes():
    from vllm.distributed.weight_transfer.ipc_engine import IPCWeightTransferUpdateInfo
    from vllm.distributed.weight_transfer.nccl_engine import NCCLWeightTransferUpdateInfo

    source = gw.BucketSource([(f"{Q}.weight", (4, 4)), ("model.norm.weight", (4,))], torch.bfloat16, None)
    meta = source.metadata()
    # Built the way vLLM's trainer engines build it from a WeightSource's metadata.
    fields = {"names": [m.name for m in meta], "dtype_names": [str(m.dtype).split(".")[-1] for m in meta],
              "shapes": [list(m.shape) for m in meta]}
    nccl = NCCLWeightTransferUpdateInfo(**fields)
    assert nccl.names == [f"{Q}.weight", "model.norm.weight"] and nccl.shapes == [[4, 4], [4]]
    assert [getattr(torch, d) for d in nccl.dtype_names] == [torch.bfloat16] * 2  # the worker's decoding
    ipc = IPCWeightTransferUpdateInfo(**fields, ipc_handles={"GPU-0": ("args",)}, tensor_sizes=[32, 8])
    assert ipc.names == nccl.names and ipc.tensor_sizes == [32, 8]
    with pytest.raises(ValueError, match="dtype_names"):
        NCCLWeightTransferUpdateInfo(names=["a"], dtype_names=[], shapes=[[1]])


def test_bucket_source_is_one_pass_per_feed():
    source = gw.BucketSource([("w", (2,))], torch.float32, None)
    with pytest.raises(RuntimeError, match="feed"):
        list(source)
    source.feed([[("w", torch.ones(2))]])
    assert [n for n, _ in source] == ["w"]
    with pytest.raises(RuntimeError, match="feed"):
        list(source)


# ----------------------------------------------------------------------------- one sync


@pytest.fixture
def fake_nccl(monkeypatch):
    """vLLM's NCCL trainer engine with its CUDA data plane replaced: no rendezvous, and the
    packed broadcast just records what it would have sent."""
    from vllm.distributed.weight_transfer import nccl_engine

    events: list = []

    def broadcast(iterator, group, src, post_iter_func, buffer_size_bytes, num_buffers):
        assert (src, buffer_size_bytes, num_buffers) == (0, 64, 2)
        for item in iterator:
            events.append(("sent", item[0], post_iter_func(item).clone()))

    monkeypatch.setattr(nccl_engine, "open_trainer_endpoint", lambda info: object())
    monkeypatch.setattr(nccl_engine, "packed_nccl_broadcast_producer", broadcast)
    return events


def test_send_through_vllms_nccl_trainer_engine(fake_nccl):
    events = fake_nccl
    state = lora_state()
    calls = []
    sender = gw.GpuWeightSender("nccl", 0, [1, 1], lambda m, a: calls.append((m, a)), dtype=torch.float32,
                                lora_scale=0.5, bucket_bytes=64, master_address="h", master_port=7)
    sender.setup([(n, tuple(t.shape), t.numel() * 4) for n, t in state.items()])
    assert calls[0][0] == "init_weight_transfer"
    assert [(p["rank_offset"], p["world_size"], p["packed"]) for (p,) in calls[0][1]] == [(1, 3, True), (2, 3, True)]

    plan = gw.plan_buckets([(n, t.numel() * 4) for n, t in state.items()], 64)

    def buckets():
        for i, names in enumerate(plan):
            events.append(("gather", i))
            yield [(n, state[n]) for n in names]
            events.append(("release", i))

    sender.send(buckets(), version=3)
    methods = [m for m, _ in calls[1:]]
    assert methods == ["start_weight_update", "update_weights", "finish_weight_update"]
    update = calls[2][1][0][0]
    expected = merge_lora_state(state, 0.5)
    assert update["names"] == list(expected) and update["dtype_names"] == ["float32"] * len(expected)
    assert update["shapes"] == [list(t.shape) for t in expected.values()]
    assert calls[3][1] == [("3",), ("3",)]
    sent = {name: t for kind, name, t in (e for e in events if e[0] == "sent")}
    for name, tensor in expected.items():
        torch.testing.assert_close(sent[name], tensor)
    # Each bucket is sent while it is held, and released before the next one is gathered.
    order = [e[:2] for e in events if e[0] != "sent"]
    assert order == [(kind, i) for i in range(len(plan)) for kind in ("gather", "release")]
    for i, names in enumerate(plan):
        start, end = events.index(("gather", i)), events.index(("release", i))
        held = [e[1] for e in events[start:end] if e[0] == "sent"]
        assert held == [n for n, _ in gw.fold_bucket([(n, state[n]) for n in names], torch.float32, 0.5)]


def test_non_sender_rank_gathers_but_never_calls_engines(fake_nccl):
    state = {"model.norm.weight": torch.ones(4)}
    sender = gw.GpuWeightSender("nccl", 1, [1], None, dtype=torch.float32, bucket_bytes=64)
    sender.setup([("model.norm.weight", (4,), 16)])
    gathered = []

    def buckets():
        gathered.append(0)
        yield list(state.items())

    sender.send(buckets(), version=1)
    assert gathered == [0] and not any(e[0] == "sent" for e in fake_nccl)


def test_ray_call_fans_out_one_call_per_engine(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", types.SimpleNamespace(get=lambda refs: refs))
    seen = []

    class Handle:
        def __init__(self, i):
            self.update_weights = types.SimpleNamespace(remote=lambda *a: seen.append((i, a)))

    gw.ray_call([Handle(0), Handle(1)])("update_weights", [("x",), ("y",)])
    assert seen == [(0, ("x",)), (1, ("y",))]
    with pytest.raises(ValueError):  # one argument tuple per engine, no more, no less
        gw.ray_call([Handle(0)])("update_weights", [("x",), ("y",)])
