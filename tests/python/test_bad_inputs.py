"""Bad input through every public Python entry point: each case must raise an exception of the
stated type whose message names the offending argument; never a crash, a hang, or a silent
(wrong) result. The ops are driven both through ``torch.ops.ampkit.*`` and through the ampkit
wrappers and classes. 'meta' tensors stand in for "a tensor on another device" (this machine has
no GPU); the checks compare devices the same way for cuda.

The C++ counterpart is tests/cpp/test_bad_inputs.cpp.
"""
from __future__ import annotations

import re

import pytest
import torch
from torch import nn

import ampkit
from conftest import registered_ampkit_ops
from ampkit import optim as aoptim

ops = torch.ops.ampkit
NAN = float("nan")
INF = float("inf")


def one(value: float = 1.0, dtype: torch.dtype = torch.float32, device: str = "cpu") -> torch.Tensor:
    return torch.full((1,), value, dtype=dtype, device=device)


def int_one(value: int = 0) -> torch.Tensor:
    return torch.full((1,), value, dtype=torch.int32)


def meta(*shape: int) -> torch.Tensor:
    return torch.empty(*shape, device="meta")


# ---- op call builders: valid arguments, one of them replaced per case ----

def mts(inputs=None, outputs=None, scale=None, found_inf=None):
    inputs = [torch.ones(4)] if inputs is None else inputs
    outputs = [torch.zeros(4)] if outputs is None else outputs
    ops.multi_tensor_scale_(inputs, outputs, one() if scale is None else scale,
                            one(0) if found_inf is None else found_inf)


def unscale(grads=None, found_inf=None, inv_scale=None, norm_out=None):
    grads = [torch.ones(4)] if grads is None else grads
    ops.unscale_and_check_(grads, one(0) if found_inf is None else found_inf,
                           one(0.5) if inv_scale is None else inv_scale, norm_out)


def update_scale(scale=None, growth_tracker=None, hysteresis_tracker=None, found_inf=None, growth_factor=2.0,
                 backoff_factor=0.5, growth_interval=2000, hysteresis=1, min_scale=0.0, max_scale=3.4e38):
    ops.update_scale_(one(65536.0) if scale is None else scale,
                      int_one(0) if growth_tracker is None else growth_tracker,
                      int_one(1) if hysteresis_tracker is None else hysteresis_tracker,
                      one(0) if found_inf is None else found_inf,
                      growth_factor, backoff_factor, growth_interval, hysteresis, min_scale, max_scale)


def sgd_step(params=None, masters=None, grads=None, buffers=None, steps=None, lr=None, found_inf=None,
             momentum=0.9, dampening=0.0, weight_decay=0.0, nesterov=False):
    params = [torch.ones(4, dtype=torch.bfloat16)] if params is None else params
    ops.master_sgd_step_(
        params,
        [torch.ones(4) for _ in params] if masters is None else masters,
        [torch.ones(4, dtype=torch.bfloat16) for _ in params] if grads is None else grads,
        [torch.zeros(4) for _ in params] if buffers is None else buffers,
        [torch.zeros(()) for _ in params] if steps is None else steps,
        one(0.1) if lr is None else lr, one(), one(), found_inf, momentum, dampening, weight_decay, nesterov, False)


def adam_step(params=None, masters=None, grads=None, exp_avgs=None, exp_avg_sqs=None, steps=None, lr=None,
              clip_coef=None, found_inf=None, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0):
    params = [torch.ones(4, dtype=torch.bfloat16)] if params is None else params
    ops.master_adam_step_(
        params,
        [torch.ones(4) for _ in params] if masters is None else masters,
        [torch.ones(4, dtype=torch.bfloat16) for _ in params] if grads is None else grads,
        [torch.zeros(4) for _ in params] if exp_avgs is None else exp_avgs,
        [torch.zeros(4) for _ in params] if exp_avg_sqs is None else exp_avg_sqs,
        [],  # max_exp_avg_sqs: amsgrad off
        [torch.zeros(()) for _ in params] if steps is None else steps,
        one(0.1) if lr is None else lr, one(), one() if clip_coef is None else clip_coef, found_inf,
        beta1, beta2, eps, weight_decay, False, False)


def shared(factory, use):
    """Calls `use(t)` with one tensor `t` from `factory()`: for the aliasing cases."""
    return lambda: use(factory())


def params(n: int = 1, dtype: torch.dtype = torch.float32) -> list[nn.Parameter]:
    return [nn.Parameter(torch.ones(4, dtype=dtype)) for _ in range(n)]


def stepped(optimizer_factory, grad, **step_kwargs):
    """Builds an optimizer over one parameter, sets `grad` as its gradient and steps."""
    def run():
        param = nn.Parameter(torch.ones(4))
        optimizer = optimizer_factory([param])
        param.grad = grad
        optimizer.step(**step_kwargs)
    return run


def scaler_after_scale(action):
    def run():
        scaler = ampkit.GradScaler("cpu")
        scaler.scale(torch.ones(1))
        action(scaler)
    return run


def tiny_model() -> nn.Module:
    return nn.Sequential(nn.Linear(4, 3))


def trainer(**kwargs) -> ampkit.Trainer:
    return ampkit.Trainer(tiny_model(), device="cpu", progress=False, self_check=False, **kwargs)


def trainer_on_missing_cuda():
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    return ampkit.Trainer(tiny_model(), device="cuda", progress=False)


def enter(region):
    with region:
        pass


