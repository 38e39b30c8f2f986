"""ampkit on PyTorch's distributed engines: DTensor (FSDP2, tensor parallelism), DDP, DCP.

Importing this module teaches DTensor how to run ampkit's ops. ``ampkit.GradScaler``, the
``ampkit.optim`` optimizers and ``ampkit.nn``'s fused layers import it themselves the first time a
DTensor reaches them, so a training script needs no extra line; code that calls
``torch.ops.ampkit.*`` directly on DTensors imports this module first. ``import ampkit`` never
imports it (nor torch.distributed.tensor).

How the list ops run on DTensors
--------------------------------
``unscale_and_check_``, ``multi_tensor_scale_``, ``master_sgd_step_`` and ``master_adam_step_``
(Adam and AdamW) work element by element, and the i-th entries of their lists (a parameter, its
gradient, master and state) belong together. When those entries share one mesh and one set of
placements, which is what FSDP2 and tensor parallelism produce (state made by ``zeros_like`` of a
DTensor parameter has the parameter's placements), the op runs unchanged on the local shards: no
communication and no redistribution. Entries whose placements differ are refused with an error
naming both, rather than silently redistributed.

What crosses shards is reduced over the mesh with collectives on the tensors' device (no value is
read back to the host):

* ``found_inf`` with MAX over every dimension of the gradients' mesh, so every rank of the mesh
  skips the same steps (an overflow in one shard is an overflow of the model; under HSDP an
  overflow in one replica stops all of them);
* the gradient norm of ``unscale_and_check_`` as a SUM of squares over the dimensions on which each
  gradient is sharded (replicated dimensions hold copies and are counted once), so
  ``GradScaler.unscale_(optimizer, compute_norm=True)`` returns the norm of the whole model.

The mechanism is the one torch uses for ``torch._amp_foreach_non_finite_check_and_unscale_`` under
FSDP2: a DTensor op handler (a sharding strategy cannot express a reduction into an in-place
output such as ``found_inf``, and these ops also take plain per-parameter step counters and device
scalars that are not DTensors). Plain tensors in the lists (a parameter FSDP2 does not manage,
step counters) are taken as they are: local to the rank.

fused_linear under tensor parallelism
-------------------------------------
``fused_linear`` (and its forward/backward ops) runs on ColwiseParallel's placements (input
Replicate, weight and bias Shard(0)) locally, the fused epilogue intact, and on RowwiseParallel's
(input sharded on its last dimension, weight Shard(1), bias Replicate) as a local GEMM, a SUM over
the TP dimension, then bias and activation ("gelu" refused there). Replicated operands run locally;
``fused_mlp`` takes replicated operands only. Anything else is refused, naming the placements.

FP32 copies under FSDP2's MixedPrecisionPolicy
----------------------------------------------
Keep the model's parameters in float32 and let ``fully_shard(..., mp_policy=
MixedPrecisionPolicy(param_dtype=torch.bfloat16))`` cast them for compute: FSDP2's sharded float32
parameters are then the master weights, and ``ampkit.optim`` (which makes a master only for float16
and bfloat16 parameters) keeps no second copy. Alternatively convert the model to bfloat16 before
``fully_shard`` and let ampkit keep the masters (sharded DTensors, ``master_weights=True``); FSDP2
then needs no ``param_dtype``. Both keep exactly one FP32 copy of every weight, sharded.
See :func:`fp32_copies` for a check.
"""
from __future__ import annotations

from typing import Any, Optional

import torch
import torch.distributed as dist
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.tensor import DTensor
from torch.distributed.tensor._dtensor_spec import DTensorSpec, TensorMeta
from torch.distributed.tensor.placement_types import Partial, Replicate, Shard

__all__ = ["register_dtensor_ops", "fp32_copies"]

_registered = False

# Per op: the list arguments whose i-th entries are one parameter's tensors (same placements), the
# list arguments that are per-parameter scalars (step counters), and the in-place output that
# holds the inf/NaN flag (reduced with MAX).
_ROW_LISTS = {
    "unscale_and_check_": (("grads",), (), "found_inf"),
    "multi_tensor_scale_": (("inputs", "outputs"), (), "found_inf"),
    "master_sgd_step_": (("params", "master_params", "grads", "momentum_buffers"), ("steps",), None),
    "master_adam_step_": (("params", "master_params", "grads", "exp_avgs", "exp_avg_sqs", "max_exp_avg_sqs"),
                          ("steps",), None),
}


