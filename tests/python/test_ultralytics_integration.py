"""ampkit.integrations.ultralytics: amp=True inside a real Ultralytics YOLO training run.

Each test trains a YOLOv8n built from its yaml (no pretrained weights) for a few iterations on a
tiny detection dataset written to tmp_path, on the CPU, offline, and checks what ampkit did: which
dtype the convolutions ran in, which scaler and which AMP check the trainer used, that the losses
are finite and the weights moved. Sockets are blocked for the whole run, so a download or an
analytics call would fail the test rather than go unnoticed.
"""
from __future__ import annotations

import logging
import math
import os
import socket

import numpy as np
import pytest
import torch

import ampkit

# Before Ultralytics is imported: it reads these once, at import time.
os.environ.setdefault("YOLO_OFFLINE", "1")
os.environ.setdefault("YOLO_CONFIG_DIR", os.path.join(
    os.environ.get("TMPDIR", "/tmp"), f"ampkit-tests-ultralytics-{os.getuid()}"))
os.environ.setdefault("YOLO_AUTOINSTALL", "False")


ultralytics = pytest.importorskip("ultralytics")
from ultralytics import YOLO  # noqa: E402
from ultralytics.utils import SETTINGS, USER_CONFIG_DIR  # noqa: E402

from ampkit.integrations.ultralytics import AmpkitDetectionTrainer, ampkit_trainer  # noqa: E402

SETTINGS.update({"sync": False})  # no analytics events


def _font_in_config_dir() -> None:
    """Ultralytics' dataset check looks for Arial.ttf (for plots) and, when it is neither in the config
    dir nor known to matplotlib, asks github.com for it even offline. A copy of matplotlib's bundled
    DejaVuSans under that name, in the test's own config dir, answers it locally."""
    import shutil

    import matplotlib

    target = USER_CONFIG_DIR / "Arial.ttf"
    if not target.exists():
        shutil.copyfile(os.path.join(matplotlib.get_data_path(), "fonts", "ttf", "DejaVuSans.ttf"), target)


_font_in_config_dir()

IMAGES = 8
IMAGE_SIZE = 64
CLASSES = ("red", "green")
COLOURS = {0: (220, 30, 30), 1: (30, 200, 40)}


@pytest.fixture()
def no_network(monkeypatch):
    """Every connection attempt or name lookup is recorded and refused."""
    attempts: list[str] = []

    def refuse(*args, **kwargs):
        attempts.append(repr(args[:2]))
        raise OSError("network access is blocked in this test")

    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)
    yield attempts
    assert attempts == [], f"Ultralytics tried to reach the network: {attempts}"


@pytest.fixture()
def dataset(tmp_path):
    """IMAGES random-noise images with one or two coloured rectangles each, YOLO label files, a data yaml."""
    from PIL import Image

    rng = np.random.default_rng(0)
    root = tmp_path / "data"
    for split in ("train", "val"):
        (root / "images" / split).mkdir(parents=True)
        (root / "labels" / split).mkdir(parents=True)
    for index in range(IMAGES):
        split = "train" if index < IMAGES - 2 else "val"
        pixels = rng.integers(0, 60, size=(IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)
        lines = []
        for _ in range(int(rng.integers(1, 3))):
            cls = int(rng.integers(0, len(CLASSES)))
            w, h = (int(v) for v in rng.integers(12, 32, size=2))
            x0, y0 = int(rng.integers(0, IMAGE_SIZE - w)), int(rng.integers(0, IMAGE_SIZE - h))
            pixels[y0:y0 + h, x0:x0 + w] = COLOURS[cls]
            lines.append(f"{cls} {(x0 + w / 2) / IMAGE_SIZE:.6f} {(y0 + h / 2) / IMAGE_SIZE:.6f} "
                         f"{w / IMAGE_SIZE:.6f} {h / IMAGE_SIZE:.6f}")
        Image.fromarray(pixels).save(root / "images" / split / f"{index}.png")
        (root / "labels" / split / f"{index}.txt").write_text("\n".join(lines) + "\n")
    data_yaml = tmp_path / "data.yaml"
    data_yaml.write_text(f"path: {root}\ntrain: images/train\nval: images/val\n"
                         f"names:\n" + "".join(f"  {i}: {name}\n" for i, name in enumerate(CLASSES)))
    return data_yaml


@pytest.fixture()
def ultralytics_log():
    """The Ultralytics logger's messages during the test."""
    records: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record):
            records.append(record.getMessage())

    logger = logging.getLogger("ultralytics")
    handler = Collect(level=logging.INFO)
    logger.addHandler(handler)
    yield records
    logger.removeHandler(handler)