X, W, B = torch.randn(3, 4), torch.randn(5, 4), torch.randn(5)

# (id, call, exception type, fragment of the message that names the argument)
CASES = [
    # ---- multi_tensor_scale_: torch.ops.ampkit and ampkit.multi_tensor_scale_ ----
    ("mts/empty", lambda: mts([], []), ValueError, "inputs must hold at least one tensor, got an empty list"),
    ("mts/length", lambda: mts(outputs=[torch.zeros(4), torch.zeros(4)]), RuntimeError,
     "outputs must hold as many tensors as inputs (1), got 2"),
    ("mts/device", lambda: mts(outputs=[meta(4)]), RuntimeError, "outputs[0] must be on cpu (the device of inputs[0]), got meta"),
    ("mts/dtype", lambda: mts(inputs=[torch.ones(4, dtype=torch.int32)]), TypeError,
     "inputs[0] must have dtype float32, float16 or bfloat16, got int32"),
    ("mts/shape", lambda: mts(outputs=[torch.zeros(5)]), RuntimeError, "outputs[0] must have the shape of inputs[0] [4], got [5]"),
    ("mts/sparse", lambda: mts(inputs=[torch.ones(4).to_sparse()]), RuntimeError,
     "inputs[0] must be a dense (strided) tensor, got layout Sparse"),
    ("mts/non-contiguous", lambda: mts(outputs=[torch.zeros(4, 2)[:, 0]]), RuntimeError, "outputs[0] must be contiguous"),
    ("mts/scale 2 elements", lambda: mts(scale=torch.ones(2)), RuntimeError,
     "scale must be a one-element float32 tensor, got 2 elements"),
    ("mts/scale float64", lambda: mts(scale=one(dtype=torch.float64)), TypeError,
     "scale must be a one-element float32 tensor, got dtype float64"),
    ("mts/found_inf int32", lambda: mts(found_inf=int_one()), TypeError, "found_inf must be a one-element float32 tensor, got dtype int32"),
    ("mts/one output twice", shared(lambda: torch.zeros(4), lambda t: mts([torch.ones(4), torch.ones(4)], [t, t])),
     RuntimeError, "outputs[1] shares memory with outputs[0]"),
    ("mts/found_inf is an output", shared(lambda: torch.zeros(1), lambda t: mts([torch.ones(1)], [t], found_inf=t)),
     RuntimeError, "found_inf shares memory with outputs[0]"),
    ("mts/an input is another output", shared(lambda: torch.ones(4), lambda t: mts([torch.ones(4), t], [t, torch.zeros(4)])),
     RuntimeError, "inputs[1] shares memory with outputs[0]"),
    ("mts/input overlaps its output shifted", shared(lambda: torch.ones(8), lambda t: mts([t[:4]], [t[2:6]])),
     RuntimeError, "inputs[0] shares memory with outputs[0]"),
    ("mts/input is its output in another dtype", shared(lambda: torch.ones(4), lambda t: mts([t], [t.view(torch.bfloat16)[:4]])),
     RuntimeError, "inputs[0] shares memory with outputs[0]"),
    ("mts/wrong python type for scale", lambda: ops.multi_tensor_scale_([torch.ones(4)], [torch.ones(4)], 2.0, one(0)),
     RuntimeError, "argument 'scale'"),
    ("ampkit.mts/scale str", lambda: ampkit.multi_tensor_scale_([torch.ones(4)], scale="2"), TypeError,
     "scale must be a float or a one-element float32 tensor, got str"),
    ("ampkit.mts/not a list", lambda: ampkit.multi_tensor_scale_(torch.ones(4)), TypeError,
     "inputs must be a list or tuple of tensors, got Tensor"),
    ("ampkit.mts/empty", lambda: ampkit.multi_tensor_scale_([]), ValueError, "inputs must hold at least one tensor"),
    ("ampkit.mts/int in list", lambda: ampkit.multi_tensor_scale_([torch.ones(4), 3]), TypeError,
     "inputs[1] must be a tensor, got int"),

    # ---- unscale_and_check_ ----
    ("unscale/device", lambda: unscale(found_inf=one(0, device="meta")), RuntimeError,
     "found_inf must be on cpu (the device of grads[0]), got meta"),
    ("unscale/grad device", lambda: unscale(grads=[torch.ones(4), meta(4)]), RuntimeError, "grads[1] must be on cpu"),
    ("unscale/dtype", lambda: unscale(grads=[torch.ones(4, dtype=torch.int64)]), TypeError,
     "grads[0] must have dtype float32, float16, bfloat16 or float64, got int64"),
    ("unscale/sparse", lambda: unscale(grads=[torch.ones(4).to_sparse()]), RuntimeError, "grads[0] must be a dense (strided) tensor"),
    ("unscale/expanded grad", lambda: unscale(grads=[torch.ones(1).expand(4)]), RuntimeError,
     "grads[0] must not have internally overlapping memory"),
    ("unscale/inv_scale float16", lambda: unscale(inv_scale=one(dtype=torch.float16)), TypeError,
     "inv_scale must be a one-element float32 tensor, got dtype float16"),
    ("unscale/found_inf shape", lambda: unscale(found_inf=torch.zeros(2)), RuntimeError,
     "found_inf must be a one-element float32 tensor, got 2 elements"),
    ("unscale/norm_out float16", lambda: unscale(norm_out=torch.zeros(1, dtype=torch.float16)), TypeError,
     "norm_out must be a one-element float32 tensor, got dtype float16"),
    ("unscale/one grad twice", shared(lambda: torch.full((4,), 8.0), lambda g: unscale(grads=[g, g])), RuntimeError,
     "grads[1] shares memory with grads[0]"),
    ("unscale/overlapping views", shared(lambda: torch.ones(8), lambda f: unscale(grads=[f[:6], f[4:]])), RuntimeError,
     "grads[1] shares memory with grads[0]"),
    ("unscale/norm_out is found_inf", shared(lambda: one(0), lambda t: unscale(found_inf=t, norm_out=t)), RuntimeError,
     "norm_out shares memory with found_inf"),

    # ---- update_scale_ ----
    ("update_scale/growth NaN", lambda: update_scale(growth_factor=NAN), ValueError, "growth_factor must be a finite number > 1, got nan"),
    ("update_scale/backoff inf", lambda: update_scale(backoff_factor=INF), ValueError, "backoff_factor must be in (0, 1), got inf"),
    ("update_scale/interval 0", lambda: update_scale(growth_interval=0), ValueError, "growth_interval must be in [1, 2^31-1]"),
    ("update_scale/hysteresis 0", lambda: update_scale(hysteresis=0), ValueError, "hysteresis must be in [1, 2^31-1]"),
    ("update_scale/min > max", lambda: update_scale(min_scale=10.0, max_scale=1.0), ValueError,
     "min_scale (10) must not exceed max_scale (1)"),
    ("update_scale/min_scale NaN", lambda: update_scale(min_scale=NAN), ValueError, "min_scale must be a finite number >= 0, got nan"),
    ("update_scale/tracker float32", lambda: update_scale(growth_tracker=torch.zeros(1)), TypeError,
     "growth_tracker must be a one-element int32 tensor, got dtype float32"),
    ("update_scale/scale float16", lambda: update_scale(scale=one(dtype=torch.float16)), TypeError,
     "scale must be a one-element float32 tensor, got dtype float16"),
    ("update_scale/tracker device", lambda: update_scale(hysteresis_tracker=torch.ones(1, dtype=torch.int32, device="meta")),
     RuntimeError, "hysteresis_tracker must be on cpu (the device of scale), got meta"),
    ("update_scale/one tensor for both trackers", shared(lambda: int_one(1), lambda t: update_scale(growth_tracker=t, hysteresis_tracker=t)),
     RuntimeError, "hysteresis_tracker shares memory with growth_tracker"),
    ("update_scale/found_inf is scale", shared(lambda: one(0), lambda t: update_scale(scale=t, found_inf=t)),
     RuntimeError, "found_inf shares memory with scale"),
    ("update_scale/interval str", lambda: update_scale(growth_interval="5"), RuntimeError, "argument 'growth_interval'"),

    # ---- reciprocal_scale ----
    ("reciprocal_scale/two elements", lambda: ops.reciprocal_scale(torch.ones(2)), RuntimeError,
     "scale must be a one-element floating-point tensor, got 2 elements"),
    ("reciprocal_scale/int32", lambda: ops.reciprocal_scale(int_one(4)), TypeError,
     "scale must be a one-element floating-point tensor, got dtype int32"),

    # ---- master_sgd_step_ / master_adam_step_ ----
    ("sgd_step/length", lambda: sgd_step(grads=[torch.ones(4, dtype=torch.bfloat16)] * 2), RuntimeError,
     "grads must hold as many tensors as params (1), got 2"),
    ("sgd_step/master bfloat16", lambda: sgd_step(masters=[torch.ones(4, dtype=torch.bfloat16)]), TypeError,
     "master_params[0] must have dtype float32"),
    ("sgd_step/grad shape", lambda: sgd_step(grads=[torch.ones(5, dtype=torch.bfloat16)]), RuntimeError,
     "grads[0] must have the shape of params[0] [4], got [5]"),
    ("sgd_step/master device", lambda: sgd_step(masters=[meta(4)]), RuntimeError, "master_params[0] must be on cpu"),
    ("sgd_step/sparse grad", lambda: sgd_step(grads=[torch.ones(4, dtype=torch.bfloat16).to_sparse()]), RuntimeError,
     "grads[0] must be a dense (strided) tensor"),
    ("sgd_step/empty", lambda: sgd_step(params=[], masters=[], grads=[], buffers=[], steps=[]), ValueError,
     "params must hold at least one tensor"),
    ("sgd_step/momentum NaN", lambda: sgd_step(momentum=NAN), ValueError, "momentum must be a finite value >= 0, got nan"),
    ("sgd_step/weight_decay inf", lambda: sgd_step(weight_decay=INF), ValueError, "weight_decay must be a finite value >= 0, got inf"),
    ("sgd_step/dampening NaN", lambda: sgd_step(dampening=NAN), ValueError, "dampening must be finite, got nan"),
    ("sgd_step/nesterov without momentum", lambda: sgd_step(momentum=0.0, nesterov=True), ValueError,
     "nesterov momentum needs momentum > 0"),
    ("sgd_step/lr 2 elements", lambda: sgd_step(lr=torch.ones(2)), RuntimeError, "lr must be a one-element float32 tensor, got 2 elements"),
    ("sgd_step/steps shape", lambda: sgd_step(steps=[torch.zeros(3)]), RuntimeError, "steps[0] must be a one-element float32 tensor"),
    ("sgd_step/master is momentum buffer", shared(lambda: torch.ones(4), lambda t: sgd_step(masters=[t], buffers=[t])),
     RuntimeError, "momentum_buffers[0] shares memory with master_params[0]"),
    ("sgd_step/one param twice", shared(lambda: torch.ones(4, dtype=torch.bfloat16), lambda t: sgd_step(params=[t, t])),
     RuntimeError, "params[1] shares memory with params[0]"),
    ("adam_step/beta1 1", lambda: adam_step(beta1=1.0), ValueError, "beta1 must be in [0, 1), got 1"),
    ("adam_step/beta2 NaN", lambda: adam_step(beta2=NAN), ValueError, "beta2 must be in [0, 1), got nan"),
    ("adam_step/eps 0", lambda: adam_step(eps=0.0), ValueError, "eps must be a finite value > 0, got 0"),
    ("adam_step/eps NaN", lambda: adam_step(eps=NAN), ValueError, "eps must be a finite value > 0, got nan"),
    ("adam_step/weight_decay negative", lambda: adam_step(weight_decay=-1.0), ValueError, "weight_decay must be a finite value >= 0"),
    ("adam_step/exp_avg float16", lambda: adam_step(exp_avgs=[torch.zeros(4, dtype=torch.float16)]), TypeError,
     "exp_avgs[0] must have dtype float32"),
    ("adam_step/found_inf shape", lambda: adam_step(found_inf=torch.zeros(3)), RuntimeError,
     "found_inf must be a one-element float32 tensor, got 3 elements"),
    ("adam_step/lr int32", lambda: adam_step(lr=int_one(1)), TypeError, "lr must be a one-element float32 tensor, got dtype int32"),
    ("adam_step/clip_coef device", lambda: adam_step(clip_coef=one(device="meta")), RuntimeError, "clip_coef must be on cpu"),
    ("adam_step/exp_avg is exp_avg_sq", shared(lambda: torch.zeros(4), lambda t: adam_step(exp_avgs=[t], exp_avg_sqs=[t])),
     RuntimeError, "exp_avg_sqs[0] shares memory with exp_avgs[0]"),
    ("adam_step/grad is the param", shared(lambda: torch.ones(4), lambda t: adam_step(params=[t], masters=[], grads=[t])),
     RuntimeError, "grads[0] shares memory with params[0]"),

    # ---- fused_linear / fused_mlp / FusedLinear / FusedMLP ----
    ("fused_linear/activation", lambda: ampkit.fused_linear(X, W, B, "tanh"), ValueError,
     "activation must be one of 'none', 'relu', 'gelu' (tanh approximation), got 'tanh'"),
    ("fused_linear/weight shape", lambda: ampkit.fused_linear(X, torch.randn(5, 3), B), RuntimeError,
     "weight (argument 1) must have shape [out_features, 4]"),
    ("fused_linear/bias shape", lambda: ampkit.fused_linear(X, W, torch.randn(4)), RuntimeError, "bias (argument 2) must have shape [5]"),
    ("fused_linear/mixed dtypes", lambda: ampkit.fused_linear(X, W.half(), B), TypeError,
     "weight (argument 1) must have the dtype of input (float32), got float16"),
    ("fused_linear/float64", lambda: ampkit.fused_linear(X.double(), W.double(), B.double()), TypeError,
     "input (argument 0) must have dtype float32, float16 or bfloat16, got float64"),
    ("fused_linear/device", lambda: ampkit.fused_linear(X, W.to("meta"), B), RuntimeError,
     "weight (argument 1) must be on cpu (the device of input), got meta"),
    ("fused_linear/sparse", lambda: ampkit.fused_linear(X.to_sparse(), W, B), RuntimeError,
     "input (argument 0) must be a dense (strided) tensor"),
    ("fused_linear/1-D weight", lambda: ampkit.fused_linear(X, torch.randn(4)), RuntimeError, "weight (argument 1) must be 2-D"),
    ("fused_linear/0-D input", lambda: ampkit.fused_linear(torch.tensor(1.0), W, B), RuntimeError,
     "input (argument 0) must have at least one dimension"),
    ("fused_linear/list input", lambda: ampkit.fused_linear([[1.0] * 4], W, B), RuntimeError, "argument 'input'"),
    ("fused_linear/op, activation None", lambda: ops.fused_linear(X, W, B, None), RuntimeError, "argument 'activation'"),
    ("fused_mlp/hidden features", lambda: ampkit.fused_mlp(X, torch.randn(6, 4), None, torch.randn(5, 7)), RuntimeError,
     "weight2 (argument 3) must have shape [out_features, 6]"),
    ("fused_mlp/bias2 shape", lambda: ampkit.fused_mlp(X, torch.randn(6, 4), None, torch.randn(5, 6), torch.randn(6)),
     RuntimeError, "bias2 (argument 4) must have shape [5]"),
    ("fused_mlp/dtype", lambda: ampkit.fused_mlp(X, torch.randn(6, 4).half(), None, torch.randn(5, 6)), TypeError,
     "weight1 (argument 1) must have the dtype of input"),
    ("FusedLinear/activation", lambda: ampkit.FusedLinear(4, 5, activation="swish"), ValueError,
     "activation must be one of 'none', 'relu', 'gelu'"),
    ("FusedLinear/negative features", lambda: ampkit.FusedLinear(-1, 5), ValueError, "in_features must be >= 0, got -1"),
    ("FusedLinear/str features", lambda: ampkit.FusedLinear(4, "5"), TypeError, "out_features must be an int, got str"),
    ("FusedLinear/forward shape", lambda: ampkit.FusedLinear(4, 5)(torch.randn(3, 6)), RuntimeError,
     "weight (argument 1) must have shape [out_features, 6]"),
    ("FusedMLP/from_linears", lambda: ampkit.FusedMLP.from_linears(nn.Linear(4, 6), nn.Linear(7, 5)), ValueError,
     "fc2.in_features (7) must equal fc1.out_features (6)"),

    # ---- GradScaler ----
    ("GradScaler/device", lambda: ampkit.GradScaler("tpu"), ValueError, "device must be 'cuda' or 'cpu', got 'tpu'"),
    ("GradScaler/init_scale NaN", lambda: ampkit.GradScaler("cpu", init_scale=NAN), ValueError,
     "init_scale must be a finite number > 0, got nan"),
    ("GradScaler/init_scale str", lambda: ampkit.GradScaler("cpu", init_scale="1"), TypeError, "init_scale must be a float, got str"),
    ("GradScaler/growth_factor 1", lambda: ampkit.GradScaler("cpu", growth_factor=1.0), ValueError, "growth_factor must be a finite number > 1"),
    ("GradScaler/backoff inf", lambda: ampkit.GradScaler("cpu", backoff_factor=INF), ValueError, "backoff_factor must be in (0, 1), got inf"),
    ("GradScaler/interval float", lambda: ampkit.GradScaler("cpu", growth_interval=2.5), TypeError, "growth_interval must be an int, got float"),
    ("GradScaler/hysteresis 0", lambda: ampkit.GradScaler("cpu", hysteresis=0), ValueError, "hysteresis must be an int in [1, 2**31-1], got 0"),
    ("GradScaler/min > max", lambda: ampkit.GradScaler("cpu", min_scale=4.0, max_scale=2.0), ValueError,
     "min_scale (4.0) must not exceed max_scale (2.0)"),
    ("GradScaler/max_scale NaN", lambda: ampkit.GradScaler("cpu", max_scale=NAN), ValueError, "max_scale must be a number > 0 or None, got nan"),
    ("GradScaler/process_group str", lambda: ampkit.GradScaler("cpu", process_group="world"), TypeError,
     "process_group must be a torch.distributed.ProcessGroup or None, got str"),
    ("GradScaler/enabled str", lambda: ampkit.GradScaler("cpu", enabled="yes"), TypeError, "enabled must be a bool, got str"),
    ("GradScaler.scale/str", lambda: ampkit.GradScaler("cpu").scale("loss"), ValueError,
     "outputs must be a Tensor or an iterable of Tensors, got str"),
    ("GradScaler.scale/list with a float", lambda: ampkit.GradScaler("cpu").scale([torch.ones(1), 2.0]), ValueError,
     "outputs must be a Tensor or an iterable of Tensors, got float"),
    ("GradScaler.update/NaN", scaler_after_scale(lambda s: s.update(NAN)), ValueError, "new_scale must be a finite number > 0, got nan"),
    ("GradScaler.step/not an optimizer", scaler_after_scale(lambda s: s.step("adam")), TypeError,
     "optimizer must be a torch.optim.Optimizer, got str"),
    ("GradScaler.step/closure", scaler_after_scale(lambda s: s.step(aoptim.SGD(params(), lr=0.1), lambda: 0.0)), RuntimeError,
     "Closure use is not currently supported"),
    ("GradScaler.load_state_dict/list", lambda: ampkit.GradScaler("cpu").load_state_dict([1]), TypeError,
     "state_dict must be a dict, got list"),
    ("GradScaler.load_state_dict/missing keys", lambda: ampkit.GradScaler("cpu").load_state_dict({"scale": 1.0}), ValueError,
     "state_dict is missing"),
    ("GradScaler.set_growth_factor/NaN", lambda: ampkit.GradScaler("cpu").set_growth_factor(NAN), ValueError,
     "growth_factor must be a finite number > 1, got nan"),
    ("GradScaler.set_growth_interval/0", lambda: ampkit.GradScaler("cpu").set_growth_interval(0), ValueError,
     "growth_interval must be an int in [1, 2**31-1], got 0"),

    # ---- optim.SGD / Adam / AdamW / to_low_precision ----
    ("SGD/lr NaN", lambda: aoptim.SGD(params(), lr=NAN), ValueError, "SGD: lr must be a finite number, got nan"),
    ("SGD/lr negative", lambda: aoptim.SGD(params(), lr=-1.0), ValueError, "SGD: lr must be >= 0.0, got -1.0"),
    ("SGD/lr str", lambda: aoptim.SGD(params(), lr="0.1"), TypeError, "SGD: lr must be a float, got str"),
    ("SGD/lr tensor 2 elements", lambda: aoptim.SGD(params(), lr=torch.ones(2)), ValueError,
     "lr must be a float or a one-element float tensor"),
    ("SGD/momentum inf", lambda: aoptim.SGD(params(), lr=0.1, momentum=INF), ValueError, "SGD: momentum must be a finite number, got inf"),
    ("SGD/dampening NaN", lambda: aoptim.SGD(params(), lr=0.1, dampening=NAN), ValueError, "SGD: dampening must be a finite number, got nan"),
    ("SGD/nesterov", lambda: aoptim.SGD(params(), lr=0.1, nesterov=True), ValueError, "nesterov momentum needs momentum > 0"),
    ("SGD/int32 param", lambda: aoptim.SGD([torch.ones(4, dtype=torch.int32)], lr=0.1), TypeError,
     "params[0] of group 0 has dtype torch.int32"),
    # float64 params are supported (updated in double, as torch does); complex ones are not.
    ("SGD/complex64 param", lambda: aoptim.SGD(params(dtype=torch.complex64), lr=0.1), TypeError, "params[0] of group 0 has dtype torch.complex64"),
    ("SGD/empty", lambda: aoptim.SGD([], lr=0.1), ValueError, "empty parameter list"),
    ("SGD/one param twice", shared(lambda: nn.Parameter(torch.ones(4)), lambda p: aoptim.SGD([p, p], lr=0.1)), ValueError,
     "params[1] of group 0 appears twice in the group"),
    ("SGD/devices", lambda: aoptim.SGD([nn.Parameter(torch.ones(4)), nn.Parameter(meta(4))], lr=0.1), ValueError,
     "the params of one group must be on one device, got ['cpu', 'meta']"),
    ("SGD/master_weights str", lambda: aoptim.SGD(params(), lr=0.1, master_weights="yes"), TypeError,
     "master_weights must be a bool, got str"),
    ("SGD/sparse grad", stepped(lambda p: aoptim.SGD(p, lr=0.1), torch.ones(4).to_sparse()), RuntimeError,
     "params[0] of group 0 has a sparse gradient"),
    ("SGD.step/clip_coef str", stepped(lambda p: aoptim.SGD(p, lr=0.1), torch.ones(4), clip_coef="x"), TypeError,
     "clip_coef must be a float or a one-element float tensor, got str"),
    ("Adam/betas NaN", lambda: aoptim.Adam(params(), betas=(NAN, 0.9)), ValueError, "Adam: betas[0] must be a finite number, got nan"),
    ("Adam/beta2 1", lambda: aoptim.Adam(params(), betas=(0.9, 1.0)), ValueError, "Adam: betas[1] must be >= 0.0 and < 1.0, got 1.0"),
    ("Adam/three betas", lambda: aoptim.Adam(params(), betas=(0.9, 0.99, 0.9)), ValueError, "Adam: betas must be a pair of floats"),
    ("Adam/eps 0", lambda: aoptim.Adam(params(), eps=0.0), ValueError, "Adam: eps must be > 0.0, got 0.0"),
    ("Adam/eps NaN", lambda: aoptim.Adam(params(), eps=NAN), ValueError, "Adam: eps must be a finite number, got nan"),
    ("Adam.load_state_dict/from SGD", lambda: aoptim.Adam(params()).load_state_dict(aoptim.SGD(params(), lr=0.1).state_dict()),
     ValueError, "the state_dict comes from ampkit.optim.SGD, expected one from ampkit.optim.Adam"),
    ("Adam.load_state_dict/str", lambda: aoptim.Adam(params()).load_state_dict("x"), ValueError,
     "expected an optimizer state_dict with 'state' and 'param_groups', got str"),
    ("AdamW/weight_decay NaN", lambda: aoptim.AdamW(params(), weight_decay=NAN), ValueError,
     "AdamW: weight_decay must be a finite number, got nan"),
    ("AdamW/weight_decay inf", lambda: aoptim.AdamW(params(), weight_decay=INF), ValueError,
     "AdamW: weight_decay must be a finite number, got inf"),
    ("AdamW/lr inf", lambda: aoptim.AdamW(params(), lr=INF), ValueError, "AdamW: lr must be a finite number, got inf"),
    ("to_low_precision/float32", lambda: aoptim.to_low_precision(nn.Linear(2, 2), torch.float32), ValueError,
     "dtype must be torch.float16 or torch.bfloat16, got torch.float32"),
    ("to_low_precision/dtype str", lambda: aoptim.to_low_precision(nn.Linear(2, 2), "bf16"), ValueError,
     "dtype must be torch.float16 or torch.bfloat16, got bf16"),
    ("to_low_precision/keep_fp32 list", lambda: aoptim.to_low_precision(nn.Linear(2, 2), keep_fp32=[nn.LayerNorm]), TypeError,
     "keep_fp32 must be a tuple of module classes"),
    ("to_low_precision/not a module", lambda: aoptim.to_low_precision("model"), TypeError,
     "model must be a torch.nn.Module, got str"),

    # ---- autocast: Policy, autocast, set_global_policy, set_module_policy, explain ----
    ("Policy/device", lambda: ampkit.Policy("tpu"), ValueError, "device_type must be cpu or cuda, got tpu"),
    ("Policy/device meta", lambda: ampkit.Policy(torch.device("meta")), ValueError, "device_type must be cpu or cuda, got meta"),
    ("Policy/dtype float32", lambda: ampkit.Policy("cpu", torch.float32), ValueError,
     "dtype (the lower precision of the allow list) must be float16 or bfloat16, got float32"),
    ("Policy/dtype str", lambda: ampkit.Policy("cpu", "float16"), TypeError, "dtype must be torch.float16 or torch.bfloat16, got str"),
    ("Policy/unknown op", lambda: ampkit.Policy("cpu", torch.bfloat16, allow=["no_such_op"]), ValueError,
     "unknown op 'no_such_op' in the allow list"),
    ("Policy/op in two lists", lambda: ampkit.Policy("cpu", torch.bfloat16, allow=["mm"], deny=["mm"]), ValueError,
     "op aten::mm is in two lists"),
    ("Policy/op name int", lambda: ampkit.Policy("cpu", torch.bfloat16, allow=[3]), TypeError,
     "Policy(allow=...): op names must be strings, got int"),
    ("Policy.ops/list name", lambda: ampkit.Policy.default("cpu").ops("bogus"), ValueError,
     "list_name must be one of allow, deny, promote, passthrough, got 'bogus'"),
    ("Policy.with_dtype/float64", lambda: ampkit.Policy.default("cpu").with_dtype(torch.float64), ValueError,
     "must be float16 or bfloat16, got float64"),
    ("autocast/device xla", lambda: ampkit.autocast("xla"), ValueError, "device_type must be cpu or cuda, got xla"),
    ("autocast/device int", lambda: ampkit.autocast(0), TypeError, "device_type must be 'cpu' or 'cuda', got int"),
    ("autocast/policy str", lambda: ampkit.autocast("cpu", policy="mixed_bfloat16"), TypeError,
     "policy must be an ampkit.Policy or None, got str"),
    ("autocast/policy device", lambda: ampkit.autocast("cpu", policy=ampkit.Policy.default("cuda")), ValueError,
     "policy is for cuda but the region is for cpu"),
    ("autocast/dtype vs policy", lambda: ampkit.autocast("cpu", dtype=torch.float16, policy=ampkit.Policy.default("cpu", torch.bfloat16)),
     ValueError, "dtype torch.float16 differs from the policy's dtype torch.bfloat16"),
    ("autocast/enabled int", lambda: ampkit.autocast("cpu", enabled=1), TypeError, "enabled must be a bool, got int"),
    ("autocast/dtype float64", lambda: enter(ampkit.autocast("cpu", dtype=torch.float64)), ValueError,
     "dtype must be float16 or bfloat16, got float64"),
    ("set_global_policy/name", lambda: ampkit.set_global_policy("mixed_fp8"), ValueError,
     "expected 'mixed_float16', 'mixed_bfloat16', 'float32' or a Policy, got 'mixed_fp8'"),
    ("set_global_policy/int", lambda: ampkit.set_global_policy(16), TypeError, "got int"),
    ("global_policy/device", lambda: ampkit.global_policy("tpu"), ValueError, "device_type must be cpu or cuda, got tpu"),
    ("set_module_policy/module str", lambda: ampkit.set_module_policy("m", torch.bfloat16), TypeError,
     "module must be a torch.nn.Module, got str"),
    ("set_module_policy/policy str", lambda: ampkit.set_module_policy(nn.Linear(2, 2), "bf16"), TypeError,
     "policy must be an ampkit.Policy, a torch.dtype or None, got str"),
    ("set_module_policy/dtype int8", lambda: ampkit.set_module_policy(nn.Linear(2, 2), torch.int8), ValueError,
     "a module policy dtype must be torch.float16, torch.bfloat16 or torch.float32, got torch.int8"),
    ("explain/not callable", lambda: ampkit.explain(3), TypeError, "explain expects a callable first, got int"),

    # ---- Trainer / check_amp ----
    ("Trainer/amp", lambda: trainer(amp="fp8"), ValueError, "amp must be True, False, 'bf16', 'fp16' or 'fp32', got 'fp8'"),
    ("Trainer/cuda missing", lambda: trainer_on_missing_cuda(), ValueError,
     "device is cuda but CUDA is not available"),
    ("Trainer/batch_size 0", lambda: trainer(batch_size=0), ValueError, "batch_size must be positive, got 0"),
    ("Trainer/batch_size str", lambda: trainer(batch_size="8"), TypeError, "batch_size must be an int, got str"),
    ("Trainer/grad_clip NaN", lambda: trainer(grad_clip=NAN), ValueError, "grad_clip must be positive or None, got nan"),
    ("Trainer/optimizer str", lambda: trainer(optimizer="adam"), TypeError,
     "optimizer must be a torch.optim.Optimizer, a factory or None, got str"),
    ("Trainer/lr NaN", lambda: trainer(lr=NAN), ValueError, "lr must be a finite number, got nan"),
    ("Trainer/model str", lambda: ampkit.Trainer("model", device="cpu"), TypeError, "model must be a torch.nn.Module, got str"),
    ("Trainer.fit/data list", lambda: trainer().fit([1, 2], epochs=1), TypeError,
     "data must be an (inputs, targets) pair of tensors or a torch Dataset, got list"),
    ("Trainer.fit/lengths", lambda: trainer().fit((torch.randn(8, 4), torch.zeros(7, dtype=torch.long)), epochs=1), ValueError,
     "inputs and targets must have the same length, got 8 and 7"),
    ("Trainer.fit/epochs", lambda: trainer().fit((torch.randn(8, 4), torch.zeros(8, dtype=torch.long)), epochs=-1), ValueError,
     "epochs must be >= 0, got -1"),
    ("Trainer.fit/empty data", lambda: trainer().fit((torch.randn(0, 4), torch.zeros(0, dtype=torch.long)), epochs=1), ValueError,
     "train_data is empty"),
    ("Trainer.resume/missing file", lambda: trainer().resume("/nonexistent/ampkit.pt"), ValueError,
     "checkpoint '/nonexistent/ampkit.pt' cannot be read"),
    ("check_amp/no example_input", lambda: ampkit.check_amp(tiny_model(), device="cpu"), ValueError,
     "example_input is required when a model is given"),
    ("check_amp/model str", lambda: ampkit.check_amp("model", device="cpu", example_input=torch.randn(2, 4)), TypeError,
     "model must be a torch.nn.Module or None, got str"),
    ("check_amp/tolerance NaN", lambda: ampkit.check_amp(device="cpu", tolerance=NAN), ValueError,
     "tolerance must be a finite number > 0 or None, got nan"),
]


