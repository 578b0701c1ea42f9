"""The RL trainer. One step reads as the algorithm:

    generate -> (reward | reference | old logprobs & values, concurrently) -> advantages
             -> update -> weight sync (+ logprob agreement probe)

With one optimizer step per batch and no critic the old-logprob pass is skipped: the update's
own pass gives the same numbers (rlhf/rl/batch.py single_update, decided once in the trainer).

The trainer talks to its roles through the small interfaces below, so tests can hand it
in-process objects and the real run hands it Ray actors (actors/launch.py).
"""

from __future__ import annotations

import json
import random
import signal
import threading
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch

from rlhf.config.tree import Config
from rlhf.data.prompts import PromptBatch, PromptSampler, PromptSet
from rlhf.rl.advantages import ADVANTAGES, compute_advantages, kl_penalised_token_rewards
from rlhf.rl.batch import Experience, Rollout, Samples, pack, pad_float_lists, single_update
from rlhf.rl.dynamic import GroupFilter, assemble, split_groups
from rlhf.rl.kl import kl_estimate, make_kl_controller
from rlhf.rl.masked import masked_sum
from rlhf.tracking import MetricsLog, Timer, plot_metrics


class RolloutEngines(Protocol):
    def generate(self, prompt_ids: list[list[int]], prompt_index: list[int], seed: int) -> Rollout: ...
    def load_weights(self, packet: Any) -> float: ...
    def logprobs(self, prompt_ids: list[list[int]], response_ids: list[list[int]]) -> list[list[float]]: ...


class RewardScorer(Protocol):
    def score_async(self, questions, responses, references, choices, n_tokens) -> Future: ...


class ReferencePolicy(Protocol):
    def logprobs_async(self, sequences, attention_mask, prompt_len: int, response_len: int) -> Future: ...


class Learner(Protocol):
    def forward_async(self, samples: Samples) -> Future: ...  # -> {"old_logprobs", "values", stats}
    def update(self, exp: Experience, kl_coef: float) -> dict: ...
    def publish_weights(self) -> Any: ...
    def weight_version(self) -> int: ...
    def save(self, folder: str, tag: str) -> None: ...
    def load(self, folder: str, tag: str) -> int: ...
    def export(self, out_dir: str) -> str: ...


@dataclass
class Roles:
    rollout: RolloutEngines
    reward: RewardScorer
    reference: ReferencePolicy | None
    learner: Learner
    num_ranks: int = 1


def merge_metrics(*parts: dict) -> dict:
    """One step's metrics from its parts; each name has one source, so a clash is a bug."""
    merged: dict = {}
    for part in parts:
        clash = merged.keys() & part.keys()
        if clash:
            raise ValueError(f"metrics reported twice in one step: {sorted(clash)}")
        merged.update(part)
    return merged


class Interrupted(Exception):
    """Ctrl-C during training: the trainer saved a checkpoint before raising this."""


class WeightSyncError(RuntimeError):
    """The rollout engines are not on the weights the learner published: a rollout sampled with
    another version, or the engine and the learner disagree on logprobs after a sync."""


def check_weight_version(rollout: Rollout, published: int) -> None:
    """Refuse a rollout that was not sampled with the version just published (a sync that never
    reached an engine would otherwise train on samples of a stale policy without a sign)."""
    stale = sorted(set(rollout.weight_version) - {published})
    if stale:
        raise WeightSyncError(f"the rollout was sampled with weight version(s) {stale}, but the learner published "
                              f"version {published}: an engine missed a weight sync")


PROBE_BOUNDS = {"float32": 1e-3, "bfloat16": 1.0}
"""rollout.max_logprob_diff when left at -1, by model.dtype: the largest engine-learner logprob
gap after a sync that still means "the same weights" (bench/README.md, Measurements)."""


def sampling_seed(run_seed: int, step: int, draw: int = 0) -> int:
    """The engines' sampling seed for draw `draw` of step `step` (engine i adds i): a function of
    the run seed and the position only, so a resumed run samples what the uninterrupted one did."""
    return (run_seed * 1_000_003 + step * 1_009 + draw) % (2**31 - 1)


def probe_bound(cfg: Config) -> float:
    """The probe bound that stops a run (0: never)."""
    bound = cfg.rollout.max_logprob_diff
    return PROBE_BOUNDS[cfg.model.dtype] if bound < 0 else bound