def train(data_yaml, tmp_path, trainer, amp, epochs=1, device="cpu", **overrides):
    """Trains YOLOv8n from its yaml; returns the trainer, the initial weights and the conv output dtypes."""
    torch.manual_seed(0)
    model = YOLO("yolov8n.yaml")
    conv_output_dtypes: set[torch.dtype] = set()
    act_output_dtypes: set[torch.dtype] = set()
    initial: dict[str, torch.Tensor] = {}
    hooks = []

    def record(dtypes):
        return lambda module, args, output: dtypes.add(output.dtype) if module.training else None

    def watch(trainer_):
        # Runs once the training model exists, after its EMA copy and before the first batch.
        initial.update({k: v.detach().clone() for k, v in trainer_.model.named_parameters() if v.requires_grad})
        for module in trainer_.model.modules():
            if isinstance(module, torch.nn.Conv2d):
                hooks.append(module.register_forward_hook(record(conv_output_dtypes)))
            elif isinstance(module, torch.nn.SiLU):
                hooks.append(module.register_forward_hook(record(act_output_dtypes)))

    model.add_callback("on_train_start", watch)
    try:
        model.train(
            data=str(data_yaml), trainer=trainer, amp=amp, epochs=epochs, imgsz=IMAGE_SIZE, batch=4, workers=0,
            device=device, project=str(tmp_path / "runs"), name="train", exist_ok=True, plots=False, val=False,
            seed=0, deterministic=True, verbose=False, mosaic=0.0, warmup_epochs=0.0, **overrides,
        )
    finally:
        # Ultralytics' Conv blocks share one SiLU instance across all models: a hook left on it would
        # reach the next test's model and its checkpoints.
        for handle in hooks:
            handle.remove()
    return model.trainer, initial, conv_output_dtypes, act_output_dtypes


def assert_trained(trainer, initial):
    losses = [float(v) for v in trainer.tloss.values()]
    assert losses and all(math.isfinite(v) for v in losses), f"non-finite mean training losses {losses}"
    final = dict(trainer.model.named_parameters())
    # Every trainable conv weight gets a gradient from the detection loss (the DFL conv is frozen by
    # Ultralytics); checking all of them catches a run that skipped its optimizer steps.
    conv_weights = [k for k in initial if k.endswith("conv.weight")]
    unchanged = [k for k in conv_weights if torch.equal(initial[k], final[k].detach())]
    assert conv_weights and not unchanged, f"conv weights that did not change: {unchanged}"


def test_amp_true_trains_under_ampkit_autocast_with_ampkit_scaler_and_check(
        dataset, tmp_path, no_network, ultralytics_log):
    trainer, initial, conv_dtypes, _ = train(dataset, tmp_path, AmpkitDetectionTrainer, amp=True)

    # Ultralytics alone would train in FP32 on the CPU (its check_amp says no for CPUs). bf16 here
    # shows AMP is on; that ampkit's lists (not torch's) route the ops is the next test's job.
    assert conv_dtypes == {torch.bfloat16}
    assert trainer.amp is True and trainer.amp_dtype == torch.bfloat16
    assert isinstance(trainer.scaler, ampkit.GradScaler)
    assert not trainer.scaler.is_enabled()  # bf16 needs no loss scaling
    assert isinstance(trainer.amp_check, ampkit.AmpCheck) and trainer.amp_check.ok, trainer.amp_check
    assert trainer.amp_check.dtype == torch.bfloat16
    assert any("ampkit AMP check PASS on cpu with bfloat16" in line for line in ultralytics_log), ultralytics_log
    assert not any("downloading" in line.lower() for line in ultralytics_log)
    assert_trained(trainer, initial)
    # The hooks that opened ampkit's regions are gone once training ends, and no region leaked.
    assert trainer._ampkit_hooks == [] and not torch.is_autocast_enabled("cpu")
    # Ultralytics wrote only under project=.
    assert (tmp_path / "runs" / "train" / "weights" / "last.pt").is_file()


