"""One typed configuration tree for every stage, loaded from YAML with dotted overrides.

Every field has a default here and nowhere else, and a docstring right under it (shown by
`rlhf config show`). Unknown keys are errors that name the closest valid key; values of the
wrong type are errors that name the field and the type it expects.
"""

from __future__ import annotations

import ast
import dataclasses
import difflib
import inspect
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml


class ConfigError(ValueError):
    """A configuration that cannot work; the message names the field."""


# PyYAML follows YAML 1.1: `1e-5` is a string (a float needs a dot), `yes/no/on/off` are
# booleans and `2024-01-01` is a date. Config files and overrides read YAML 1.2 scalars instead,
# so `learner.lr=1e-5` is a float and `model.system_prompt=no` is a string.
_FLOAT = re.compile(
    r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
    |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
    |[-+]?\.[0-9_]+(?:[eE][-+]?[0-9]+)?
    |[-+]?\.(?:inf|Inf|INF)
    |\.(?:nan|NaN|NAN))$""",
    re.X,
)
_BOOL = re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$")
_YAML11_ONLY = ("tag:yaml.org,2002:float", "tag:yaml.org,2002:bool", "tag:yaml.org,2002:timestamp")


class _Loader(yaml.SafeLoader):
    pass


_Loader.yaml_implicit_resolvers = {
    first: [r for r in resolvers if r[0] not in _YAML11_ONLY]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver("tag:yaml.org,2002:bool", _BOOL, list("tTfF"))
_Loader.add_implicit_resolver("tag:yaml.org,2002:float", _FLOAT, list("-+0123456789."))


class _Dumper(yaml.SafeDumper):
    """Quotes every string that either YAML 1.1 or our loader would read as something else."""


_Dumper.add_implicit_resolver("tag:yaml.org,2002:float", _FLOAT, list("-+0123456789."))


def _yaml_load(text: str) -> Any:
    return yaml.load(text, Loader=_Loader)  # noqa: S506 - a SafeLoader subclass


@dataclass
class LoraConfig:
    enabled: bool = False
    """Train LoRA adapters (peft) instead of all weights."""
    r: int = 8
    """LoRA rank."""
    alpha: int = 16
    """LoRA scaling numerator (scale = alpha / r)."""
    dropout: float = 0.0
    """Dropout on the LoRA branch."""
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "v_proj"])
    """Names of the linear modules that get adapters."""


@dataclass
class ModelConfig:
    path: str = "smollm2"
    """Policy model: a local HF folder, `smollm2` (the packaged SmolLM2-135M-Instruct), or a hub
    id where a hub is reachable."""
    dtype: str = "float32"
    """Weights dtype for training and rollout: float32 or bfloat16."""
    max_prompt_tokens: int = 256
    """Prompts are truncated from the left to this many tokens."""
    chat_template: bool = True
    """Wrap questions in the tokenizer's chat template when it has one."""
    system_prompt: str = ""
    """Optional system message for chat-templated prompts."""
    lora: LoraConfig = field(default_factory=LoraConfig)
    """LoRA settings for the policy."""


@dataclass
class DataConfig:
    train: str = ""
    """Training data file (JSONL, Parquet or CSV), or `gym:<task>` for generated reasoning-gym
    questions, e.g. `gym:basic_arithmetic`."""
    eval: str = ""
    """Held-out evaluation file, same formats; never trained on."""
    kind: str = "prompts"
    """Data kind of `train`: qa, prompts, preferences, ratings or rankings."""
    fields: dict[str, str] = field(default_factory=dict)
    """Column mapping from the file's names to ours, e.g. {query: question, gold: answer}."""
    val_fraction: float = 0.1
    """Fraction of rows held out for validation, chosen by a hash of the row content."""
    gym_size: int = 512
    """Number of generated questions for `gym:` sources."""
    seed: int = 0
    """Seed for generated data and shuffling."""


