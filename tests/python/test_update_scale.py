"""update_scale_ against torch._amp_update_scale_ and against the hysteresis/bounds rules."""
from __future__ import annotations

import random
import struct

import pytest
import torch

import ampkit  # noqa: F401  (registers torch.ops.ampkit.*)

op = torch.ops.ampkit.update_scale_
FLT_MAX = 3.4028234663852886e38


def state(device, scale=65536.0, growth=0, hysteresis=0):
    return (torch.full((), scale, dtype=torch.float32, device=device),
            torch.full((), growth, dtype=torch.int32, device=device),
            torch.full((), hysteresis, dtype=torch.int32, device=device))


def bits(tensor):
    return struct.unpack("<I", struct.pack("<f", tensor.item()))[0]


@pytest.mark.parametrize("config", [(2.0, 0.5, 2000), (2.0, 0.5, 3), (1.7, 0.3, 5), (1.0001, 0.9999, 1),
                                    (3.14159, 0.123456789, 2)])
def test_bit_identical_to_torch_amp_update_scale(device, config):
    growth_factor, backoff_factor, interval = config
    rng = random.Random(hash(config) & 0xFFFF)
    for start in (65536.0, 1.2345e-3, 3.0e37, 1.0):
        scale, growth, hysteresis = state(device, start)
        torch_scale, torch_growth = scale.clone(), growth.clone()
        for step in range(400):
            # Runs of clean steps long enough to grow, with overflows (1.0, NaN, 2.0 as summed
            # found_infs from several optimizers can be) sprinkled in.
            found_value = rng.choice([1.0, 2.0, float("nan")]) if rng.random() < 0.2 else 0.0
            found_inf = torch.full((), found_value, device=device)
            op(scale, growth, hysteresis, found_inf, growth_factor, backoff_factor, interval)
            torch._amp_update_scale_(torch_scale, torch_growth, found_inf, growth_factor, backoff_factor, interval)
            assert bits(scale) == bits(torch_scale), f"step {step}: {scale.item()} vs {torch_scale.item()}"
            assert growth.item() == torch_growth.item()


def test_growth_stops_below_inf_like_torch(device):
    scale, growth, hysteresis = state(device, 2.0 ** 127)
    torch_scale, torch_growth = scale.clone(), growth.clone()
    clean = torch.zeros((), device=device)
    for _ in range(3):
        op(scale, growth, hysteresis, clean, 2.0, 0.5, 1)
        torch._amp_update_scale_(torch_scale, torch_growth, clean, 2.0, 0.5, 1)
    assert scale.item() == torch_scale.item() == 2.0 ** 127


def test_scale_never_reaches_zero(device):
    scale, growth, hysteresis = state(device, 1e-30)
    overflow = torch.ones((), device=device)
    for _ in range(200):
        op(scale, growth, hysteresis, overflow, 2.0, 0.5, 2000)
    assert scale.item() > 0.0
    assert scale.item() == 2.0 ** -149  # the smallest positive float32: halving it would give 0


def test_hysteresis_backs_off_only_after_consecutive_overflows(device):
    scale, growth, hysteresis = state(device, 1024.0)
    overflow, clean = torch.ones((), device=device), torch.zeros((), device=device)

    def run(found):
        op(scale, growth, hysteresis, found, 2.0, 0.5, 100, 3)
        return scale.item(), growth.item(), hysteresis.item()

    assert run(clean) == (1024.0, 1, 0)
    assert run(overflow) == (1024.0, 0, 1)  # absorbed, but the step still resets growth
    assert run(overflow) == (1024.0, 0, 2)  # absorbed
    assert run(clean) == (1024.0, 1, 0)  # a clean step resets the streak
    assert run(overflow) == (1024.0, 0, 1)
    assert run(overflow) == (1024.0, 0, 2)
    assert run(overflow) == (512.0, 0, 3)  # third in a row: back off
    assert run(overflow) == (256.0, 0, 3)  # and every further one in the streak
    assert run(clean) == (256.0, 1, 0)


