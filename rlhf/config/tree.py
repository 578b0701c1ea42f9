"""The root of the typed configuration tree, and loading it from YAML with dotted overrides.

Every field has a default in its section (rlhf/config/training.py for the RL run,
rlhf/config/workflow.py for the stages around it) and nowhere else, with a docstring right under
it (shown by `rlhf config show --docs`). Unknown keys are errors that name the closest valid key;
values of the wrong type are errors that name the field and the type it expects
(rlhf/config/typed_yaml.py); choices and cross-field rules are checked in rlhf/config/checks.py.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import yaml

from rlhf.config import typed_yaml
from rlhf.config.checks import CHOICES, valid_values, validate
from rlhf.config.training import (
    AlgoConfig,
    DataConfig,
    LearnerConfig,
    ModelConfig,
    ReferenceConfig,
    ResourcesConfig,
    RewardConfig,
    RolloutConfig,
    TrainConfig,
)
from rlhf.config.typed_yaml import ConfigError, parse_overrides, to_yaml
from rlhf.config.workflow import (
    EvalConfig,
    FinetuneConfig,
    MonitorConfig,
    PipelineConfig,
    RedteamConfig,
    ReviewConfig,
    ServeConfig,
    TuneConfig,
)


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
    redteam: RedteamConfig = field(default_factory=RedteamConfig)
    """Red teaming and the release gate."""
    monitor: MonitorConfig = field(default_factory=MonitorConfig)
    """Production monitoring of the served versions and its drift bounds."""


# ----------------------------------------------------------------------------- building



def from_dict(data: dict) -> Config:
    cfg = typed_yaml.build(Config, data or {})
    # `auto` is resolved here, so saved configs name what ran.
    native = "bfloat16" if cfg.resources.use_gpu or native_bf16() else "float32"
    cfg.model.dtype = native if cfg.model.dtype == "auto" else cfg.model.dtype
    cfg.model.inference_dtype = native if cfg.model.inference_dtype == "auto" else cfg.model.inference_dtype
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
    """Dotted field name -> the docstring under it, for the whole tree by default; a choice
    field's doc ends with its valid values, read from the registry that defines them."""
    docs = typed_yaml.field_docs(cls or Config, prefix)
    for dotted in docs:
        if dotted in CHOICES:
            docs[dotted] += f" Valid: {', '.join(valid_values(dotted))}."
    return docs