@dataclass
class RolloutConfig:
    backend: str = "vllm"
    """Generation backend: vllm (the product) or hf (transformers generate, for comparisons)."""
    num_engines: int = 1
    """Number of rollout actors, each holding one vLLM engine."""
    tensor_parallel_size: int = 1
    """vLLM tensor-parallel size per engine (GPU clusters)."""
    n_samples: int = 4
    """Samples per prompt (the group size for GRPO/RLOO)."""
    max_new_tokens: int = 64
    """Maximum tokens generated per sample."""
    temperature: float = 1.0
    """Sampling temperature."""
    top_p: float = 1.0
    """Nucleus sampling threshold."""
    enforce_eager: bool = True
    """Skip torch.compile / CUDA graphs in vLLM (faster start, slightly slower decode)."""
    kv_cache_gib: float = 1.0
    """KV-cache size per engine in GiB on CPU (VLLM_CPU_KVCACHE_SPACE)."""
    gpu_memory_utilization: float = 0.5
    """Fraction of GPU memory a vLLM engine may take (GPU clusters)."""
    weight_sync: str = "auto"
    """Weight transfer: auto, shm (one node), object_store (across nodes) or nccl (GPU)."""
    check_logprobs: bool = True
    """After each weight sync, compare rollout and learner logprobs on a probe batch."""


@dataclass
class RewardConfig:
    model_path: str = ""
    """Reward model folder (scalar head); empty means rule rewards only."""
    model_weight: float = 1.0
    """Weight of the reward-model score in the total reward."""
    rules: dict[str, float] = field(default_factory=lambda: {"exact_match": 1.0})
    """Rule rewards from rlhf/rewards.py and their weights, e.g. {exact_match: 1.0, length: 0.1}."""
    target_length: int = 32
    """Target response length in tokens for the `length` rule."""
    normalize: bool = False
    """Standardise the reward-model score over each batch."""


@dataclass
class ReferenceConfig:
    enabled: bool = True
    """Run a frozen reference model for the KL penalty (off when algo.kl_coef is 0)."""
    path: str = ""
    """Reference model folder; empty means the initial policy."""


@dataclass
class DeepSpeedConfig:
    zero_stage: int = 3
    """ZeRO stage (3 partitions parameters, gradients and optimizer states)."""
    offload_optimizer: bool = False
    """Keep optimizer states in CPU memory (GPU clusters)."""
    bf16: bool = False
    """Train in bfloat16 mixed precision."""
    gradient_clipping: float = 1.0
    """Global gradient-norm clip."""


