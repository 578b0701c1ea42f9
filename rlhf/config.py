"""One typed configuration tree for every stage, loaded from YAML with dotted overrides.

Every field has a default here and nowhere else, and a docstring right under it (shown by
`rlhf config show --docs`). Unknown keys are errors that name the closest valid key; values of
the wrong type are errors that name the field and the type it expects (rlhf/typed_yaml.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import yaml

from rlhf import typed_yaml
from rlhf.config_checks import ALGOS, DATA_KINDS, GROUP_ALGOS, PROMOTE_METRICS, REVIEW_METHODS, validate  # noqa: F401
from rlhf.typed_yaml import ConfigError, get_dotted, parse_overrides, to_dict, to_yaml  # noqa: F401 - re-exported

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
    """Weights dtype for rollout, reference and reward passes (and the learner's autocast):
    float32, bfloat16, or auto: bfloat16 on GPUs and on CPUs that multiply it natively
    (avx512_bf16 or AMX), else float32. Without native support bf16 matmuls are emulated on
    the CPU, >100x slower than fp32 (measured on an AVX2-only EPYC). auto is resolved when
    the config is loaded, so saved configs name what ran."""
    attention: str = "auto"
    """Attention kernel of the learner and reference (a transformers attn_implementation): auto,
    eager, sdpa or flash_attention_2. auto is sdpa on GPUs and on CPUs for sequences over 512
    tokens, else eager: for short QA sequences on CPU eager trained 14% faster than sdpa here."""
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
    bf16: bool | None = None
    """Train in bfloat16 mixed precision (bf16 weights and gradients, fp32 master weights and
    Adam moments). Unset: on when model.dtype is bfloat16."""
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
    reviewer_keys: dict[str, str] = field(default_factory=dict)
    """Reviewer name -> key for the review page and its routes only (also read from
    RLHF_REVIEWER_KEYS as name=key,name=key); an admin key works there as reviewer `admin`."""
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
    """CPUs Ray reserves for each replica; on CPU also the thread count of its vLLM engine."""
    health_check_period_s: float = 10.0
    """Seconds between Serve's health checks of a replica (each asks the vLLM engine)."""
    health_check_timeout_s: float = 30.0
    """A health check slower than this marks the replica unhealthy; Serve replaces it."""


@dataclass
class TuneConfig:
    stage: str = "rl"
    """What each trial runs: rl (`rlhf train`), or sft, rm or dpo (that stage's training, with
    its <stage>.max_steps as the trial's length and validation reported every step)."""
    metric: str = "reward/mean"
    """Metric the sweep optimises (val/loss, val/accuracy, ... for sft, rm and dpo trials)."""
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
class ReviewConfig:
    questions: str = ""
    """Questions the review queue draws from (a QA or prompts file, or `gym:<task>`); empty uses
    data.train. Questions of the validation set (eval.data) are never queued."""
    candidates: int = 64
    """Questions the current model answers twice (rollout sampling settings) per queue batch."""
    batch_size: int = 20
    """Items one `rlhf review queue` adds to the queue."""
    random_fraction: float = 0.1
    """Share of a batch drawn at random (single answers to rate): calibrates reviewers and checks
    what the targeted selection misses."""
    production_fraction: float = 0.3
    """Largest share of a batch given to endpoint answers that the output guard withheld or that
    users gave a thumbs-down."""
    reward_model: str = ""
    """Reward model that picks the answer pairs it is least sure of (smallest score difference);
    empty uses reward.model_path; with neither, a batch has no `uncertain` items."""
    reviewers_per_item: int = 2
    """Reviews an item collects before it leaves the queue; more than one measures agreement."""
    run_dir: str = "runs/review"
    """Where `rlhf round` writes round-000 (the starting model, evaluated), round-001, ..."""
    method: str = "dpo"
    """How a round retrains the last promoted model: dpo, or rm+rl (a reward model on the pairs,
    then RL against it with the rl settings)."""
    sft_corrections: bool = False
    """Before the preference step, fine-tune on the corrected answers (sft section settings)."""
    production_feedback: bool = True
    """Train on the endpoint users' feedback as well as on the reviews."""
    promote_metric: str = "accuracy"
    """Validation metric (eval.data, see rlhf/evaluate.py) a round must not make worse to be promoted."""
    tolerance: float = 0.0
    """A round is promoted when promote_metric is worse than the promoted model's by at most this."""
    target: float = 0.0
    """Value of promote_metric on the validation set that is good enough: the round report says
    when the loop can stop; 0 disables."""


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
    review: ReviewConfig = field(default_factory=ReviewConfig)
    """Human review: the review queue and training rounds that learn from it."""


# ----------------------------------------------------------------------------- building



def from_dict(data: dict) -> Config:
    cfg = typed_yaml.build(Config, data or {})
    if cfg.model.dtype == "auto":  # resolved here, so saved configs name what ran
        cfg.model.dtype = "bfloat16" if cfg.resources.use_gpu or native_bf16() else "float32"
    validate(cfg)
    return cfg


def native_bf16(cpuinfo: str = "/proc/cpuinfo") -> bool:
    """Whether this machine's CPU multiplies bfloat16 in hardware (avx512_bf16 or AMX)."""
    try:
        flags = set(Path(cpuinfo).read_text().split())
    except OSError:
        return False
    return bool(flags & {"avx512_bf16", "amx_bf16"})


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Read YAML at `path` (or start from defaults), apply dotted overrides, check everything."""
    data: dict = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file not found: {p}")
        try:
            data = typed_yaml.yaml_load(p.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{p}: not valid YAML: {exc}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{p}: expected a mapping of sections at the top level")
    data = typed_yaml.merge(data, parse_overrides(overrides or []))
    return from_dict(data)




def dump_config(cfg: Config, path: str | Path) -> None:
    Path(path).write_text(to_yaml(cfg))


def field_docs(cls: type | None = None, prefix: str = "") -> dict[str, str]:
    """Dotted field name -> the docstring under it, for the whole tree by default."""
    return typed_yaml.field_docs(cls or Config, prefix)