def test_policy_decides_the_lists_not_torch_autocast(dataset, tmp_path, no_network):
    # conv2d moved to the fp32 list and silu to the bf16 list: torch's CPU autocast would do the
    # opposite (conv2d bf16, silu untouched), so this dtype pattern can only come from ampkit's policy.
    policy = ampkit.Policy.default("cpu", torch.bfloat16).deny("conv2d").allow("silu")
    trainer_class = ampkit_trainer(policy=policy, scaler_options={"growth_interval": 100})
    trainer, initial, conv_dtypes, act_dtypes = train(dataset, tmp_path, trainer_class, amp=True)

    assert conv_dtypes == {torch.float32}
    assert act_dtypes == {torch.bfloat16}
    assert trainer.amp_check.ok and trainer.amp_dtype == torch.bfloat16
    assert_trained(trainer, initial)


def test_amp_false_leaves_ampkit_out(dataset, tmp_path, no_network, ultralytics_log):
    trainer, initial, conv_dtypes, _ = train(dataset, tmp_path, AmpkitDetectionTrainer, amp=False)

    assert conv_dtypes == {torch.float32}
    assert trainer.amp is False and trainer.amp_dtype is None and trainer.amp_check is None
    assert not isinstance(trainer.scaler, ampkit.GradScaler)  # Ultralytics' own (disabled) torch scaler
    assert not any("AMP check" in line for line in ultralytics_log)
    assert_trained(trainer, initial)


class StopAfterFirstEpoch(Exception):
    pass


def test_resume_restores_the_ampkit_scaler_state(dataset, tmp_path, no_network):
    # An interrupted fp16 run leaves last.pt with the scaler's state; resuming must continue from it,
    # not from a fresh 2^16 scale (Ultralytics loads it while its stand-in scaler is disabled).
    saved = {}

    def stop(trainer_):
        saved["scale"] = trainer_.scaler.get_scale()
        raise StopAfterFirstEpoch

    model = YOLO("yolov8n.yaml")
    model.add_callback("on_fit_epoch_end", stop)
    with pytest.raises(StopAfterFirstEpoch):
        model.train(data=str(dataset), trainer=AmpkitDetectionTrainer, amp="fp16", epochs=2, nbs=4, imgsz=IMAGE_SIZE,
                    batch=4, workers=0, device="cpu", project=str(tmp_path / "runs"), name="train", plots=False,
                    val=False, seed=0, deterministic=True, mosaic=0.0, warmup_epochs=0.0)
    last = tmp_path / "runs" / "train" / "weights" / "last.pt"
    assert saved["scale"] < 2.0**16, "the first epoch had no overflow to back off from; the test needs one"

    resumed = {}
    model = YOLO(str(last))
    model.add_callback("on_train_start", lambda trainer_: resumed.update(scale=trainer_.scaler.get_scale()))
    model.train(resume=True, trainer=AmpkitDetectionTrainer)
    assert resumed["scale"] == saved["scale"]
    assert isinstance(model.trainer.scaler, ampkit.GradScaler) and model.trainer.start_epoch == 1


def test_amp_bf16_string_on_cpu(dataset, tmp_path, no_network):
    # Ultralytics' own autocast refuses amp="bf16" on the CPU; with ampkit it trains in bf16.
    trainer, initial, conv_dtypes, _ = train(dataset, tmp_path, AmpkitDetectionTrainer, amp="bf16")

    assert conv_dtypes == {torch.bfloat16} and trainer.amp_dtype == torch.bfloat16
    assert_trained(trainer, initial)


def test_amp_fp16_on_cpu_scales_the_loss_with_ampkit_scaler(dataset, tmp_path, no_network):
    # nbs=batch: an optimizer step every iteration (Ultralytics accumulates up to nbs=64 images).
    trainer, initial, conv_dtypes, _ = train(dataset, tmp_path, AmpkitDetectionTrainer, amp="fp16", epochs=2, nbs=4)

    assert conv_dtypes == {torch.float16} and trainer.amp_dtype == torch.float16
    scaler = trainer.scaler
    assert isinstance(scaler, ampkit.GradScaler) and scaler.is_enabled()
    # Dynamic loss scaling from 2^16: steps whose fp16 gradients overflowed were skipped and halved
    # the scale; the others stepped. The counters are the scaler's own device-side bookkeeping.
    skipped, overflows = int(scaler.skipped_steps), int(scaler.overflow_events)
    assert skipped == overflows and scaler.get_scale() == 2.0**16 / 2**overflows, (scaler.get_scale(), overflows)
    assert skipped < 4, f"all {skipped} optimizer steps were skipped"
    assert_trained(trainer, initial)