@pytest.fixture(autouse=True)
def _no_global_policy_leak():
    yield
    ampkit.set_global_policy(None)


def test_the_table_is_large_and_has_unique_ids():
    ids = [case[0] for case in CASES]
    assert len(ids) == len(set(ids))
    assert len(CASES) >= 45


@pytest.mark.parametrize("call, error, fragment", [case[1:] for case in CASES], ids=[case[0] for case in CASES])
def test_bad_input_raises_a_clear_error(call, error, fragment):
    with pytest.raises(error, match=re.escape(fragment)) as info:
        call()
    # Exactly the stated type, not a subclass that merely passes pytest.raises (NotImplementedError
    # is a RuntimeError, for instance).
    assert type(info.value) is error


# ---- refused calls leave everything as it was ----

def test_refused_aliasing_call_writes_nothing():
    grad = torch.full((4,), 8.0)
    found_inf = one(0)
    with pytest.raises(RuntimeError, match="shares memory"):
        ops.unscale_and_check_([grad, grad], found_inf, one(0.5), None)
    assert torch.equal(grad, torch.full((4,), 8.0)) and found_inf.item() == 0.0


@pytest.mark.parametrize("first_buffer", [0, 1])
def test_aliasing_error_names_the_first_pair_in_list_order(first_buffer):
    # Two buffers, each written twice: the error names the earliest tensor that overlaps an earlier
    # one, whichever buffer sits lower in memory (the check groups the tensors by storage).
    buffers = [torch.zeros(8), torch.zeros(8)]
    low, high = sorted(buffers, key=lambda t: t.data_ptr())
    a, b = (low, high) if first_buffer == 0 else (high, low)
    outputs = [a[:4], b[:4], a[2:6], b[2:6]]
    with pytest.raises(RuntimeError, match=re.escape("outputs[2] shares memory with outputs[0]")):
        mts([torch.ones(4)] * 4, outputs)
    outputs = [a[:4], b[:4], b[2:6], a[2:6]]
    with pytest.raises(RuntimeError, match=re.escape("outputs[2] shares memory with outputs[1]")):
        mts([torch.ones(4)] * 4, outputs)