@dataclass
class LearnerConfig:
    num_ranks: int = 2
    """DeepSpeed ranks in the learner group (each a Ray actor)."""
    lr: float = 1e-5
    """Policy learning rate."""
    critic_lr: float = 5e-5
    """Critic learning rate (PPO)."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    adam_betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    """AdamW betas."""
    warmup_steps: int = 0
    """Linear learning-rate warm-up steps."""
    micro_batch_size: int = 8
    """Sequences per rank per forward/backward pass."""
    ppo_epochs: int = 1
    """Passes over each experience batch."""
    mini_batches: int = 1
    """Optimizer steps per epoch (the batch is split into this many)."""
    backend: str = "auto"
    """torch.distributed backend: auto (nccl on GPU, gloo on CPU), gloo or nccl."""
    deepspeed: DeepSpeedConfig = field(default_factory=DeepSpeedConfig)
    """DeepSpeed settings."""


@dataclass
class AlgoConfig:
    name: str = "grpo"
    """Advantage estimator: ppo (GAE with a critic), grpo, rloo or reinforce_pp."""
    gamma: float = 1.0
    """Discount factor."""
    lam: float = 0.95
    """GAE lambda (PPO)."""
    clip_eps: float = 0.2
    """PPO ratio clip range."""
    dual_clip: float = 0.0
    """Dual-clip bound c > 1 for negative advantages; 0 disables."""
    value_clip: float = 0.2
    """Clip range of the value loss (PPO)."""
    vf_coef: float = 0.5
    """Value-loss coefficient (PPO)."""
    kl_coef: float = 0.02
    """KL penalty coefficient (initial value when adaptive)."""
    kl_estimator: str = "k3"
    """KL estimator: k1, k2 or k3."""
    kl_in_reward: bool = False
    """Put the KL penalty in the per-token reward (PPO style) instead of the loss (GRPO style)."""
    kl_target: float = 0.0
    """Target KL for the adaptive controller; 0 keeps kl_coef fixed."""
    kl_horizon: int = 10000
    """Horizon of the adaptive KL controller."""
    entropy_coef: float = 0.0
    """Entropy bonus coefficient."""
    scale_rewards: bool = True
    """GRPO: divide group-centred rewards by the group std."""


@dataclass
class TrainConfig:
    name: str = "run"
    """Run name; the run directory defaults to runs/<name>/."""
    steps: int = 20
    """RL steps."""
    prompts_per_step: int = 8
    """Prompts per step (each sampled rollout.n_samples times)."""
    save_every: int = 10
    """Checkpoint every this many steps (0: only at the end)."""
    seed: int = 0
    """Global seed."""
    overlap_rollout: bool = False
    """Generate the next batch while the learner updates (one step off-policy)."""
    log_every: int = 1
    """Write metrics every this many steps."""
    export: bool = True
    """Export the final policy as an HF folder in <run>/model."""


@dataclass
class ServeConfig:
    host: str = "127.0.0.1"
    """Address the HTTP proxy binds."""
    port: int = 8000
    """HTTP port."""
    model_name: str = "rlhf-qa"
    """Model name reported by /v1/models and accepted in requests."""
    num_replicas: int = 1
    """Replicas of the QA deployment (ignored when autoscaling is on)."""
    autoscale_min: int = 0
    """Autoscaling minimum replicas; 0 with autoscale_max 0 disables autoscaling."""
    autoscale_max: int = 0
    """Autoscaling maximum replicas."""
    max_tokens_limit: int = 512
    """Largest max_tokens a request may ask for."""
    api_keys: list[str] = field(default_factory=list)
    """Accepted API keys (also read from RLHF_API_KEYS); empty allows anonymous use."""
    admin_keys: list[str] = field(default_factory=list)
    """Keys for the review and admin routes."""
    feedback_db: str = "feedback.sqlite"
    """SQLite feedback store (WAL mode)."""
    input_guard: str = ""
    """Input guard classifier folder; empty uses rule checks only."""
    output_guard: str = ""
    """Output guard classifier folder; empty uses rule checks only."""
    guard_threshold: float = 0.5
    """Block when a guard classifier's unsafe probability exceeds this."""
    guard_rules: list[str] = field(default_factory=lambda: ["length", "injection", "pii"])
    """Rule checks to run: length (input), injection (input), pii (input and output)."""
    max_prompt_chars: int = 8000
    """The length rule blocks a question or conversation longer than this many characters."""
    max_model_len: int = 2048
    """Engine context window in tokens (prompt plus max_tokens), capped at the model's own."""
    default_max_tokens: int = 128
    """max_tokens when a request gives none (lowered to fit the context window)."""
    ask_temperature: float = 0.0
    """Sampling temperature for /ask (0 is greedy)."""
    max_ongoing_requests: int = 128
    """Requests one replica takes at once (Serve's max_ongoing_requests); vLLM batches them."""
    target_ongoing_requests: float = 32.0
    """Autoscaling target of in-flight requests per replica."""
    cpus_per_replica: float = 1.0
    """CPUs Ray reserves for each replica (its vLLM engine process comes on top)."""
    health_check_period_s: float = 10.0
    """Seconds between Serve's health checks of a replica (each asks the vLLM engine)."""
    health_check_timeout_s: float = 30.0
    """A health check slower than this marks the replica unhealthy; Serve replaces it."""


@dataclass
class TuneConfig:
    metric: str = "reward/mean"
    """Metric the sweep optimises."""
    mode: str = "max"
    """max or min."""
    num_samples: int = 4
    """Trials to sample from the space."""
    scheduler: str = "asha"
    """asha, pbt or fifo."""
    grace_period: int = 2
    """ASHA: steps before a trial may be stopped."""
    max_concurrent: int = 0
    """Concurrent trials; 0 lets the resources decide."""