def _describe(tensor: DTensor) -> str:
    return f"placements {tuple(tensor.placements)} on {tensor.device_mesh}"


class _Row:
    """One parameter's entries across the op's lists: the DTensor that fixes mesh and placements."""

    __slots__ = ("reference", "label")

    def __init__(self) -> None:
        self.reference: Optional[DTensor] = None
        self.label = ""


def _bind(op: torch._ops.OpOverload, args: tuple, kwargs: dict) -> dict[str, Any]:
    """The op's arguments by schema name, defaults filled in."""
    bound: dict[str, Any] = {}
    for index, argument in enumerate(op._schema.arguments):
        if index < len(args):
            bound[argument.name] = args[index]
        elif argument.name in kwargs:
            bound[argument.name] = kwargs[argument.name]
        elif argument.has_default_value():
            bound[argument.name] = argument.default_value
    return bound


def _localise(op_name: str, bound: dict[str, Any]) -> tuple[dict[str, Any], list[_Row]]:
    """Replaces every DTensor by its local shard, checking that the entries of one row agree."""
    row_lists, scalar_lists, _ = _ROW_LISTS[op_name]
    length = max((len(bound[name]) for name in row_lists if bound.get(name)), default=0)
    rows = [_Row() for _ in range(length)]
    local: dict[str, Any] = {}
    for name, value in bound.items():
        if name in row_lists and value:
            converted = []
            for index, tensor in enumerate(value):
                if isinstance(tensor, DTensor) and index < length:
                    row = rows[index]
                    label = f"{name}[{index}]"
                    if any(isinstance(p, Partial) for p in tensor.placements):
                        raise ValueError(
                            f"ampkit.{op_name}: {label} has {_describe(tensor)}; a Partial (pending reduction) "
                            "placement is not supported: reduce it first (redistribute to Shard or Replicate)")
                    if row.reference is None:
                        row.reference, row.label = tensor, label
                    elif (tensor.device_mesh != row.reference.device_mesh
                          or tuple(tensor.placements) != tuple(row.reference.placements)):
                        raise ValueError(
                            f"ampkit.{op_name}: {label} has {_describe(tensor)}, but {row.label} has "
                            f"{_describe(row.reference)}; one parameter's tensors must share mesh and placements "
                            "(make state with torch.zeros_like(param) or redistribute the gradient)")
                    converted.append(tensor._local_tensor)
                else:
                    converted.append(tensor)
            local[name] = converted
        elif name in scalar_lists and value:
            local[name] = [_local_scalar(op_name, f"{name}[{i}]", t) for i, t in enumerate(value)]
        elif isinstance(value, DTensor):
            local[name] = _local_scalar(op_name, name, value)
        else:
            local[name] = value
    return local, rows


def _local_scalar(op_name: str, label: str, value: Any) -> Any:
    """A device scalar or step counter: plain, or a DTensor replicated over its mesh."""
    if not isinstance(value, DTensor):
        return value
    if not all(isinstance(p, Replicate) for p in value.placements):
        raise ValueError(f"ampkit.{op_name}: {label} has {_describe(value)}; expected a plain tensor or a DTensor "
                         "with Replicate() on every mesh dimension")
    return value._local_tensor


def _sharded_dims(tensor: DTensor) -> tuple[int, ...]:
    return tuple(dim for dim, placement in enumerate(tensor.placements) if isinstance(placement, Shard))


def _all_reduce_over(tensor: torch.Tensor, mesh: DeviceMesh, dims: tuple[int, ...], op) -> None:
    """All-reduce over the listed mesh dimensions, one after the other (MAX and SUM compose)."""
    for dim in dims:
        if mesh.size(dim) > 1:
            dist.all_reduce(tensor, op=op, group=mesh.get_group(dim))


def _meshes_in_order(rows: list[_Row]) -> list[DeviceMesh]:
    """Each mesh of the rows, in order of first appearance (the same on every rank, so collectives
    line up)."""
    found: dict[DeviceMesh, None] = {}
    for row in rows:
        if row.reference is not None:
            found.setdefault(row.reference.device_mesh, None)
    return list(found)


def _reduce_found_inf(found_inf: torch.Tensor, rows: list[_Row]) -> None:
    # Over every dimension of the mesh, replicated ones included: a replica whose gradient went bad
    # after the all-reduce (or a Replicate placement that does not hold) still makes every rank of
    # the mesh skip. One scalar per dimension; torch's handler reduces over sharded dimensions only.
    for mesh in _meshes_in_order(rows):
        _all_reduce_over(found_inf, mesh, tuple(range(mesh.ndim)), dist.ReduceOp.MAX)


