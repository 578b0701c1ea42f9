"""Config sections of an RL run: model, data, rollout, reward, reference, learner, algorithm,
training and resources. Each field's docstring is its documentation (`rlhf config show --docs`).
"""

from __future__ import annotations

from dataclasses import dataclass, field


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
    (avx512_bf16 or AMX), else float32: without native support bf16 matmuls are emulated on
    the CPU and far slower than fp32 (bench/README.md, Measurements). auto is resolved when
    the config is loaded, so saved configs name what ran."""
    inference_dtype: str = ""
    """Weights dtype of the offline engines that only answer, outside RL: the evaluation's and
    the preference-pair sampler's. float32, bfloat16, auto (as for dtype), or empty: dtype.
    Training in fp32 and answering in bf16 keeps what RL taught, since rounding the weights once
    keeps a small update in expectation (bench/README.md, RL recipes)."""
    attention: str = "auto"
    """Attention kernel of the learner and reference (a transformers attn_implementation): auto,
    eager, sdpa or flash_attention_2. auto is sdpa on GPUs and on CPUs for sequences over 512
    tokens, else eager, which trained faster than sdpa on short QA sequences on CPU
    (bench/README.md, Measurements)."""
    max_prompt_tokens: int = 256
    """Prompts are truncated from the left to this many tokens."""
    chat_template: bool = True
    """Wrap questions in the tokenizer's chat template when it has one."""
    system_prompt: str = ""
    """Optional system message for chat-templated prompts; the endpoint and red teaming also put
    it before a chat that brings no system turn of its own."""
    lora: LoraConfig = field(default_factory=LoraConfig)
    """LoRA settings for the policy."""


@dataclass
class DataConfig:
    train: str = ""
    """Training data file (JSONL, Parquet or CSV), or `gym:<task>` for generated reasoning-gym
    questions, e.g. `gym:basic_arithmetic`."""
    kind: str = "prompts"
    """Data kind of `train` (rlhf/data/kinds.py)."""
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
    """Weight transfer from the learner into the engines: shm (a file in /dev/shm, one node),
    object_store (Ray's object store, across nodes), auto (shm on one node, else object_store),
    or nccl (GPUs only: streamed GPU to GPU through vLLM's weight-transfer engine, full weights,
    no LoRA). ipc (CUDA IPC) needs engines on the learner's GPUs, which the layout does not place.
    With model.lora.enabled only the adapter travels."""
    check_logprobs: bool = True
    """After each weight sync, compare rollout and learner logprobs on a probe batch."""
    max_logprob_diff: float = -1.0
    """The run stops when the probe's largest |engine - learner| logprob exceeds this (a sync
    that left an engine on other weights). -1 picks by model.dtype: 1e-3 in float32, 1.0 in
    bfloat16 (bench/README.md, Measurements); 0 turns the check off."""


@dataclass
class RewardConfig:
    model_path: str = ""
    """Reward model folder (scalar head); empty means rule rewards only."""
    model_weight: float = 1.0
    """Weight of the reward-model score in the total reward."""
    rules: dict[str, float] = field(default_factory=lambda: {"exact_match": 1.0})
    """Rule rewards (rlhf/rl/rewards.py) and their weights, e.g. {exact_match: 1.0, length: 0.1}."""
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
    share_prompts: bool = True
    """The learner and the reference run each prompt once per micro-batch, its samples' responses
    behind it under a 4D attention mask (or, with flash attention, on the prompt's cached keys and
    values; rlhf/models/logprobs.py): the same logprobs, with a group of n samples paying for its
    prompt once instead of n times."""
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
    """Advantage estimator (rlhf/rl/advantages.py); ppo (GAE) trains a critic beside the policy."""
    gamma: float = 1.0
    """Discount factor."""
    lam: float = 0.95
    """GAE lambda (PPO)."""
    policy_loss: str = "ppo_clip"
    """Policy loss (rlhf/rl/losses.py): ppo_clip is the token-level clipped ratio; gspo clips one
    ratio per sequence (the exp of its mean token log-ratio); with loss_agg seq_mean_token_mean
    it is the paper's mean over sequences."""
    clip_eps: float = 0.2
    """Ratio clip range (per token for ppo_clip, per sequence for gspo); the lower side when
    clip_eps_high is set."""
    clip_eps_high: float = 0.0
    """Upper side of the ratio clip, 1 + clip_eps_high ("clip-higher", DAPO uses 0.28); 0: the
    same as clip_eps."""
    tis_cap: float = 0.0
    """Truncated importance sampling: weigh each token's policy loss by min(p_learner /
    p_engine, tis_cap) to correct the gap between the engine's and the learner's logprobs
    (verl and OpenRLHF use 2); 0 disables."""
    loss_agg: str = "micro_token_mean"
    """How per-token policy losses become the mini-batch loss (rlhf/rl/aggregation.py):
    token_mean over every valid token of the mini-batch on all ranks, seq_mean_token_mean,
    seq_mean_token_sum_norm (Dr. GRPO), or micro_token_mean (per micro-batch, then averaged)."""
    dynamic_sampling: bool = False
    """DAPO's dynamic sampling (rlhf/rl/dynamic.py): drop prompt groups whose samples all got
    the same reward and draw more prompts until train.prompts_per_step groups differ."""
    max_draws: int = 3
    """With dynamic_sampling: draws of train.prompts_per_step prompts per step at most; a batch
    still short of informative groups is topped up with uninformative ones."""
    dual_clip: float = 0.0
    """Dual-clip bound c > 1 for negative advantages; 0 disables."""
    value_clip: float = 0.2
    """Clip range of the value loss (PPO)."""
    vf_coef: float = 0.5
    """Value-loss coefficient (PPO)."""
    kl_coef: float = 0.02
    """KL penalty coefficient (initial value when adaptive)."""
    kl_estimator: str = "k3"
    """KL estimator (rlhf/rl/kl.py): k1 is the log-ratio, k2 half its square, k3 Schulman's
    unbiased estimator that is never negative."""
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
    max_failures: int = 3
    """Actor deaths a run survives: a reward, reference or rollout actor is restarted by Ray and
    its call sent again (an engine gets the last weights first); a dead learner rank restarts the
    learner group from the last checkpoint (before the first checkpoint, or an engine on a GPU
    transport: every role is rebuilt). Every failure is a line of <run>/failures.jsonl. 0: the
    first ends the run."""


@dataclass
class ResourcesConfig:
    address: str = ""
    """Ray address; empty uses RAY_ADDRESS or starts a local Ray."""
    use_gpu: bool = False
    """Place actors on GPUs (clusters); False runs everything on CPUs."""
    cpus_per_actor: float = 1.0
    """CPUs reserved for each actor's bundle."""
    cpus_per_rollout: float = 0.0
    """CPUs of a rollout engine's bundle (its threads follow them); 0 means cpus_per_actor. On one
    CPU box the roles take turns, so the engine may have every core while it generates."""
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
    role_resources: dict[str, dict[str, float]] = field(default_factory=dict)
    """Custom Ray resources each actor of a role asks for, by role (rollout, learner, reward,
    reference), e.g. {rollout: {gen_node: 1}}: the role then runs only on nodes started with
    them (`ray start --resources '{"gen_node": 4}'`)."""