@dataclass
class ResourcesConfig:
    address: str = ""
    """Ray address; empty uses RAY_ADDRESS or starts a local Ray."""
    use_gpu: bool = False
    """Place actors on GPUs (clusters); False runs everything on CPUs."""
    cpus_per_actor: float = 1.0
    """CPUs reserved for each actor's bundle."""
    gpus_per_rollout: float = 1.0
    """GPUs per rollout engine (times tensor_parallel_size)."""
    gpus_per_learner: float = 1.0
    """GPUs per learner rank."""
    gpus_per_reward: float = 0.0
    """GPUs for the reward actor (a fraction shares a GPU)."""
    gpus_per_reference: float = 0.0
    """GPUs for the reference actor."""
    colocate: bool = True
    """Pack reward, reference and learner ranks into shared bundles where they fit."""
    num_cpus: int = 0
    """CPUs a local Ray may use; 0 lets Ray count them."""


@dataclass
class FinetuneConfig:
    data: str = ""
    """Training file for this stage (qa for SFT; preferences, ratings or rankings for RM/DPO),
    or `gym:<task>` for generated QA pairs."""
    fields: dict[str, str] = field(default_factory=dict)
    """Column mapping from the file's names to ours."""
    epochs: float = 1.0
    """Passes over the training data (fractions allowed)."""
    lr: float = 2e-5
    """Learning rate (AdamW, linear warm-up then constant)."""
    batch_size: int = 8
    """Sequences (or pairs) per optimizer step, over all workers."""
    micro_batch_size: int = 4
    """Sequences (or pairs) per worker per forward pass."""
    max_length: int = 256
    """Tokens per sequence; longer ones are truncated (prompt from the left)."""
    num_workers: int = 2
    """Ray Train workers (DeepSpeed ranks)."""
    zero_stage: int = 3
    """DeepSpeed ZeRO stage for this stage."""
    val_fraction: float = 0.1
    """Held-out share for validation loss/accuracy, chosen by a hash of the question."""
    base_model: str = ""
    """Model to start from; empty means the previous stage's output (or model.path)."""
    beta: float = 0.1
    """DPO: strength of the implicit KL to the reference."""
    lora: bool = False
    """Train LoRA adapters (model.lora settings) and merge them into the export."""
    max_steps: int = 0
    """Stop after this many optimizer steps (0: no limit)."""


@dataclass
class EvalConfig:
    data: str = ""
    """Held-out QA file (or `gym:<task>`) with reference answers; never trained on."""
    size: int = 200
    """Questions generated for `gym:` sources."""
    seed: int = 12345
    """Seed for generated held-out questions (differs from data.seed so they are unseen)."""
    max_new_tokens: int = 64
    """Greedy answer length."""
    bootstrap: int = 1000
    """Bootstrap resamples for 95% confidence intervals."""
    reward_model: str = ""
    """Reward model for the quality proxies and win rate; empty skips them."""


@dataclass
class PipelineConfig:
    stages: list[str] = field(default_factory=lambda: ["sft", "pairs", "rm", "rl", "eval"])
    """Stages to run in order: sft, pairs, rm, dpo, rl, eval."""
    run_dir: str = "runs/pipeline"
    """Where stage artifacts and summary.json go."""
    pairs_k: int = 4
    """Answers generated per question for preference pairs."""
    pairs_questions: int = 256
    """Questions used to build preference pairs."""
    human_feedback: list[str] = field(default_factory=list)
    """Extra ratings/rankings/preferences files merged into the pairs (kind from the columns)."""


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    """Policy model."""
    data: DataConfig = field(default_factory=DataConfig)
    """Training and evaluation data."""
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    """vLLM rollout engines."""
    reward: RewardConfig = field(default_factory=RewardConfig)
    """Reward model and rule rewards."""
    reference: ReferenceConfig = field(default_factory=ReferenceConfig)
    """Frozen reference model for the KL penalty."""
    learner: LearnerConfig = field(default_factory=LearnerConfig)
    """DeepSpeed learner group."""
    algo: AlgoConfig = field(default_factory=AlgoConfig)
    """RL algorithm."""
    train: TrainConfig = field(default_factory=TrainConfig)
    """Run length, seeds, checkpoints."""
    serve: ServeConfig = field(default_factory=ServeConfig)
    """The QA endpoint."""
    tune: TuneConfig = field(default_factory=TuneConfig)
    """Hyperparameter sweeps."""
    resources: ResourcesConfig = field(default_factory=ResourcesConfig)
    """Ray cluster and per-role resources."""
    sft: FinetuneConfig = field(default_factory=FinetuneConfig)
    """Supervised fine-tuning on QA pairs."""
    rm: FinetuneConfig = field(default_factory=lambda: FinetuneConfig(lr=5e-5))
    """Reward-model training on preference pairs (Bradley-Terry)."""
    dpo: FinetuneConfig = field(default_factory=lambda: FinetuneConfig(lr=1e-6))
    """Direct preference optimisation on preference pairs."""
    eval: EvalConfig = field(default_factory=EvalConfig)
    """Held-out evaluation."""
    pipeline: PipelineConfig = field(default_factory=PipelineConfig)
    """The end-to-end pipeline."""