def check_probe(diff: float, bound: float, version: int) -> None:
    """Fail loudly when engine and learner score the same tokens differently after a sync."""
    if bound > 0 and diff > bound:
        raise WeightSyncError(f"after the sync to weight version {version} the engine's logprobs differ from the "
                              f"learner's by {diff:.3g} > rollout.max_logprob_diff={bound:g}: the engine is not "
                              "on the learner's weights (a sync that did nothing, or a wrong adapter or dtype)")


class Trainer:
    """Owns the step counter, the prompt sampler and the KL controller; runs `rl_step`s."""

    def __init__(self, cfg: Config, roles: Roles, run_dir: Path, tokenizer, progress: Callable | None = None):
        self.cfg, self.roles, self.run_dir, self.tokenizer = cfg, roles, run_dir, tokenizer
        self.prompts = PromptSet(cfg, tokenizer)
        self.sampler = PromptSampler(len(self.prompts), cfg.train.prompts_per_step, cfg.train.seed)
        self.kl_ctl = make_kl_controller(cfg.algo)
        self.use_kl = roles.reference is not None and cfg.algo.kl_coef > 0
        # Decided here once (rlhf/rl/batch.py single_update): with one optimizer step per batch and
        # no critic, the score phase runs reward and reference only.
        self.single_update = single_update(cfg.learner.ppo_epochs, cfg.learner.mini_batches,
                                           ADVANTAGES[cfg.algo.name].needs_critic)
        self.step = 0
        # The policy version the engines must sample with: the learner's (0 for fresh roles).
        self.weight_version = roles.learner.weight_version()
        self.progress = progress or (lambda step, metrics: None)
        self.pad_id = tokenizer.pad_token_id

    # ------------------------------------------------------------------------- the step

    def rl_step(self) -> dict:
        timer = Timer()
        # Fresh samples from the current policy; n per prompt, grouped by prompt. With dynamic
        # sampling they are scored first, and groups whose rewards all tie are replaced.
        if self.cfg.algo.dynamic_sampling:
            batch, rollout, scored, draw_stats = self.draw_informative(timer)
        else:
            (batch, rollout), scored, draw_stats = self.draw(timer), None, {}
        samples = pack(rollout, self.pad_id)
        # Reward, reference logprobs and the learner's own logprobs/values need only the
        # samples, not each other: run the passes at once.
        with timer("score"):
            rewards_f = self.roles.reward.score_async(*self.reward_inputs(batch, rollout)) if scored is None else None
            ref_f = self.roles.reference.logprobs_async(samples.sequences, samples.attention_mask, samples.prompt_len,
                                                        samples.response_len) if self.use_kl else None
            # With a single update the learner's update pass is its own "old" pass (the batch
            # carries old_logprobs=None), and it reports entropy and the behaviour gap from there.
            old_f = None if self.single_update else self.roles.learner.forward_async(samples)
            rewards, components = rewards_f.result() if scored is None else scored
            old = old_f.result() if old_f is not None else {"old_logprobs": None, "values": None}
            ref_logprobs = ref_f.result() if ref_f is not None else None
        # Advantages are pure tensor math (rlhf/rl/advantages.py), done here on the trainer.
        with timer("advantages"):
            exp, kl = self.make_experience(samples, torch.tensor(rewards), old, ref_logprobs)
        # One PPO/GRPO update across all ZeRO-3 ranks.
        with timer("update"):
            update_stats = self.roles.learner.update(exp, self.kl_ctl.value)
        # The engines must sample from the updated policy next step.
        with timer("sync"):
            sync_stats = self.sync_weights()
        # Both sides now hold the new weights: they must score the same tokens alike.
        if self.cfg.rollout.check_logprobs:
            with timer("probe"):
                sync_stats["rollout/logprob_diff"] = diff = self.probe_logprob_diff(rollout)
            check_probe(diff, probe_bound(self.cfg), self.weight_version)
        self.kl_ctl.update(kl, len(exp))
        self.step += 1
        learner_stats = {k: v for k, v in old.items() if k not in ("old_logprobs", "values")}
        return merge_metrics(self.rollout_metrics(rollout, exp, rewards, components, kl), learner_stats,
                             update_stats, sync_stats, draw_stats, timer.metrics())

    # ------------------------------------------------------------------------- pieces

    def draw(self, timer: Timer, draw: int = 0) -> tuple[PromptBatch, Rollout]:
        """The next train.prompts_per_step prompts and n samples of each."""
        batch = self.prompts.batch(self.sampler.next_indices())
        seed = sampling_seed(self.cfg.train.seed, self.step, draw)
        with timer("generate"):
            rollout = self.roles.rollout.generate(batch.prompt_ids, list(range(len(batch.prompt_ids))), seed)
        check_weight_version(rollout, self.weight_version)
        return batch, rollout

    def draw_informative(self, timer: Timer) -> tuple[PromptBatch, Rollout, tuple, dict]:
        """Draw and score until the batch holds prompts_per_step groups whose rewards differ
        (or algo.max_draws draws are spent); -> batch, rollout, (rewards, components), stats."""
        groups = GroupFilter(self.cfg.train.prompts_per_step)
        while not groups.full and groups.draws < self.cfg.algo.max_draws:
            batch, rollout = self.draw(timer, groups.draws)
            with timer("score"):
                rewards, components = self.roles.reward.score_async(*self.reward_inputs(batch, rollout)).result()
            groups.add(split_groups(batch, rollout, rewards, components))
        batch, rollout, rewards, components = assemble(groups.batch())
        return batch, rollout, (rewards, components), groups.metrics()

    def reward_inputs(self, batch: PromptBatch, rollout: Rollout) -> tuple:
        idx = rollout.prompt_index
        return ([batch.questions[i] for i in idx], rollout.response_text, [batch.references[i] for i in idx],
                [batch.choices[i] for i in idx], [len(r) for r in rollout.response_ids])

    def make_experience(self, samples: Samples, rewards: torch.Tensor, old: dict,
                        ref_logprobs: torch.Tensor | None) -> tuple[Experience, float]:
        """The learner's batch: KL, advantages and returns; also the mean sequence KL."""
        a, mask = self.cfg.algo, samples.response_mask
        # Without an old pass the engine's logprobs of its own samples stand in for the KL estimate.
        policy = old["old_logprobs"] if old["old_logprobs"] is not None else samples.rollout_logprobs
        kl_tokens = kl_estimate(policy, ref_logprobs, a.kl_estimator) if ref_logprobs is not None else None
        kl = float(masked_sum(kl_tokens, mask, dim=-1).mean()) if kl_tokens is not None else 0.0
        kwargs: dict = {"rewards": rewards}
        if a.kl_in_reward and ref_logprobs is not None:
            # PPO-style: the penalty is part of the per-token reward, not of the loss.
            kwargs = {"token_rewards": kl_penalised_token_rewards(rewards, policy - ref_logprobs,
                                                                  self.kl_ctl.value, mask)}
        adv, returns = compute_advantages(
            a.name, mask=mask, values=old["values"], group_size=self.cfg.rollout.n_samples,
            gamma=a.gamma, lam=a.lam, scale_rewards=a.scale_rewards, **kwargs)
        exp = Experience.of(samples, rewards=rewards, advantages=adv, returns=returns,
                            old_logprobs=old["old_logprobs"], ref_logprobs=ref_logprobs, values=old["values"])
        return exp, kl

    def sync_weights(self) -> dict:
        """Publish the updated policy and load it into the engines; the metrics name the version
        this step's rollout sampled with and the bytes this sync moved (an adapter with LoRA)."""
        # Timed apart (inside timing/sync): the learner's gather and publish, the engine's reload.
        parts = Timer()
        sampled_with = self.weight_version
        with parts("sync_publish"):
            packet = self.roles.learner.publish_weights()
        with parts("sync_load"):
            load_seconds = self.roles.rollout.load_weights(packet)
        self.weight_version = packet.version
        return {"perf/weight_load_seconds": load_seconds, "perf/sync_bytes": float(packet.num_bytes),
                "perf/weight_version": float(sampled_with),
                **{k: v for k, v in parts.metrics().items() if k != "timing/step"}}

    def probe_logprob_diff(self, rollout: Rollout) -> float:
        """Max |engine - learner| logprob on a few of this step's samples, new weights on both."""
        n = self.roles.num_ranks
        probe = Rollout(**{k: getattr(rollout, k)[:n] for k in Rollout._fields()})
        samples = pack(probe, self.pad_id)
        learner = self.roles.learner.forward_async(samples).result()["old_logprobs"]
        engine = pad_float_lists(self.roles.rollout.logprobs(probe.prompt_ids, probe.response_ids),
                                 samples.response_len)
        mask = samples.response_mask.bool()
        return float((learner - engine).abs()[mask].max()) if mask.any() else 0.0

    def rollout_metrics(self, rollout: Rollout, exp: Experience, rewards: list[float],
                        components: dict[str, list[float]], kl: float) -> dict:
        """What the trainer itself sees of the step; the learner reports entropy, the behaviour
        gap and its update statistics."""
        mask = exp.response_mask
        r = torch.tensor(rewards)
        lengths = mask.sum(-1)
        metrics = {
            "reward/mean": float(r.mean()), "reward/std": float(r.std()) if len(r) > 1 else 0.0,
            "objective/kl": kl, "objective/kl_coef": self.kl_ctl.value,
            "rollout/response_length": float(lengths.mean()),
            "rollout/truncated_fraction": sum(f == "length" for f in rollout.finish_reason) / len(rollout),
            "perf/samples": float(len(rollout)), "perf/tokens": float(lengths.sum()),
        }
        metrics.update({k: sum(v) / len(v) for k, v in components.items()})
        return metrics

    # ------------------------------------------------------------------------- run, save, resume

    def run(self, log: MetricsLog) -> list[dict]:
        # Signal handlers can only be set from the main thread; a Ray Tune trial runs this in
        # a worker thread, where Tune itself stops the run.
        on_main = threading.current_thread() is threading.main_thread()
        previous = signal.signal(signal.SIGINT, self._on_interrupt) if on_main else None
        self.stop_requested = False
        try:
            while self.step < self.cfg.train.steps:
                metrics = self.rl_step()
                metrics["perf/samples_per_second"] = metrics["perf/samples"] / metrics["timing/step"]
                log.log(self.step, metrics)
                self.progress(self.step, metrics)
                every = self.cfg.train.save_every
                if (every and self.step % every == 0) or self.step == self.cfg.train.steps or self.stop_requested:
                    self.save()
                if self.stop_requested:
                    raise Interrupted(f"interrupted: step {self.step} finished and saved in {self.checkpoint_dir}")
        finally:
            if on_main:
                signal.signal(signal.SIGINT, previous)
        plot_metrics(log.rows(), self.run_dir / "metrics.png")
        return log.rows()

    def _on_interrupt(self, signum, frame) -> None:
        """Ctrl-C: finish the step under way, checkpoint, stop (a checkpoint from inside a step
        would hold a half-updated state). A second Ctrl-C stops at once, without a checkpoint."""
        self.stop_requested = True
        signal.signal(signal.SIGINT, signal.default_int_handler)

    @property
    def checkpoint_dir(self) -> Path:
        return self.run_dir / "checkpoints"

    def save(self) -> Path:
        tag = f"step{self.step}"
        self.roles.learner.save(str(self.checkpoint_dir), tag)
        state = {"step": self.step, "tag": tag, "sampler": self.sampler.state_dict(), "kl_coef": self.kl_ctl.value,
                 "python_rng": _rng_json(random.getstate())}
        tmp = self.checkpoint_dir / "trainer_state.json.tmp"
        tmp.write_text(json.dumps(state, indent=2))
        tmp.replace(self.checkpoint_dir / "trainer_state.json")  # the pointer moves only after the save
        return self.checkpoint_dir

    def resume(self) -> int:
        path = self.checkpoint_dir / "trainer_state.json"
        if not path.exists():
            raise FileNotFoundError(f"no checkpoint to resume from in {self.checkpoint_dir}")
        state = json.loads(path.read_text())
        self.roles.learner.load(str(self.checkpoint_dir), state["tag"])
        self.step = int(state["step"])
        self.sampler.load_state_dict(state["sampler"])
        self.kl_ctl.value = float(state["kl_coef"])
        random.setstate(_rng_state(state["python_rng"]))
        # The engines still hold the initial weights: bring them to the checkpoint's.
        packet = self.roles.learner.publish_weights()
        self.roles.rollout.load_weights(packet)
        self.weight_version = packet.version
        return self.step


def _rng_json(state: tuple) -> list:
    """random.getstate() as JSON: (version, 625 ints, gauss_next)."""
    version, internal, gauss_next = state
    return [version, list(internal), gauss_next]


def _rng_state(saved) -> tuple:
    """The inverse of `_rng_json`; also reads the repr() string older checkpoints stored."""
    if isinstance(saved, str):
        import ast

        saved = ast.literal_eval(saved)
    version, internal, gauss_next = saved
    return version, tuple(internal), gauss_next
