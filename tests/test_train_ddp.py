"""Two-process DDP with torchrun and gloo on CPU: completes, ranks agree, rank 0 alone writes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import torch

from robustmix.train import load_checkpoint, state_dict_sha256

# Each rank trains into its own output_dir (output_dir only says where files go), so the test
# can see which ranks wrote files; each rank reports its final weights' hash separately.
_SCRIPT = textwrap.dedent(
    """
    import json, os, sys
    from robustmix.train import TrainConfig, train

    base = sys.argv[1]
    rank = int(os.environ["RANK"])
    cfg = TrainConfig(
        dataset="synthetic", epochs=2, batch_size=8, limit_train=40, limit_test=24,
        mixer="robustmix", output_dir=os.path.join(base, f"out{rank}"), progress=False, seed=1,
        device="cpu",
    )
    result = train(cfg)
    with open(os.path.join(base, f"rank{rank}.json"), "w") as f:
        json.dump({"sha": result["weights_sha256"], "final": result["final"],
                   "world_size": result["world_size"]}, f)
    """
)


def test_torchrun_two_processes_gloo(tmp_path: Path) -> None:
    script = tmp_path / "ddp_job.py"
    script.write_text(_SCRIPT)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("WORLD_SIZE", None)
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
        str(script), str(tmp_path),
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    reports = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["world_size"] for r in reports] == [2, 2]
    assert reports[0]["sha"] == reports[1]["sha"]  # parameters and BN buffers agree
    # Metrics are reduced over ranks: both report the global counts and the same values.
    for key in ("n_train", "n_test", "train_loss", "test_error", "test_loss"):
        assert reports[0]["final"][key] == reports[1]["final"][key], key
    # 40 images over 2 ranks -> 20 each -> 2 full batches of 8 per rank (ragged 4 dropped).
    assert reports[0]["final"]["n_train"] == 32
    assert reports[0]["final"]["n_test"] == 24  # eval shards are disjoint and unpadded

    out0, out1 = tmp_path / "out0", tmp_path / "out1"
    assert sorted(p.name for p in out0.iterdir()) == [
        "checkpoint.pt", "config.json", "metrics.json", "metrics.jsonl"
    ]
    assert not out1.exists()  # rank 1 wrote nothing
    state = load_checkpoint(out0 / "checkpoint.pt")
    assert state_dict_sha256(state["model"]) == reports[1]["sha"]
    assert state["epoch"] == 2
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())