# ----------------------------------------------------------------------------- building


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Check `value` against the annotation `tp`; ints widen to floats, nothing else converts."""
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping of {tp.__name__} fields, got {value!r}")
        return _build(tp, value, where)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, where)
            except ConfigError:
                pass
        raise ConfigError(f"{where}: expected {_type_name(tp)}, got {value!r}")
    if origin is list:
        (item,) = typing.get_args(tp)
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected a list of {_type_name(item)}, got {value!r}")
        return [_coerce(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        key_t, val_t = typing.get_args(tp)
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return {_coerce(k, key_t, where): _coerce(v, val_t, f"{where}.{k}") for k, v in value.items()}
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is str and isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    if tp in (int, float, str, bool) and (type(value) is not tp):
        raise ConfigError(f"{where}: expected {tp.__name__}, got {type(value).__name__} {value!r}")
    return value


def _build(cls: type, data: dict, prefix: str = "") -> Any:
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in data.items():
        where = f"{prefix}.{key}" if prefix else str(key)
        if key not in names:
            close = difflib.get_close_matches(str(key), names, n=1, cutoff=0.5)
            hint = f"; did you mean '{prefix + '.' if prefix else ''}{close[0]}'?" if close else ""
            raise ConfigError(f"unknown config key '{where}'{hint} (valid: {', '.join(names)})")
        kwargs[key] = _coerce(value, hints[key], where)
    return cls(**kwargs)


def _set_dotted(tree: dict, dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = tree
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override '{dotted}': '{part}' is not a section")
    node[parts[-1]] = value


def parse_overrides(overrides: list[str]) -> dict:
    """`["algo.kl_coef=0.05", "train.steps=10"]` -> nested dict; values parse as YAML scalars."""
    tree: dict = {}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override '{item}' must look like section.field=value")
        key, raw = item.split("=", 1)
        _set_dotted(tree, key.strip(), _yaml_load(raw) if raw.strip() else "")
    return tree


def _merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def from_dict(data: dict) -> Config:
    cfg = _build(Config, data or {})
    validate(cfg)
    return cfg


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Read YAML at `path` (or start from defaults), apply dotted overrides, check everything."""
    data: dict = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file not found: {p}")
        try:
            data = _yaml_load(p.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{p}: not valid YAML: {exc}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{p}: expected a mapping of sections at the top level")
    data = _merge(data, parse_overrides(overrides or []))
    return from_dict(data)


def to_dict(cfg: Any) -> dict:
    return dataclasses.asdict(cfg)


def to_yaml(cfg: Any) -> str:
    """YAML text that `load_config` reads back to an equal config."""
    return yaml.dump(to_dict(cfg), Dumper=_Dumper, sort_keys=False, allow_unicode=True)


def dump_config(cfg: Config, path: str | Path) -> None:
    Path(path).write_text(to_yaml(cfg))


def field_docs(cls: type = Config, prefix: str = "") -> dict[str, str]:
    """Map dotted field names to the docstring written under each field."""
    tree = ast.parse(inspect.getsource(cls))
    body = tree.body[0].body
    docs: dict[str, str] = {}
    hints = typing.get_type_hints(cls)
    for node, nxt in zip(body, body[1:] + [None]):
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            name = node.target.id
            doc = ""
            if isinstance(nxt, ast.Expr) and isinstance(getattr(nxt, "value", None), ast.Constant):
                doc = " ".join(str(nxt.value.value).split())
            dotted = f"{prefix}{name}"
            if dataclasses.is_dataclass(hints[name]):
                docs.update(field_docs(hints[name], dotted + "."))
            else:
                docs[dotted] = doc
    return docs


def get_dotted(cfg: Any, dotted: str) -> Any:
    node = cfg
    for part in dotted.split("."):
        node = getattr(node, part)
    return node


# ----------------------------------------------------------------------------- checks

ALGOS = ("ppo", "grpo", "rloo", "reinforce_pp")
GROUP_ALGOS = ("grpo", "rloo")


def _check(ok: bool, where: str, message: str) -> None:
    if not ok:
        raise ConfigError(f"{where}: {message}")


def validate(cfg: Config) -> None:
    """Cross-field checks that must fail before any actor starts."""
    _check(cfg.algo.name in ALGOS, "algo.name", f"expected one of {ALGOS}, got '{cfg.algo.name}'")
    _check(cfg.algo.kl_estimator in ("k1", "k2", "k3"), "algo.kl_estimator", "expected k1, k2 or k3")
    _check(bool(cfg.model.path.strip()), "model.path", "is empty: set a folder, `smollm2`, `tiny` or a hub id")
    _check(cfg.model.dtype in ("float32", "bfloat16"), "model.dtype", "expected float32 or bfloat16")
    _check(cfg.rollout.backend in ("vllm", "hf"), "rollout.backend", "expected vllm or hf")
    _check(
        cfg.rollout.weight_sync in ("auto", "shm", "object_store", "nccl"),
        "rollout.weight_sync",
        "expected auto, shm, object_store or nccl",
    )
    _check(cfg.rollout.n_samples >= 1, "rollout.n_samples", "must be at least 1")
    if cfg.algo.name in GROUP_ALGOS:
        _check(
            cfg.rollout.n_samples >= 2,
            "rollout.n_samples",
            f"{cfg.algo.name} compares samples within a group and needs at least 2 per prompt",
        )
    _check(cfg.learner.num_ranks >= 1, "learner.num_ranks", "must be at least 1")
    _check(cfg.learner.micro_batch_size >= 1, "learner.micro_batch_size", "must be at least 1")
    _check(cfg.learner.mini_batches >= 1, "learner.mini_batches", "must be at least 1")
    _check(cfg.learner.deepspeed.zero_stage in (0, 1, 2, 3), "learner.deepspeed.zero_stage", "expected 0-3")
    batch = cfg.train.prompts_per_step * cfg.rollout.n_samples
    per_update = cfg.learner.num_ranks * cfg.learner.mini_batches
    _check(
        batch % per_update == 0,
        "train.prompts_per_step",
        f"the batch of {cfg.train.prompts_per_step} prompts x {cfg.rollout.n_samples} samples = {batch} "
        f"sequences does not divide across learner.num_ranks={cfg.learner.num_ranks} x "
        f"learner.mini_batches={cfg.learner.mini_batches}",
    )
    _check(cfg.train.steps >= 1, "train.steps", "must be at least 1")
    _check(cfg.train.save_every >= 0, "train.save_every", "must be 0 or more")
    _check(0.0 <= cfg.data.val_fraction < 1.0, "data.val_fraction", "must be in [0, 1)")
    _check(cfg.data.kind in DATA_KINDS, "data.kind", f"expected one of {DATA_KINDS}")
    _check(cfg.tune.mode in ("max", "min"), "tune.mode", "expected max or min")
    _check(cfg.tune.scheduler in ("asha", "pbt", "fifo"), "tune.scheduler", "expected asha, pbt or fifo")
    _check(cfg.serve.max_tokens_limit >= 1, "serve.max_tokens_limit", "must be at least 1")


DATA_KINDS = ("qa", "prompts", "preferences", "ratings", "rankings")