def test_min_and_max_scale(device):
    scale, growth, hysteresis = state(device, 8.0)
    overflow, clean = torch.ones((), device=device), torch.zeros((), device=device)
    for _ in range(5):
        op(scale, growth, hysteresis, overflow, 2.0, 0.5, 1, 1, 3.0, 40.0)
    assert scale.item() == 3.0
    for _ in range(5):
        op(scale, growth, hysteresis, clean, 2.0, 0.5, 1, 1, 3.0, 40.0)
    assert scale.item() == 40.0
    # An infinite bound is no bound.
    op(scale, growth, hysteresis, clean, 2.0, 0.5, 1, 1, 0.0, float("inf"))
    assert scale.item() == 80.0


def test_tracker_beyond_interval_still_grows(device):
    # A tracker loaded from a run with a longer growth interval.
    scale, growth, hysteresis = state(device, 4.0, growth=50)
    op(scale, growth, hysteresis, torch.zeros((), device=device), 2.0, 0.5, 10)
    assert scale.item() == 8.0 and growth.item() == 0


def args(**overrides):
    scale, growth, hysteresis = state("cpu")
    values = dict(scale=scale, growth_tracker=growth, hysteresis_tracker=hysteresis, found_inf=torch.zeros(()),
                  growth_factor=2.0, backoff_factor=0.5, growth_interval=2000, hysteresis=1, min_scale=0.0,
                  max_scale=FLT_MAX)
    values.update(overrides)
    return list(values.values())


BAD_INPUTS = [
    ("growth_factor 1", dict(growth_factor=1.0), ValueError, "growth_factor must be a finite number > 1, got 1"),
    ("growth_factor 0.5", dict(growth_factor=0.5), ValueError, "growth_factor must be a finite number > 1, got 0.5"),
    ("growth_factor inf", dict(growth_factor=float("inf")), ValueError, "growth_factor must be a finite number > 1"),
    ("backoff_factor 1", dict(backoff_factor=1.0), ValueError, "backoff_factor must be in (0, 1), got 1"),
    ("backoff_factor 0", dict(backoff_factor=0.0), ValueError, "backoff_factor must be in (0, 1), got 0"),
    ("backoff_factor nan", dict(backoff_factor=float("nan")), ValueError, "backoff_factor must be in (0, 1), got nan"),
    ("growth_interval 0", dict(growth_interval=0), ValueError, "growth_interval must be in [1, 2^31-1]"),
    ("growth_interval 2^31", dict(growth_interval=2 ** 31), ValueError, "growth_interval must be in [1, 2^31-1]"),
    ("hysteresis 0", dict(hysteresis=0), ValueError, "hysteresis must be in [1, 2^31-1]"),
    ("min_scale -1", dict(min_scale=-1.0), ValueError, "min_scale must be a finite number >= 0, got -1"),
    ("max_scale 0", dict(max_scale=0.0), ValueError, "max_scale must be > 0 (inf for no bound), got 0"),
    ("min above max", dict(min_scale=10.0, max_scale=5.0), ValueError, "min_scale (10) must not exceed max_scale (5)"),
    ("scale float64", dict(scale=torch.ones((), dtype=torch.float64)), TypeError,
     "scale must be a one-element float32 tensor, got dtype float64"),
    ("growth_tracker int64", dict(growth_tracker=torch.zeros((), dtype=torch.int64)), TypeError,
     "growth_tracker must be a one-element int32 tensor, got dtype int64"),
    ("hysteresis_tracker float", dict(hysteresis_tracker=torch.zeros(())), TypeError,
     "hysteresis_tracker must be a one-element int32 tensor, got dtype float32"),
    ("found_inf on another device", dict(found_inf=torch.zeros((), device="meta")), RuntimeError,
     "found_inf must be on cpu (the device of scale), got meta"),
    ("growth_tracker of two elements", dict(growth_tracker=torch.zeros(2, dtype=torch.int32)), RuntimeError,
     "growth_tracker must be a one-element int32 tensor, got 2 elements"),
]


@pytest.mark.parametrize("case", BAD_INPUTS, ids=[c[0] for c in BAD_INPUTS])
def test_bad_input_is_a_clear_error(case):
    _, overrides, error, message = case
    with pytest.raises(error) as info:
        op(*args(**overrides))
    assert message in str(info.value)


def test_opcheck(device):
    scale, growth, hysteresis = state(device)
    torch.library.opcheck(op.default, (scale, growth, hysteresis, torch.ones((), device=device), 2.0, 0.5, 10, 2,
                                       1.0, 1e6))