def _list_op_handler(op: torch._ops.OpOverload, args: tuple, kwargs: dict) -> None:
    op_name = op._schema.name.split("::", 1)[1]
    local, rows = _localise(op_name, _bind(op, args, kwargs))
    found_inf_name = _ROW_LISTS[op_name][2]
    if op_name == "unscale_and_check_" and local.get("norm_out") is not None:
        _unscale_with_global_norm(op, local, rows)
    else:
        op(**local)
    if found_inf_name is not None:
        found_inf = local[found_inf_name]
        _reduce_found_inf(found_inf._local_tensor if isinstance(found_inf, DTensor) else found_inf, rows)


def _unscale_with_global_norm(op, local: dict[str, Any], rows: list[_Row]) -> None:
    """One local pass per kind of row (mesh and sharded dimensions), each with its own norm; the
    squares are summed over the dimensions where that kind is sharded, then added up."""
    groups: dict[tuple, list[int]] = {}
    for index, row in enumerate(rows):
        key = (None, ()) if row.reference is None else (row.reference.device_mesh, _sharded_dims(row.reference))
        groups.setdefault(key, []).append(index)
    norm_out = local["norm_out"]
    target = norm_out._local_tensor if isinstance(norm_out, DTensor) else norm_out
    grads = local["grads"]
    total = torch.zeros((), dtype=torch.float64, device=target.device)
    partial_norm = torch.empty_like(target)
    for (mesh, dims), indices in groups.items():
        op([grads[i] for i in indices], local["found_inf"], local["inv_scale"], partial_norm)
        # float64 for the squares: the norm comes back as float32 and is squared once more here.
        squares = partial_norm.to(torch.float64).square()
        if mesh is not None:
            _all_reduce_over(squares, mesh, dims, dist.ReduceOp.SUM)
        total += squares.reshape(())
    target.copy_(total.sqrt().reshape(target.shape))


# ---- fused_linear under tensor parallelism ----

_LINEAR_OPS = ("fused_linear", "fused_linear_forward", "fused_linear_backward")


def _is_last_dim_shard(placement, ndim: int) -> bool:
    return isinstance(placement, Shard) and placement.dim % ndim == ndim - 1


def _meta(shape, dtype) -> TensorMeta:
    strides, step = [], 1
    for size in reversed(shape):
        strides.append(step)
        step *= max(size, 1)
    return TensorMeta(torch.Size(shape), tuple(reversed(strides)), dtype)


def _wrap(tensor: torch.Tensor, mesh: DeviceMesh, placements, shape=None) -> DTensor:
    """A DTensor around a local result, built directly (as DTensor's own dispatcher does: this runs
    below autograd). `shape`: the global shape, when it differs from the local one."""
    meta = _meta(tensor.shape if shape is None else shape, tensor.dtype)
    spec = DTensorSpec(mesh, tuple(placements), tensor_meta=meta)
    return DTensor(tensor, spec, requires_grad=False)


def _linear_layout(input, weight, bias) -> tuple[Optional[str], Optional[int]]:
    """("replicated", None), ("colwise", d) or ("rowwise", d) for the TP mesh dimension d, or (None, d)
    for placements no rule covers. Colwise: input Replicate, weight and bias Shard(0) (ColwiseParallel);
    rowwise: input sharded on its last dimension, weight Shard(1), bias Replicate (RowwiseParallel)."""
    tensors = [t for t in (input, weight, bias) if isinstance(t, DTensor)]
    if any(t.device_mesh != tensors[0].device_mesh for t in tensors):
        return None, None
    sharded = sorted({d for t in tensors for d, p in enumerate(t.placements) if not isinstance(p, Replicate)})
    if not sharded:
        return "replicated", None
    if len(sharded) > 1 or not isinstance(input, DTensor) or not isinstance(weight, DTensor):
        return None, None
    d = sharded[0]
    w, x = weight.placements[d], input.placements[d]
    b = bias.placements[d] if isinstance(bias, DTensor) else None
    if w == Shard(0) and isinstance(x, Replicate) and (bias is None or b == Shard(0)):
        return "colwise", d
    if w == Shard(1) and _is_last_dim_shard(x, input.ndim) and (bias is None or isinstance(b, Replicate)):
        return "rowwise", d
    return None, d


