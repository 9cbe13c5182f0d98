"""Atomic checkpoints, and resuming a killed toy-world training run."""

import pytest
import torch

from studio import checkpoint as ck


def test_checkpoint_round_trip_with_optimizer(tmp_path):
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model(torch.randn(8, 4)).sum().backward()
    opt.step()
    ck.save_checkpoint(tmp_path / "c.safetensors", {"m": model}, {"opt": opt}, meta={"step": 7})
    model2 = torch.nn.Linear(4, 3)
    opt2 = torch.optim.AdamW(model2.parameters(), lr=1.0)
    meta, _ = ck.load_checkpoint(tmp_path / "c.safetensors", {"m": model2}, {"opt": opt2})
    assert meta == {"step": 7}
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), model2.parameters()))
    assert opt2.param_groups[0]["lr"] == 1e-2
    s1, s2 = opt.state_dict()["state"], opt2.state_dict()["state"]
    assert all(torch.equal(s1[0][k], s2[0][k]) for k in ("exp_avg", "exp_avg_sq"))


def test_checkpoint_load_is_strict(tmp_path):
    ck.save_checkpoint(tmp_path / "c.safetensors", {"m": torch.nn.Linear(4, 3)})
    with pytest.raises(RuntimeError, match="size mismatch|Missing|Unexpected"):
        ck.load_checkpoint(tmp_path / "c.safetensors", {"m": torch.nn.Linear(5, 3)})


def test_a_failed_write_leaves_the_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "c.safetensors"
    ck.save_checkpoint(path, {"m": torch.nn.Linear(2, 2)}, meta={"step": 1})

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(ck, "save_file", boom)
    with pytest.raises(OSError):
        ck.save_checkpoint(path, {"m": torch.nn.Linear(2, 2)}, meta={"step": 2})
    monkeypatch.undo()
    meta, _ = ck.load_checkpoint(path, {"m": torch.nn.Linear(2, 2)})
    assert meta["step"] == 1 and not list(tmp_path.glob("*.tmp"))


def test_killed_training_resumes_to_the_same_weights(tmp_path, monkeypatch):
    from studio.toyworld import train as tw

    cfg = tw.TrainConfig(pool_size=64, vae_steps=4, vae_batch=4, checkpoint_every=2)
    pool = tw.Pool(cfg, tmp_path / "a")
    straight = tw.train_vae(cfg, tmp_path / "a", pool)

    real_save = tw.save_checkpoint

    def save_then_die(*args, **kwargs):
        real_save(*args, **kwargs)
        raise KeyboardInterrupt  # killed right after the first checkpoint

    monkeypatch.setattr(tw, "save_checkpoint", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        tw.train_vae(cfg, tmp_path / "b", pool)
    monkeypatch.setattr(tw, "save_checkpoint", real_save)
    resumed = tw.train_vae(cfg, tmp_path / "b", pool)
    for (name, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name
