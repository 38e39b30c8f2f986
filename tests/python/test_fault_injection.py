"""Fault injection, nothing lost.

tests/python/fault_injection_run.py trains a bf16 MLP (FP32 masters in ampkit.optim.AdamW, loss
scaling by ampkit.GradScaler) for 500 steps, with inf/-inf/NaN written into a gradient at seeded
random steps (about 1 in 20). Here it runs three ways in fresh processes: uninterrupted; killed
with SIGKILL right after the step-250 checkpoint is on disk; resumed from that checkpoint. Checked:

* the skipped steps are exactly the injected ones (in the uninterrupted and the resumed run);
* at every injected step the masters, model weights, optimizer state and step counters are
  bitwise unchanged, and at every clean step the masters and step counters did change (so the
  digests can see a change: the check can fail);
* the resumed run ends with bitwise the same weights, masters and optimizer state as the
  uninterrupted one;
* a truncated checkpoint and one from another model are refused with a clear ValueError, and the
  running state is bitwise what it was.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
SCRIPT = os.path.join(HERE, "fault_injection_run.py")
sys.path.insert(0, HERE)

import fault_injection_run as fir  # noqa: E402

STEPS, KILL_AT = 500, 250


def _run_script(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    # The child imports the same ampkit build as this process (the GPU script may point elsewhere).
    import ampkit

    env["PYTHONPATH"] = os.pathsep.join([os.path.dirname(os.path.dirname(os.path.abspath(ampkit.__file__))),
                                         env.get("PYTHONPATH", "")])
    return subprocess.run([sys.executable, SCRIPT, "--steps", str(STEPS), *args], env=env, capture_output=True,
                          text=True, timeout=600)


def _check_records(records: list, schedule: dict, first_step: int = 0) -> None:
    assert [r["step"] for r in records] == list(range(first_step, STEPS))
    injected = sorted(s for s in schedule if s >= first_step)
    skipped = [r["step"] for r in records if r["skipped"]]
    assert skipped == injected, f"skipped {skipped} but injected {injected}"
    for record in records:
        before, after = record["before"], record["after"]
        if record["injected"]:
            for what in ("masters", "model", "optimizer_state", "step_counters"):
                assert before[what] == after[what], f"step {record['step']} was injected but changed {what}"
        else:
            for what in ("masters", "optimizer_state", "step_counters"):
                assert before[what] != after[what], f"clean step {record['step']} left {what} unchanged"


def _assert_same_final_state(resumed: dict, full: dict) -> None:
    for name, value in full["model"].items():
        assert torch.equal(resumed["model"][name].view(torch.uint8), value.view(torch.uint8)), name
    for index, (a, b) in enumerate(zip(resumed["masters"], full["masters"])):
        assert torch.equal(a, b), f"master {index} differs: max |diff| {(a - b).abs().max().item()}"
    for param_id, state in full["optimizer"]["state"].items():
        for key, value in state.items():
            assert torch.equal(resumed["optimizer"]["state"][param_id][key].cpu(), value.cpu()), (param_id, key)


def _kill_and_resume(tmp_path, device: str) -> None:
    full_out, resumed_out, checkpoint = (str(tmp_path / n) for n in ("full.pt", "resumed.pt", "ck.pt"))
    uninterrupted = _run_script("--device", device, "--out", full_out)
    assert uninterrupted.returncode == 0, uninterrupted.stderr

    killed = _run_script("--device", device, "--checkpoint", checkpoint, "--checkpoint-at", str(KILL_AT),
                         "--kill-after-checkpoint", "--out", str(tmp_path / "never.pt"))
    assert killed.returncode == -signal.SIGKILL, (killed.returncode, killed.stderr)
    assert not os.path.exists(tmp_path / "never.pt")
    assert os.path.exists(checkpoint)
    assert not [n for n in os.listdir(tmp_path) if ".tmp" in n], "a temporary checkpoint file was left behind"

    resumed = _run_script("--device", device, "--checkpoint", checkpoint, "--resume", "--out", resumed_out)
    assert resumed.returncode == 0, resumed.stderr

    full = torch.load(full_out, map_location="cpu", weights_only=True)
    after_resume = torch.load(resumed_out, map_location="cpu", weights_only=True)
    schedule = full["schedule"]
    assert 10 <= len(schedule) <= 45, f"about 1 in 20 of {STEPS} steps should be injected, got {len(schedule)}"
    assert {value for _, _, value in schedule.values() if value == value} == {float("inf"), float("-inf")}
    assert any(value != value for _, _, value in schedule.values()), "no NaN injection in the schedule"
    assert any(s < KILL_AT for s in schedule) and any(s >= KILL_AT for s in schedule)
    _check_records(full["records"], schedule)
    # The resumed run carries the killed run's first 250 records (from the checkpoint) plus its own.
    _check_records(after_resume["records"], schedule)
    assert [r["before"] for r in after_resume["records"]] == [r["before"] for r in full["records"]]
    scales = [r["scale"] for r in full["records"]]
    assert len(set(scales)) > 3, "the scale should both back off and grow in this run"
    assert [r["scale"] for r in after_resume["records"]] == scales
    _assert_same_final_state(after_resume, full)
    for index, master in enumerate(full["masters"]):
        assert torch.isfinite(master).all(), f"master {index} holds a non-finite value after the run"
    assert full["records"][-1]["loss"] < 0.5 * full["records"][0]["loss"], "the run did not train"


def test_kill_and_resume_cpu(tmp_path):
    _kill_and_resume(tmp_path, "cpu")


@pytest.mark.cuda
def test_kill_and_resume_cuda(tmp_path):
    _kill_and_resume(tmp_path, "cuda")


# ---- refused checkpoints leave the running state alone ----

def _trained(device: str, steps: int, hidden: int = 32):
    model, optimizer, scaler = fir.build(device, hidden=hidden)
    torch.manual_seed(7)
    for _ in range(steps):
        fir.train_step(model, optimizer, scaler, device, None)
    return model, optimizer, scaler


def _check_refusals(tmp_path, device: str) -> None:
    model, optimizer, scaler = _trained(device, 5)
    good = str(tmp_path / "good.pt")
    fir.save_checkpoint(good, *_trained(device, 3), step=3, records=[])
    # The valid checkpoint loads (so the refusals below are about the damage, not the setup).
    other_model, other_optimizer, other_scaler = fir.build(device)
    assert fir.load_checkpoint(good, other_model, other_optimizer, other_scaler)[0] == 3

    before = fir.running_state_digest(model, optimizer, scaler)
    scale_before = scaler.get_scale()

    truncated = str(tmp_path / "truncated.pt")
    with open(good, "rb") as source:
        data = source.read()
    with open(truncated, "wb") as target:
        target.write(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"truncated\.pt.*cannot be read"):
        fir.load_checkpoint(truncated, model, optimizer, scaler)
    assert fir.running_state_digest(model, optimizer, scaler) == before

    foreign = str(tmp_path / "foreign.pt")
    fir.save_checkpoint(foreign, *_trained(device, 2, hidden=48), step=2, records=[])
    with pytest.raises(ValueError, match=r"foreign\.pt.*from another model.*\(48, 16\)"):
        fir.load_checkpoint(foreign, model, optimizer, scaler)
    assert fir.running_state_digest(model, optimizer, scaler) == before

    # Same model shapes, but the optimizer state inside is damaged: refused after the model was
    # already loaded, so this exercises the roll-back.
    state = torch.load(good, map_location="cpu", weights_only=True)
    first = next(iter(state["optimizer"]["state"].values()))
    first["exp_avg"] = first["exp_avg"][:1]
    damaged = str(tmp_path / "damaged.pt")
    torch.save(state, damaged)
    with pytest.raises(ValueError, match=r"damaged\.pt.*does not fit this run.*exp_avg"):
        fir.load_checkpoint(damaged, model, optimizer, scaler)
    assert fir.running_state_digest(model, optimizer, scaler) == before

    not_a_checkpoint = str(tmp_path / "weights.pt")
    torch.save(model.state_dict(), not_a_checkpoint)
    with pytest.raises(ValueError, match=r"is not a ampkit.fault_injection/1 checkpoint"):
        fir.load_checkpoint(not_a_checkpoint, model, optimizer, scaler)
    assert fir.running_state_digest(model, optimizer, scaler) == before

    # The running state still trains on as before.
    fir.train_step(model, optimizer, scaler, device, None)
    assert fir.running_state_digest(model, optimizer, scaler) != before
    assert scaler.get_scale() in (scale_before, 2 * scale_before)


def test_refused_checkpoints_cpu(tmp_path):
    _check_refusals(tmp_path, "cpu")


@pytest.mark.cuda
def test_refused_checkpoints_cuda(tmp_path):
    _check_refusals(tmp_path, "cuda")


def test_checkpoint_write_is_atomic(tmp_path, monkeypatch):
    """A save that dies mid-write leaves the previous checkpoint intact and loadable."""
    model, optimizer, scaler = _trained("cpu", 2)
    path = str(tmp_path / "ck.pt")
    fir.save_checkpoint(path, model, optimizer, scaler, step=2, records=[])
    with open(path, "rb") as handle:
        original = handle.read()

    def failing_save(obj, handle, *args, **kwargs):
        handle.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(fir.torch, "save", failing_save)
    with pytest.raises(OSError, match="disk full"):
        fir.save_checkpoint(path, model, optimizer, scaler, step=3, records=[])
    monkeypatch.undo()
    assert os.listdir(tmp_path) == ["ck.pt"], "the failed save left a temporary file"
    with open(path, "rb") as handle:
        assert handle.read() == original
    fresh = fir.build("cpu")
    assert fir.load_checkpoint(path, *fresh)[0] == 2
