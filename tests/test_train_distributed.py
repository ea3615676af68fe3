"""Data parallelism: two gloo processes under torchrun end with identical, centred weights."""

import hashlib
import json
import os
import subprocess
import sys
import textwrap

import pytest

torch = pytest.importorskip("torch")

from mimicnorm_deploy.training.data import make_synthetic  # noqa: E402
from mimicnorm_deploy.training.train import TrainConfig, train  # noqa: E402

# Each rank trains, then dumps a digest of its weights and buffers (and the `none` model's tensors,
# to compare with a single-process run): torchrun runs this file once per rank.
WORKER = textwrap.dedent(
    """
    import hashlib, json, os, sys
    import torch
    from safetensors.torch import save_file
    from mimicnorm_deploy.training.data import make_synthetic
    from mimicnorm_deploy.training.layers import centred_convs
    from mimicnorm_deploy.training.train import Trainer, TrainConfig

    out, rank = sys.argv[1], int(os.environ["RANK"])
    for norm in ("mimic", "none"):
        config = TrainConfig(norm=norm, epochs=1, batch_size=16, lr=0.05, max_steps_per_epoch=3)
        trainer = Trainer(config, make_synthetic(64), f"{out}/{norm}", progress=lambda m: print(f"rank{rank}: {m}"))
        result = trainer.fit()
        state = {k: v.contiguous() for k, v in trainer.model.state_dict().items()}
        digest = hashlib.sha256(b"".join(state[k].numpy().tobytes() for k in sorted(state))).hexdigest()
        model = trainer.model
        centred = [c.weight.detach().mean(dim=(1, 2, 3)).abs().max().item() for c in centred_convs(model, 50)]
        record = {"digest": digest, "max_mean": max(centred), "accuracy": result.final_test_accuracy,
                  "world_size": result.world_size}
        with open(f"{out}/{norm}-rank{rank}.json", "w") as fh:
            json.dump(record, fh)
        if norm == "none":
            save_file(state, f"{out}/none-rank{rank}.safetensors")
    """
)


def _digest(state):
    return hashlib.sha256(b"".join(state[k].contiguous().numpy().tobytes() for k in sorted(state))).hexdigest()


@pytest.mark.slow
def test_two_gloo_ranks_train_identical_weights(tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    runs = tmp_path / "runs"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               str(script), str(runs)]  # fmt: skip
    proc = subprocess.run(command, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    mimic = [json.loads((runs / f"mimic-rank{r}.json").read_text()) for r in (0, 1)]
    assert mimic[0]["digest"] == mimic[1]["digest"], "ranks diverged"
    assert mimic[0]["max_mean"] < 1e-6 and mimic[0]["world_size"] == 2
    assert mimic[0]["accuracy"] == mimic[1]["accuracy"]  # evaluation is shared out and summed
    # Only rank 0 writes artifacts and reports progress.
    assert sorted(p.name for p in (runs / "mimic").iterdir()) == [
        "checkpoint.safetensors", "metrics.jsonl", "train_report.json", "train_state.pt",
    ]  # fmt: skip
    assert "rank0: [mimic] epoch 1 done" in proc.stdout and "rank1:" not in proc.stdout

    # Without any batch statistics, two ranks on half batches with averaged gradients take the
    # single-process steps (up to float summation order): the sharding covers each batch once.
    from safetensors.torch import load_file

    ddp = load_file(str(runs / "none-rank0.safetensors"))
    assert _digest(ddp) == _digest(load_file(str(runs / "none-rank1.safetensors")))
    config = TrainConfig(norm="none", epochs=1, batch_size=16, lr=0.05, max_steps_per_epoch=3)
    train(config, make_synthetic(64), tmp_path / "single", progress=lambda _: None)
    single = load_file(str(tmp_path / "single" / "checkpoint.safetensors"))
    for name, tensor in single.items():
        assert torch.allclose(ddp[name], tensor, atol=1e-5, rtol=1e-4), name


def test_sharding_covers_each_global_batch_once_and_sync_bn_needs_cuda():
    from engines.errors import UserError
    from mimicnorm_deploy.training import distributed
    from mimicnorm_deploy.training.models import create_model

    batch = torch.arange(12)
    ranks = [distributed.DistContext(torch.device("cpu"), rank, 3) for rank in range(3)]
    shards = [distributed.shard(batch, context) for context in ranks]
    assert all(len(s) == 4 for s in shards) and sorted(torch.cat(shards).tolist()) == batch.tolist()
    with pytest.raises(UserError, match="SyncBatchNorm needs CUDA"):
        distributed.convert_sync_batchnorm(create_model("resnet20"), "logits", ranks[0])
    alone = distributed.DistContext(torch.device("cpu"))
    assert distributed.shard(batch, alone) is batch and distributed.all_reduce_sum([1.0], alone) == [1.0]