def test_failed_check_trains_in_fp32(dataset, tmp_path, no_network, ultralytics_log):
    # No bf16 forward of YOLOv8n is within 1e-9 of FP32 (bf16 keeps 8 mantissa bits): the check fails,
    # and amp="bf16" (which Ultralytics' own autocast would honour regardless) must not autocast.
    trainer_class = ampkit_trainer(check_tolerance=1e-9)
    trainer, initial, conv_dtypes, _ = train(dataset, tmp_path, trainer_class, amp="bf16")

    assert not trainer.amp_check.ok and "differ from FP32" in trainer.amp_check.reason
    assert any("ampkit AMP check FAIL on cpu with bfloat16" in line and "training in FP32" in line
               for line in ultralytics_log), ultralytics_log
    assert conv_dtypes == {torch.float32} and trainer.amp is False
    assert isinstance(trainer.scaler, ampkit.GradScaler) and not trainer.scaler.is_enabled()
    assert_trained(trainer, initial)


def test_bad_configuration_is_named():
    with pytest.raises(TypeError, match="base must be an Ultralytics BaseTrainer subclass"):
        ampkit_trainer(base=dict)
    with pytest.raises(TypeError, match="policy must be an ampkit.Policy"):
        ampkit_trainer(policy="mixed_bfloat16")
    with pytest.raises(ValueError, match="must not set enabled"):
        ampkit_trainer(scaler_options={"enabled": False})
    with pytest.raises(ValueError, match="check_tolerance must be a finite number > 0"):
        ampkit_trainer(check_tolerance=float("nan"))
    with pytest.raises(ValueError, match="growth_interval"):
        ampkit_trainer(scaler_options={"growth_interval": 0})


def test_compile_is_rejected_with_ampkit(dataset, tmp_path, no_network):
    with pytest.raises(ValueError, match="compile=True cannot be combined with ampkit's amp=True"):
        YOLO("yolov8n.yaml").train(data=str(dataset), trainer=AmpkitDetectionTrainer, amp=True, compile=True, epochs=1,
                                   imgsz=IMAGE_SIZE, batch=4, workers=0, device="cpu", project=str(tmp_path / "runs"),
                                   plots=False)


def test_policy_for_another_device_is_rejected(dataset, tmp_path, no_network):
    trainer_class = ampkit_trainer(policy=ampkit.Policy.default("cuda", torch.float16))
    with pytest.raises(ValueError, match="ampkit_policy is for device type 'cuda', but training runs on 'cpu'"):
        YOLO("yolov8n.yaml").train(data=str(dataset), trainer=trainer_class, amp=True, epochs=1, imgsz=IMAGE_SIZE,
                                   batch=4, workers=0, device="cpu", project=str(tmp_path / "runs"), plots=False)


@pytest.mark.cuda
def test_amp_true_on_cuda_trains_in_fp16_with_ampkit_loss_scaling(dataset, tmp_path, no_network, ultralytics_log):
    trainer, initial, conv_dtypes, _ = train(dataset, tmp_path, AmpkitDetectionTrainer, amp=True, device="0")

    assert conv_dtypes == {torch.float16}
    assert trainer.amp is True and trainer.amp_dtype == torch.float16
    assert trainer.amp_check.ok and trainer.amp_check.dtype == torch.float16, trainer.amp_check
    assert any("ampkit AMP check PASS on cuda" in line for line in ultralytics_log), ultralytics_log
    assert isinstance(trainer.scaler, ampkit.GradScaler) and trainer.scaler.is_enabled()
    # A few clean steps from 2^16: the scale stays a finite power of two (it halves on an overflow).
    scale = trainer.scaler.get_scale()
    assert math.isfinite(scale) and 0 < scale <= 2.0**16 and math.log2(scale).is_integer(), scale
    assert_trained(trainer, initial)
