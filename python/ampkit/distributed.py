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


# ---- the other ops: replicated operands only ----

_FUSED_OPS = ("fused_linear", "fused_linear_forward", "fused_linear_backward", "fused_mlp", "fused_mlp_forward",
              "fused_mlp_backward")
# The scale's update: the scale and its trackers are one value per model, never sharded.
# (reciprocal_scale is composite: DTensor runs the aten ops it is made of.)
_SCALE_OPS = ("update_scale_",)


def _replicated_op_handler(op: torch._ops.OpOverload, args: tuple, kwargs: dict):
    """Runs an op on DTensors whose every placement is Replicate: locally, outputs replicated on the
    same mesh. For the fused GEMM ops that covers DTensor-based data parallelism and a replicated
    layer inside a tensor-parallel model. Sharded operands are refused: under RowwiseParallel the
    fused epilogue would add the bias and apply the activation to each rank's partial sum (a wrong
    result, not a slow one), and the GELU backward's saved pre-activations are laid out per GEMM, not
    per output column, so they cannot follow a ColwiseParallel sharding either."""
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
        placements = ", ".join(f"{name} {tuple(value.placements)}" for name, value in bound.items()
                               if isinstance(value, DTensor))
        if op_name in _SCALE_OPS:
            raise ValueError(f"ampkit.{op_name}: the loss scale's tensors are one value per model; got {placements}; "
                             "expected plain tensors or DTensors with Replicate() on every mesh dimension of one mesh")
        raise ValueError(
            f"ampkit.{op_name} does not support sharded DTensor operands (tensor parallelism): got {placements}. "
            "Supported: plain tensors, or DTensors with Replicate() on every mesh dimension of one mesh (as FSDP2's "
            "all-gathered parameters are plain tensors, FSDP2 needs nothing). For ColwiseParallel/RowwiseParallel "
            "keep those layers nn.Linear (torch's styles shard nn.Linear and nn.Embedding only) and use "
            "ampkit.nn.FusedLinear in the layers that stay replicated")
    result = op(**local)
    replicated = (Replicate(),) * mesh.ndim

    def wrap(tensor):
        if not isinstance(tensor, torch.Tensor):
            return tensor
        # Built directly (as DTensor's own dispatcher does): this runs below autograd.
        spec = DTensorSpec(mesh, replicated, tensor_meta=TensorMeta(tensor.shape, tensor.stride(), tensor.dtype))
        return DTensor(tensor, spec, requires_grad=False)

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
    for names, handler in ((_ROW_LISTS, _list_op_handler), (_FUSED_OPS + _SCALE_OPS, _replicated_op_handler)):
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
