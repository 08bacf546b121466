"""GANModule: step counting, phases, checkpoints and resume, on tiny nets and data."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import NamedTuple

import lightning as L
import pytest
import torch
from conftest import RecordingLogger
from lightning.pytorch.callbacks import ModelCheckpoint

from lit_gp import ConfigError, GANModule, penalties
from lit_gp.callbacks import GeneratorStepLimit
from lit_gp.data import ToyDataModule
from lit_gp.nets import MLPCritic, MLPGenerator

NETS = {
    "generator": {"_target_": "lit_gp.nets.MLPGenerator", "hidden_dim": 16},
    "critic": {"_target_": "lit_gp.nets.MLPCritic", "hidden_dim": 16},
}


def make_module(n_critic: int = 3, **kwargs) -> GANModule:
    penalty = kwargs.pop("penalty", {"_target_": "lit_gp.penalties.wgan_gp", "weight": 10})
    return GANModule(**NETS, penalty=penalty, n_critic=n_critic, **kwargs)


def make_trainer(root: Path, generator_steps: int, callbacks=()) -> L.Trainer:
    return L.Trainer(
        default_root_dir=root,
        max_epochs=-1,
        logger=False,
        enable_checkpointing=any(isinstance(c, ModelCheckpoint) for c in callbacks),
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        check_val_every_n_epoch=None,
        val_check_interval=10_000,
        callbacks=[GeneratorStepLimit(generator_steps), *callbacks],
    )


def data() -> ToyDataModule:
    return ToyDataModule(batch_size=32, num_train=640, num_val=64)


def adam_steps(optimizer: torch.optim.Optimizer) -> int:
    state = next(iter(optimizer.state.values()))
    return int(state["step"])


def test_generator_step_counts_every_n_critic_batches(tmp_path: Path) -> None:
    module = make_module(n_critic=3)
    trainer = make_trainer(tmp_path, generator_steps=4)
    trainer.fit(module, datamodule=data())
    critic_optimizer, generator_optimizer = module.optimizers()
    assert module.generator_step == 4
    assert adam_steps(critic_optimizer) == 12  # one fresh real batch per critic step
    assert adam_steps(generator_optimizer) == 4
    assert trainer.fit_loop.total_batch_idx + 1 == 12
    # Lightning's global_step counts every optimizer step: n_critic + 1 per generator step.
    assert trainer.global_step == 16


def test_checkpoint_loads_without_config_and_samples(tmp_path: Path) -> None:
    module = make_module(n_critic=2)
    trainer = make_trainer(tmp_path, generator_steps=3)
    trainer.fit(module, datamodule=data())
    path = tmp_path / "model.ckpt"
    trainer.save_checkpoint(path)

    loaded = GANModule.load_from_checkpoint(path)
    assert loaded.generator_step == 3
    assert loaded.hparams.penalty["_target_"] == "lit_gp.penalties.wgan_gp"
    for original, restored in zip(
        module.generator.parameters(), loaded.generator.parameters(), strict=True
    ):
        torch.testing.assert_close(original, restored)
    samples = loaded.sample(5)
    assert samples.shape == (5, 2)
    assert not samples.requires_grad
    torch.manual_seed(1)
    expected = module.sample(5)
    torch.manual_seed(1)
    torch.testing.assert_close(loaded.sample(5), expected)


def test_resume_continues_counters_optimizers_and_phase(tmp_path: Path) -> None:
    # With n_critic=3, global_step runs 1, 2, (3 critic + 1 generator =) 4, 5, 6, 8, ...
    # Saving every 2 optimizer steps catches step=6: one generator step done and 2 of the next
    # cycle's 3 critic steps taken.
    checkpoint = ModelCheckpoint(
        dirpath=tmp_path / "ckpt", filename="{step}", every_n_train_steps=2, save_top_k=-1
    )
    first = make_module(n_critic=3)
    make_trainer(tmp_path, generator_steps=2, callbacks=[checkpoint]).fit(first, datamodule=data())
    mid_cycle = tmp_path / "ckpt" / "step=6.ckpt"
    assert mid_cycle.is_file()
    state = torch.load(mid_cycle, weights_only=True)["lit_gp"]
    assert set(state.pop("random_state")) == {"torch", "numpy", "python"}
    assert state == {
        "module": "lit_gp.gan.GANModule",
        "generator_step": 1,
        "critic_step": 5,
        "critic_steps_in_cycle": 2,
        # A fixed weight has no state.
        "penalty_terms": {
            "wgan_gp": {"controller": "lit_gp.penalty_weights.WeightController", "state": {}}
        },
    }

    resumed = make_module(n_critic=3)
    trainer = make_trainer(tmp_path, generator_steps=3)
    trainer.fit(resumed, datamodule=data(), ckpt_path=mid_cycle)
    critic_optimizer, generator_optimizer = resumed.optimizers()
    assert resumed.generator_step == 3
    assert resumed.critic_steps_in_cycle == 0
    assert resumed.critic_step == 9
    # 2 critic steps before the checkpoint + 1 to finish the cycle + 3 + 3.
    assert adam_steps(critic_optimizer) == 9
    assert adam_steps(generator_optimizer) == 3
    assert trainer.global_step == 12


def test_resume_past_the_limit_takes_no_step(tmp_path: Path) -> None:
    module = make_module(n_critic=1)
    trainer = make_trainer(tmp_path, generator_steps=2)
    trainer.fit(module, datamodule=data())
    path = tmp_path / "done.ckpt"
    trainer.save_checkpoint(path)
    again = make_module(n_critic=1)
    trainer = make_trainer(tmp_path, generator_steps=2)
    trainer.fit(again, datamodule=data(), ckpt_path=path)
    assert again.generator_step == 2
    assert trainer.global_step == 4


def test_objects_instead_of_specs() -> None:
    module = GANModule(
        generator=MLPGenerator(hidden_dim=8),
        critic=MLPCritic(hidden_dim=8),
        penalty=functools.partial(penalties.r1, gamma=1.0),
        loss="non_saturating",
        n_critic=1,
    )
    assert "generator" not in module.hparams  # objects are not hyperparameters
    assert module.hparams.loss == "non_saturating"
    assert module.sample(3).shape == (3, 2)


def test_lr_scheduler_steps_once_per_generator_step(tmp_path: Path) -> None:
    linear_decay = {
        "_target_": "torch.optim.lr_scheduler.LinearLR",
        "start_factor": 1.0,
        "end_factor": 0.0,
        "total_iters": 4,
    }
    module = make_module(n_critic=2, generator_scheduler=linear_decay)
    make_trainer(tmp_path, generator_steps=2).fit(module, datamodule=data())
    critic_optimizer, generator_optimizer = module.optimizers()
    assert generator_optimizer.param_groups[0]["lr"] == pytest.approx(1e-4 * 0.5)
    assert critic_optimizer.param_groups[0]["lr"] == pytest.approx(1e-4)


@pytest.mark.parametrize(
    ("kwargs", "key"),
    [
        ({"n_critic": 0}, "n_critic"),
        ({"loss": "least_squares"}, "loss"),
        ({"penalty": {"_target_": "lit_gp.penalties.wgan_gp", "weight": -1}}, "penalty.weight"),
        ({"penalty": {"_target_": "lit_gp.penalties.r1", "weight": 1}}, "penalty.weight"),
        ({"penalty": {"_target_": "lit_gp.penalties.nope"}}, "penalty._target_"),
        ({"num_eval_samples": 0}, "num_eval_samples"),
    ],
)
def test_bad_values_name_the_key(kwargs: dict, key: str) -> None:
    with pytest.raises(ConfigError) as error:
        make_module(**kwargs)
    assert error.value.key == key


def test_batch_norm_critic_refused_unless_allowed() -> None:
    critic = {"_target_": "lit_gp.nets.MLPCritic", "hidden_dim": 8, "norm": "batch"}
    with pytest.raises(ConfigError, match="BatchNorm") as error:
        GANModule(
            generator=NETS["generator"],
            critic=critic,
            penalty={"_target_": "lit_gp.penalties.wgan_gp"},
        )
    assert error.value.key == "critic"
    allowed = {"_target_": "lit_gp.penalties.wgan_gp", "allow_batch_norm": True}
    GANModule(generator=NETS["generator"], critic=critic, penalty=allowed)
    # Without a penalty nothing is per-sample, so BatchNorm is fine.
    GANModule(generator=NETS["generator"], critic=critic, penalty=None)


def one_critic_step(module: GANModule, real: torch.Tensor, seed: int = 0) -> None:
    """Run ``critic_update`` once outside a Trainer, with fixed noise and penalty randomness."""
    optimizer = torch.optim.SGD(module.critic.parameters(), lr=0.1)
    module.optimizers = lambda: [optimizer, None]  # what a Trainer would hand out
    module.toggle_optimizer = module.untoggle_optimizer = lambda optimizer: None
    module.manual_backward = lambda loss: loss.backward()
    torch.manual_seed(seed)
    module.critic_update(real)


def twin_modules(**kwargs_pairs) -> tuple[GANModule, GANModule]:
    first, second = ({name: pair[i] for name, pair in kwargs_pairs.items()} for i in (0, 1))
    torch.manual_seed(0)
    a = make_module(n_critic=100, **first)
    torch.manual_seed(0)
    b = make_module(n_critic=100, **second)
    return a, b


def assert_same_critic(a: GANModule, b: GANModule) -> None:
    for pa, pb in zip(a.critic.parameters(), b.critic.parameters(), strict=True):
        torch.testing.assert_close(pa, pb, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("method", ["wgan_gp", "r1", "wgan_div"])
def test_fused_critic_pass_gives_the_same_update(method: str) -> None:
    spec = {"_target_": f"lit_gp.penalties.{method}"}
    fused, separate = twin_modules(penalty=(spec, spec), fused_critic_pass=(True, False))
    assert fused.fused_critic_pass and not separate.fused_critic_pass
    real = torch.randn(64, 2)
    one_critic_step(fused, real)
    one_critic_step(separate, real)
    assert_same_critic(fused, separate)
    # The update did change the critic, so the comparison above means something.
    torch.manual_seed(0)
    untouched = make_module(n_critic=100)
    assert not torch.equal(untouched.critic.net[0].weight, fused.critic.net[0].weight)


def test_fused_pass_is_off_for_batch_norm_critics() -> None:
    module = GANModule(
        generator=NETS["generator"],
        critic={"_target_": "lit_gp.nets.MLPCritic", "hidden_dim": 8, "norm": "batch"},
        penalty=None,
    )
    assert not module.fused_critic_pass


def test_lazy_penalty_is_k_times_the_weight_every_k_steps() -> None:
    # r1 with gamma 2 every 4 steps: on a penalty step the update equals gamma 8 every step;
    # on the other steps it equals no penalty at all.
    lazy_spec = {"_target_": "lit_gp.penalties.r1", "gamma": 2.0, "every": 4}
    heavy_spec = {"_target_": "lit_gp.penalties.r1", "gamma": 8.0}
    lazy, heavy = twin_modules(penalty=(lazy_spec, heavy_spec))
    real = torch.randn(64, 2)
    one_critic_step(lazy, real)  # critic_step 0: a penalty step
    one_critic_step(heavy, real)
    assert_same_critic(lazy, heavy)

    lazy, plain = twin_modules(penalty=(lazy_spec, None))
    lazy.critic_step = 1  # not a multiple of 4
    one_critic_step(lazy, real)
    one_critic_step(plain, real)
    assert_same_critic(lazy, plain)


def test_lazy_penalty_runs_on_every_kth_critic_step(tmp_path: Path) -> None:
    module = make_module(
        n_critic=1, penalty={"_target_": "lit_gp.penalties.r1", "gamma": 1.0, "every": 4}
    )
    calls = []
    (term,) = module.penalty_terms
    penalty = term.function

    def recording_penalty(critic, real, fake):
        calls.append(module.critic_step)
        return penalty(critic, real, fake)

    term.function = recording_penalty
    make_trainer(tmp_path, generator_steps=10).fit(module, datamodule=data())
    assert calls == [0, 4, 8]
    assert module.critic_step == 10


def test_lazy_every_must_be_a_positive_integer() -> None:
    with pytest.raises(ConfigError) as error:
        make_module(penalty={"_target_": "lit_gp.penalties.r1", "every": 0})
    assert error.value.key == "penalty.every"


def test_critic_update_uses_the_trainers_grad_scaler() -> None:
    # Under 16-mixed Lightning keeps one GradScaler for all optimizers; the penalty must take the
    # input gradient of the scaled output and unscale it, which leaves the update unchanged.
    from types import SimpleNamespace

    spec = {"_target_": "lit_gp.penalties.wgan_gp", "weight": 10}
    scaled, plain = twin_modules(penalty=(spec, spec))
    scaler = torch.amp.GradScaler("cpu", init_scale=512.0)
    scaled._trainer = SimpleNamespace(precision_plugin=SimpleNamespace(scaler=scaler))
    plain._trainer = SimpleNamespace(precision_plugin=SimpleNamespace(scaler=None))
    seen = []
    (term,) = scaled.penalty_terms
    penalty = term.function

    def recording_penalty(critic, real, fake, **options):
        seen.append(options)
        return penalty(critic, real, fake, **options)

    term.function = recording_penalty
    real = torch.randn(64, 2)
    one_critic_step(scaled, real)
    one_critic_step(plain, real)
    assert seen == [{"loss_scale": 512.0}]
    assert_same_critic(scaled, plain)


class _Run(NamedTuple):
    rows: list[dict[str, float]]  # the rows the logger received that hold training metrics
    final: dict[str, float]  # trainer.callback_metrics at the end
    log_dict_calls: int


def _train_and_record(log_every_n_steps: int, **trainer_options) -> _Run:
    torch.manual_seed(0)
    logger = RecordingLogger()
    module = make_module(n_critic=2)
    calls = []
    log_dict = module.log_dict
    module.log_dict = lambda *args, **kwargs: (calls.append(1), log_dict(*args, **kwargs))
    trainer = L.Trainer(
        max_epochs=-1,
        logger=logger,
        log_every_n_steps=log_every_n_steps,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        **trainer_options,
    )
    trainer.fit(module, datamodule=data())
    final = {key: float(value) for key, value in trainer.callback_metrics.items()}
    rows = [row for row in logger.rows if "train/critic_loss" in row]
    return _Run(rows, final, len(calls))


def _without_epoch(row: dict[str, float]) -> dict[str, float]:
    return {key: value for key, value in row.items() if key != "epoch"}


@pytest.mark.parametrize(
    ("log_every_n_steps", "generator_steps_written"),
    [
        (6, [3, 6, 7]),  # every 3 generator steps, and the last step
        (3, [1, 3, 4, 6, 7]),  # batches 3, 6, 9, 12 (the latest generator step), and the last
        (50, [7]),  # more batches than the run has: the last step only
    ],
)
def test_training_metrics_reach_the_loggers_at_their_cadence_unchanged(
    log_every_n_steps: int, generator_steps_written: list[int]
) -> None:
    # The module hands its metrics to self.log only on the batches the loggers write (one call
    # per written row, where logging every generator step made 7); the rows, and the final
    # callback_metrics, must be those of a run that logs every batch.
    limit = [GeneratorStepLimit(7)]
    every_batch = _train_and_record(1, callbacks=limit)
    by_step = {row["train/generator_step"]: row for row in every_batch.rows}
    run = _train_and_record(log_every_n_steps, callbacks=limit)
    assert [row["train/generator_step"] for row in run.rows] == generator_steps_written
    for row in run.rows:
        assert _without_epoch(row) == _without_epoch(by_step[row["train/generator_step"]])
    assert run.log_dict_calls == len(generator_steps_written)
    assert run.final == every_batch.final


@pytest.mark.parametrize("log_every_n_steps", [0, 5])
def test_a_run_bounded_by_max_steps_ends_with_the_last_steps_metrics(
    log_every_n_steps: int,
) -> None:
    # Without GeneratorStepLimit nothing sets should_stop: the module must still log the last
    # batch, or callback_metrics (metrics.json) would keep an older step's values, or none.
    # 18 optimizer steps: 6 generator steps of 3 (n_critic 2), in 12 batches.
    every_batch = _train_and_record(1, max_steps=18)
    run = _train_and_record(log_every_n_steps, max_steps=18)
    assert run.final["train/generator_step"] == 6
    assert run.final == every_batch.final


def test_critic_update_passes_the_scale_an_underflowing_critic_needs() -> None:
    # Would fail if the module ignored the GradScaler: this critic's input gradient (1e-8) is 0
    # in float16 without scaling (tests/test_penalties.py, UnderflowingCritic).
    from types import SimpleNamespace

    from test_penalties import UnderflowingCritic

    module = GANModule(
        generator=NETS["generator"],
        critic=UnderflowingCritic(),
        penalty={"_target_": "lit_gp.penalties.r1", "gamma": 2.0},
        loss="non_saturating",
    )
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**16)
    module._trainer = SimpleNamespace(precision_plugin=SimpleNamespace(scaler=scaler))
    optimizer = torch.optim.SGD(module.critic.parameters(), lr=0.0)
    module.optimizers = lambda: [optimizer, None]
    module.toggle_optimizer = module.untoggle_optimizer = lambda optimizer: None
    module.manual_backward = lambda loss: loss.backward()
    logs = module.critic_update(torch.randn(16, 2))
    a = float(torch.tensor(1e-4).half().float())
    assert float(logs["train/grad_norm_mean"]) == pytest.approx(2**0.5 * a * a, rel=2e-2)


def test_a_penalty_without_loss_scale_is_refused_under_16_mixed_before_training() -> None:
    from types import SimpleNamespace

    def my_penalty(critic, real, fake):  # a user's penalty with no loss_scale keyword
        return penalties.r1(critic, real, fake, gamma=1.0)

    module = GANModule(**NETS, penalty=my_penalty)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**16)
    module._trainer = SimpleNamespace(
        precision_plugin=SimpleNamespace(scaler=scaler),
        precision="16-mixed",
        strategy=None,
        datamodule=None,
    )
    with pytest.raises(ConfigError, match="no loss_scale keyword") as error:
        module.setup("fit")
    assert error.value.key == "penalty"
    # Without a scaler it runs, and nothing passes it a keyword it does not take.
    plain = GANModule(**NETS, penalty=my_penalty, n_critic=1)
    one_critic_step(plain, torch.randn(16, 2))


def _parameters(net: torch.nn.Module) -> list[torch.Tensor]:
    return [parameter.detach().clone() for parameter in net.parameters()]


def _unchanged(before: list[torch.Tensor], net: torch.nn.Module) -> bool:
    return all(torch.equal(a, b) for a, b in zip(before, net.parameters(), strict=True))


def test_each_update_moves_only_its_own_net(tmp_path: Path) -> None:
    # Adam with a large rate: any gradient that leaked into the other net would move it.
    adam = {"_target_": "torch.optim.Adam", "lr": 0.1}
    module = make_module(n_critic=1, critic_optimizer=adam, generator_optimizer=adam)
    trainer = make_trainer(tmp_path, generator_steps=1)
    trainer.fit(module, datamodule=data())  # builds the optimizers and their state
    real = torch.randn(32, 2)
    generator, critic = _parameters(module.generator), _parameters(module.critic)
    module.critic_update(real)
    assert _unchanged(generator, module.generator)
    assert not _unchanged(critic, module.critic)
    generator, critic = _parameters(module.generator), _parameters(module.critic)
    module.generator_update(real)
    assert _unchanged(critic, module.critic)
    assert not _unchanged(generator, module.generator)


def test_the_data_shape_check_leaves_batch_norm_statistics_and_noise_alone() -> None:
    module = GANModule(
        generator={
            "_target_": "lit_gp.nets.DCGANGenerator",
            "image_shape": [1, 8, 8],
            "latent_dim": 8,
            "dim": 4,
        },
        critic={"_target_": "lit_gp.nets.DCGANCritic", "image_shape": [1, 8, 8], "dim": 4},
        penalty={"_target_": "lit_gp.penalties.r1"},
    )
    buffers = {name: value.clone() for name, value in module.generator.named_buffers()}
    assert any("running_mean" in name for name in buffers)
    torch.manual_seed(5)
    module.check_data_shape((1, 8, 8))
    after_check = torch.rand(3)
    torch.manual_seed(5)
    assert torch.equal(torch.rand(3), after_check)  # no draws from the training stream
    for name, value in module.generator.named_buffers():
        assert torch.equal(value, buffers[name]), name
    assert module.generator.training and module.critic.training


@pytest.mark.parametrize(
    ("loss", "gap_key"),
    [("wasserstein", "wasserstein_estimate"), ("non_saturating", "critic_gap")],
)
def test_the_score_gap_is_called_a_wasserstein_estimate_for_the_wasserstein_loss_only(
    loss: str, gap_key: str, tmp_path: Path
) -> None:
    module = make_module(n_critic=1, loss=loss)
    trainer = L.Trainer(
        default_root_dir=tmp_path,
        max_epochs=-1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        check_val_every_n_epoch=None,
        val_check_interval=2,
        log_every_n_steps=1,
        callbacks=[GeneratorStepLimit(2)],
    )
    trainer.fit(module, datamodule=data())
    metrics = set(trainer.callback_metrics)
    assert {f"train/{gap_key}", f"val/{gap_key}"} <= metrics
    other = {"wasserstein_estimate", "critic_gap"} - {gap_key}
    assert not {f"train/{key}" for key in other} & metrics
    assert not {f"val/{key}" for key in other} & metrics