def _linear_handler(op: torch._ops.OpOverload, args: tuple, kwargs: dict):
    """fused_linear's three ops on DTensors: replicated operands locally (see _replicated_op_handler);
    ColwiseParallel's placements locally too (the bias and the activation are per output column, so
    the fused epilogue stays); RowwiseParallel's as a local GEMM, a SUM over the TP dimension, then the
    bias and the activation (they must see the whole sum, so that epilogue is not fused; "gelu" is
    refused there, its backward needs the op's own saved pre-activations)."""
    op_name = op._schema.name.split("::", 1)[1]
    bound = _bind(op, args, kwargs)
    layout, d = _linear_layout(bound["input"], bound["weight"], bound.get("bias"))
    activation = bound["activation"]
    if layout == "replicated":
        return _replicated_op_handler(op, args, kwargs)
    if layout is None or (layout == "rowwise" and activation == "gelu"):
        _refuse_sharded(op_name, bound, activation_note=layout == "rowwise")
    weight = bound["weight"]
    mesh = weight.device_mesh
    local = {name: (value._local_tensor if isinstance(value, DTensor) else value) for name, value in bound.items()}

    def placements(at_d):
        return [at_d if dim == d else Replicate() for dim in range(mesh.ndim)]

    if op_name == "fused_linear_backward":
        grad_output = bound["grad_output"]
        expected = Shard(grad_output.ndim - 1) if layout == "colwise" else Replicate()
        if not isinstance(grad_output, DTensor) or not (
                _is_last_dim_shard(grad_output.placements[d], grad_output.ndim) if layout == "colwise"
                else isinstance(grad_output.placements[d], Replicate)):
            got = tuple(grad_output.placements) if isinstance(grad_output, DTensor) else "a plain tensor"
            raise ValueError(f"ampkit.fused_linear_backward: under {layout} tensor parallelism grad_output must have "
                             f"{expected} on mesh dimension {d}, got {got}")
        grad_input, grad_weight, grad_bias = op(**local)
        input_shape, weight_shape = bound["input"].shape, weight.shape
        if layout == "colwise":  # each rank holds part of the output columns: the input's gradient is a sum
            return (_wrap(grad_input, mesh, placements(Partial()), input_shape),
                    _wrap(grad_weight, mesh, placements(Shard(0)), weight_shape),
                    _wrap(grad_bias, mesh, placements(Shard(0)), (weight_shape[0],)))
        return (_wrap(grad_input, mesh, placements(Shard(len(input_shape) - 1)), input_shape),
                _wrap(grad_weight, mesh, placements(Shard(1)), weight_shape),
                _wrap(grad_bias, mesh, placements(Replicate())))

    out_shape = (*bound["input"].shape[:-1], weight.shape[0])
    if layout == "colwise":
        result = op(**local)
        output, saved = result if op_name == "fused_linear_forward" else (result, None)
        output = _wrap(output, mesh, placements(Shard(len(out_shape) - 1)), out_shape)
        if saved is None:
            return output
        # "gelu"'s saved pre-activations are laid out per local GEMM: opaque outside the backward,
        # which takes them back locally, so they travel with their local shape.
        return output, _wrap(saved, mesh, placements(Replicate()))
    forward = torch.ops.ampkit.fused_linear_forward.default
    output, empty_saved = forward(local["input"], local["weight"], None, "none")
    dist.all_reduce(output, op=dist.ReduceOp.SUM, group=mesh.get_group(d))
    if local.get("bias") is not None:
        output = output + local["bias"].to(output.dtype)
    if activation == "relu":
        output = torch.relu(output)
    output = _wrap(output, mesh, placements(Replicate()))
    if op_name != "fused_linear_forward":
        return output
    # What the op returns as "saved" for "none" and "relu" (nothing: relu's backward takes the output).
    return output, _wrap(empty_saved, mesh, placements(Replicate()))


