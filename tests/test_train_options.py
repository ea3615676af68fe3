"""Trainer options: mixed precision, clipping, label smoothing, parameter groups, skipped steps, exact resume."""

import json

import pytest

torch = pytest.importorskip("torch")

from safetensors.torch import load_file  # noqa: E402

from engines.errors import UserError  # noqa: E402
from mimicnorm_deploy.training.data import make_synthetic  # noqa: E402
from mimicnorm_deploy.training.layers import centred_convs  # noqa: E402
from mimicnorm_deploy.training.train import TRAIN_STATE_FILE, TrainConfig, Trainer, train  # noqa: E402

QUIET = dict(progress=lambda _: None)


def _tiny(**overrides):
    fields = dict(arch="resnet20", norm="mimic", epochs=2, batch_size=16, lr=0.05, max_steps_per_epoch=2)
    return TrainConfig(**{**fields, **overrides})


@pytest.fixture(scope="module")
def dataset():
    return make_synthetic(64)


@pytest.mark.parametrize(
    "overrides, message",
    [(dict(amp="fp16"), "fp16 mixed precision needs a CUDA device"), (dict(amp="fp8"), "unknown amp mode"),
     (dict(device="tpu"), "unknown device"), (dict(grad_clip=-1.0), "clipping"),
     (dict(label_smoothing=1.0), "label smoothing"), (dict(sync_bn="some"), "sync-bn")],
)  # fmt: skip
def test_bad_options_are_refused(tmp_path, dataset, overrides, message):
    with pytest.raises(UserError, match=message):
        Trainer(_tiny(**overrides), dataset, tmp_path, **QUIET)


def test_bf16_autocast_clipping_and_smoothing_train_on_cpu(tmp_path, dataset):
    config = _tiny(amp="bf16", grad_clip=1.0, label_smoothing=0.1, epochs=1)
    result = train(config, dataset, tmp_path, **QUIET)
    assert result.epochs[-1]["steps"] == 2 and torch.isfinite(torch.tensor(result.final_train_loss))
    report = json.loads((tmp_path / "train_report.json").read_text())
    assert report["config"]["amp"] == "bf16" and report["world_size"] == 1


def test_bn_revisited_trains_with_its_parameter_groups(tmp_path, dataset):
    trainer = Trainer(_tiny(norm="bn-revisited"), dataset, tmp_path, **QUIET)
    groups = {g["name"]: g for g in trainer.optimizer.param_groups}
    assert groups["bn_gammas"]["initial_lr"] == pytest.approx(0.05 / 100) and groups["other_1d"]["weight_decay"] == 0


@pytest.mark.filterwarnings("ignore:Detected call of `lr_scheduler.step\\(\\)` before")  # the skipped step
def test_a_skipped_fp16_step_leaves_weights_and_centring_untouched(tmp_path, dataset):
    trainer = Trainer(_tiny(), dataset, tmp_path, **QUIET)
    # The fp16 scaler on CPU (the trainer uses it on CUDA): inf gradients make it skip the step.
    trainer.scaler = torch.amp.GradScaler("cpu", init_scale=2.0**8)
    conv = centred_convs(trainer.model, trainer.model.norm_spec.centre_min_fan_in)[0]
    with torch.no_grad():
        conv.weight.add_(1.0)  # un-centre one conv: a centring pass would show
    before = {k: v.clone() for k, v in trainer.model.named_parameters()}
    x = torch.full((4, 1, 16, 16), float("inf"))
    trainer.train_step(x, torch.zeros(4, dtype=torch.long))
    after = dict(trainer.model.named_parameters())
    assert all(torch.equal(before[k], after[k]) for k in before), "a skipped step changed a parameter"
    assert trainer.scaler.get_scale() == 2.0**7  # it did skip, and backed off
    trainer.train_step(torch.rand(4, 1, 16, 16), torch.zeros(4, dtype=torch.long))
    assert conv.weight.mean(dim=(1, 2, 3)).abs().max() < 1e-6  # a real step centres again


class _Interrupt(Exception):
    pass


@pytest.mark.parametrize("stop_at", ["epoch 1 done", "epoch 2 step 2/2"])
def test_resume_is_bit_identical_to_an_uninterrupted_run(tmp_path, dataset, stop_at):
    config = _tiny()
    straight = train(config, dataset, tmp_path / "straight", **QUIET)

    def stop(message):
        if stop_at in message:
            raise _Interrupt  # as Ctrl-C would: between epochs, or during the second epoch

    with pytest.raises(_Interrupt):
        train(config, dataset, tmp_path / "resumed", progress=stop)
    assert (tmp_path / "resumed" / TRAIN_STATE_FILE).is_file()
    resumed = train(config, dataset, tmp_path / "resumed", resume_from=tmp_path / "resumed", **QUIET)
    assert resumed.resumed_from_epoch == 1
    a = load_file(str(tmp_path / "straight" / "checkpoint.safetensors"))
    b = load_file(str(tmp_path / "resumed" / "checkpoint.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    lines = [json.loads(line) for line in (tmp_path / "resumed" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in lines] == [1, 2]
    for mine, theirs in zip(resumed.epochs, straight.epochs, strict=True):
        assert {k: v for k, v in mine.items() if k != "epoch_seconds"} == {
            k: v for k, v in theirs.items() if k != "epoch_seconds"
        }


def test_resume_refuses_other_options_and_missing_state(tmp_path, dataset):
    with pytest.raises(UserError, match="no training state"):
        train(_tiny(), dataset, tmp_path, resume_from=tmp_path, **QUIET)
    train(_tiny(epochs=1), dataset, tmp_path, **QUIET)
    with pytest.raises(UserError, match=r"options differ.*\(lr\)"):
        train(_tiny(epochs=1, lr=0.2), dataset, tmp_path, resume_from=tmp_path, **QUIET)
    (tmp_path / TRAIN_STATE_FILE).write_bytes(b"garbage")
    with pytest.raises(UserError, match="not a readable training state"):
        train(_tiny(epochs=1), dataset, tmp_path, resume_from=tmp_path, **QUIET)
    marker = tmp_path / "pwned"
    torch.save({"version": 1, "model": _Exploit(marker)}, tmp_path / TRAIN_STATE_FILE)
    with pytest.raises(UserError, match="not a readable training state"):  # weights_only: no code runs
        train(_tiny(epochs=1), dataset, tmp_path, resume_from=tmp_path, **QUIET)
    assert not marker.exists()


class _Exploit:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        import os

        return (os.system, (f"touch {self.marker}",))


def test_the_stem_is_trained_and_recorded_in_the_checkpoint(tmp_path):
    from mimicnorm_deploy.training.checkpoint import load_checkpoint

    config = _tiny(arch="shufflenetv2_050", stem="imagenet", epochs=1, max_steps_per_epoch=1, batch_size=8)
    train(config, make_synthetic(32, image_size=32), tmp_path, **QUIET)
    model, meta = load_checkpoint(tmp_path / "checkpoint.safetensors")
    assert meta.stem == "imagenet" and model.stem_type == "imagenet"