def test_disjoint_views_of_one_buffer_are_accepted():
    # DDP/FSDP keep gradients as views into one flat bucket: that is not aliasing.
    flat = torch.full((8,), 2.0)
    found_inf = one(0)
    ops.unscale_and_check_([flat[:4], flat[4:]], found_inf, one(0.5), None)
    assert torch.equal(flat, torch.ones(8)) and found_inf.item() == 0.0
    outputs = torch.zeros(8)
    ops.multi_tensor_scale_([torch.ones(4), torch.ones(4)], [outputs[:4], outputs[4:]], one(3.0), one(0))
    assert torch.equal(outputs, torch.full((8,), 3.0))


def test_in_place_multi_tensor_scale_is_not_aliasing():
    values = torch.ones(4)
    ops.multi_tensor_scale_([values], [values], one(2.0), one(0))
    assert torch.equal(values, torch.full((4,), 2.0))
    # Separate views of one buffer as inputs and outputs, each its own: accepted too.
    flat = torch.ones(16)
    ops.multi_tensor_scale_([flat[:4], flat[4:8]], [flat[8:12], flat[12:]], one(2.0), one(0))
    assert torch.equal(flat, torch.cat([torch.ones(8), torch.full((8,), 2.0)]))


def test_refused_optimizer_hyper_parameter_leaves_the_optimizer_unchanged():
    param = nn.Parameter(torch.ones(4))
    optimizer = aoptim.SGD([param], lr=0.1)
    with pytest.raises(ValueError, match="momentum of group 1 must be a finite number, got inf"):
        optimizer.add_param_group({"params": [nn.Parameter(torch.ones(2))], "momentum": INF})
    assert len(optimizer.param_groups) == 1
    param.grad = torch.ones(4)
    optimizer.step()
    assert torch.allclose(param.detach(), torch.full((4,), 0.9))


def test_refused_global_policy_keeps_the_previous_one():
    ampkit.set_global_policy("mixed_bfloat16")
    before = ampkit.global_policy("cpu")
    with pytest.raises(ValueError):
        ampkit.set_global_policy("mixed_fp8")
    assert ampkit.global_policy("cpu") == before


def test_every_op_has_a_bad_input_case():
    # A new op must come with bad-input cases here (through torch.ops.ampkit or its wrapper).
    covered = {"multi_tensor_scale_": "mts", "unscale_and_check_": "unscale", "update_scale_": "update_scale",
               "master_sgd_step_": "sgd_step", "master_adam_step_": "adam_step", "fused_linear": "fused_linear",
               "fused_mlp": "fused_mlp", "reciprocal_scale": "reciprocal_scale"}
    internal = {"fused_linear_forward", "fused_linear_backward", "fused_mlp_forward", "fused_mlp_backward"}
    prefixes = {case[0].split("/")[0].split(".")[-1] for case in CASES}
    for op in registered_ampkit_ops():
        if op in internal:
            continue
        assert op in covered and covered[op] in prefixes, f"no bad-input case for torch.ops.ampkit.{op}"