def _refuse_sharded(op_name: str, bound: dict, activation_note: bool = False):
    placements = ", ".join(f"{name} {tuple(value.placements)}" for name, value in bound.items()
                           if isinstance(value, DTensor))
    if op_name in _SCALE_OPS:
        raise ValueError(f"ampkit.{op_name}: the loss scale's tensors are one value per model; got {placements}; "
                         "expected plain tensors or DTensors with Replicate() on every mesh dimension of one mesh")
    if op_name in _LINEAR_OPS:
        supported = ("every operand Replicate(); ColwiseParallel's (input Replicate(), weight and bias Shard(0)); "
                     "RowwiseParallel's (input Shard(-1), weight Shard(1), bias Replicate(); activation 'none' or "
                     "'relu': 'gelu' needs the op's own saved pre-activations, which a rank's partial sum lacks), "
                     "on one mesh dimension")
        raise ValueError(f"ampkit.{op_name}: these DTensor placements are not supported: {placements}. Supported: "
                         f"{supported}")
    raise ValueError(
        f"ampkit.{op_name} does not support sharded DTensor operands: got {placements}. Supported: plain tensors, or "
        "DTensors with Replicate() on every mesh dimension of one mesh (FSDP2's all-gathered parameters are plain "
        "tensors, so FSDP2 needs nothing). For tensor parallelism use ampkit.nn.FusedLinear, or nn.Linear, in the "
        "ColwiseParallel/RowwiseParallel layers")


# ---- the other ops: replicated operands only ----

_MLP_OPS = ("fused_mlp", "fused_mlp_forward", "fused_mlp_backward")
# The scale's update: the scale and its trackers are one value per model, never sharded.
# (reciprocal_scale is composite: DTensor runs the aten ops it is made of.)
_SCALE_OPS = ("update_scale_",)


def _replicated_op_handler(op: torch._ops.OpOverload, args: tuple, kwargs: dict):
    """Runs an op on DTensors whose every placement is Replicate: locally, outputs replicated on the
    same mesh (DTensor-based data parallelism, a replicated layer in a tensor-parallel model).
    fused_mlp refuses sharded operands: its GELU sits between the two GEMMs, so neither layer could
    be split without unfusing the block; use two FusedLinear layers for tensor parallelism."""
    op_name = op._schema.name.split("::", 1)[1]
    bound = _bind(op, args, kwargs)
    mesh = None
    supported = True
    local: dict[str, Any] = {}
    for name, value in bound.items():
        if isinstance(value, DTensor):
            mesh = mesh or value.device_mesh
            supported &= value.device_mesh == mesh and all(isinstance(p, Replicate) for p in value.placements)
            local[name] = value._local_tensor
        else:
            local[name] = value
    if not supported:
        _refuse_sharded(op_name, bound)
    result = op(**local)
    replicated = (Replicate(),) * mesh.ndim

    def wrap(tensor):
        return _wrap(tensor, mesh, replicated) if isinstance(tensor, torch.Tensor) else tensor

    return tuple(wrap(t) for t in result) if isinstance(result, (tuple, list)) else wrap(result)


def register_dtensor_ops() -> None:
    """Lets DTensors flow through ampkit's list ops and fused GEMM ops (idempotent; runs when this
    module is imported)."""
    global _registered
    if _registered:
        return
    dispatcher = getattr(DTensor, "_op_dispatcher", None)
    handlers = getattr(dispatcher, "_custom_op_handlers", None)
    if not isinstance(handlers, dict):
        raise RuntimeError(f"ampkit.distributed: this torch ({torch.__version__}) has no DTensor op-handler table "
                           "(DTensor._op_dispatcher._custom_op_handlers); DTensor support needs torch >= 2.5")
    for names, handler in ((_ROW_LISTS, _list_op_handler), (_LINEAR_OPS, _linear_handler),
                           (_MLP_OPS + _SCALE_OPS, _replicated_op_handler)):
        for name in names:
            packet = getattr(torch.ops.ampkit, name)
            for overload in packet.overloads():
                handlers[getattr(packet, overload)] = handler
    _registered = True


def fp32_copies(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> int:
    """How many FP32 copies of the model's weights this rank holds, counted in elements of its local
    shards: parameters stored in float32 plus ampkit masters, divided by the number of weight
    elements. 1 means one copy (the goal under FSDP2 + MixedPrecisionPolicy); 2 means the weights
    are held in FP32 twice."""
    def local_numel(tensor: torch.Tensor) -> int:
        return (tensor.to_local() if isinstance(tensor, DTensor) else tensor).numel()

    weights = sum(local_numel(p) for p in model.parameters())
    fp32 = sum(local_numel(p) for p in model.parameters() if p.dtype == torch.float32)
    fp32 += sum(local_numel(state["master"]) for state in optimizer.state.values() if "master" in state)
    return round(fp32 / weights) if weights else 0


register_dtensor_ops()
