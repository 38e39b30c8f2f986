"""The op sweep shared by the autocast differential tests: ≥60 aten ops on fp32 inputs (matmuls,
convs, pointwise, reductions, norms, softmax, losses, cat/stack, index ops, pooling, fft, linalg).

Imports torch only, so a subprocess can run it without ampkit to get pristine torch results.
Each case: name -> function of a seeded generator returning the op's output.

On a machine without a GPU the CUDA routing is still checked: with `fake=True` the sweep runs on
fake CUDA tensors (torch's FakeTensorMode: shapes and dtypes, no data), which pass through the
AutocastCUDA dispatch key like real ones, so output dtypes and shapes can be compared; values
need the real device.
"""
from __future__ import annotations

import contextlib

import torch
from torch._subclasses.fake_tensor import FakeTensorMode
import torch.nn.functional as F


# The dtype of the inputs a case makes when it does not name one (the sweep runs with float32,
# and again with bfloat16, where torch's fp32 list becomes visible in the output dtypes).
INPUT_DTYPE = torch.float32


def _r(g, *shape, dtype=None):
    dtype = dtype or INPUT_DTYPE
    if dtype == torch.bfloat16 and g.device.type == "cuda":  # the CUDA sweep's low dtype is fp16
        dtype = torch.float16
    if not isinstance(g, torch.Generator):  # fake tensors: no data, so no generator either
        return torch.randn(*shape, dtype=torch.float32, device=g.device).to(dtype)
    return torch.randn(*shape, generator=g, dtype=torch.float32, device=g.device).to(dtype)


def _uniform(g, *shape):
    if not isinstance(g, torch.Generator):
        return torch.rand(*shape, device=g.device)
    return torch.rand(*shape, generator=g, device=g.device)


class _FakeGenerator:
    """Stands in for a CUDA generator under FakeTensorMode (a real one needs a GPU)."""

    def __init__(self, device):
        self.device = torch.device(device)


def _cases():
    c = {}

    def case(fn):
        c[fn.__name__] = fn
        return fn

    # ---- matmuls ----
    @case
    def mm(g): return torch.mm(_r(g, 8, 16), _r(g, 16, 4))
    @case
    def bmm(g): return torch.bmm(_r(g, 2, 8, 16), _r(g, 2, 16, 4))
    @case
    def matmul(g): return torch.matmul(_r(g, 3, 8, 16), _r(g, 16, 4))
    @case
    def addmm(g): return torch.addmm(_r(g, 4), _r(g, 8, 16), _r(g, 16, 4))
    @case
    def addbmm(g): return torch.addbmm(_r(g, 8, 4), _r(g, 2, 8, 16), _r(g, 2, 16, 4))
    @case
    def baddbmm(g): return torch.baddbmm(_r(g, 2, 8, 4), _r(g, 2, 8, 16), _r(g, 2, 16, 4))
    @case
    def linear(g): return F.linear(_r(g, 8, 16), _r(g, 4, 16), _r(g, 4))
    @case
    def linear_no_bias(g): return F.linear(_r(g, 2, 8, 16), _r(g, 4, 16))
    @case
    def addmv(g): return torch.addmv(_r(g, 8), _r(g, 8, 16), _r(g, 16))
    @case
    def addr(g): return torch.addr(_r(g, 8, 4), _r(g, 8), _r(g, 4))
    @case
    def mv(g): return torch.mv(_r(g, 8, 16), _r(g, 16))
    @case
    def dot(g): return torch.dot(_r(g, 16), _r(g, 16))
    @case
    def einsum(g): return torch.einsum("bij,bjk->bik", _r(g, 2, 8, 16), _r(g, 2, 16, 4))
    @case
    def tensordot(g): return torch.tensordot(_r(g, 4, 8, 16), _r(g, 8, 16, 3), dims=2)
    @case
    def multi_dot(g): return torch.linalg.multi_dot([_r(g, 4, 8), _r(g, 8, 6), _r(g, 6, 3)])
    @case
    def vecdot(g): return torch.linalg.vecdot(_r(g, 4, 8), _r(g, 4, 8))
    @case
    def sdpa(g): return F.scaled_dot_product_attention(_r(g, 2, 2, 8, 16), _r(g, 2, 2, 8, 16), _r(g, 2, 2, 8, 16))
    # ---- convolutions ----
    @case
    def conv1d(g): return F.conv1d(_r(g, 2, 3, 16), _r(g, 4, 3, 3), _r(g, 4))
    @case
    def conv2d(g): return F.conv2d(_r(g, 2, 3, 8, 8), _r(g, 4, 3, 3, 3), _r(g, 4), padding=1)
    @case
    def conv2d_same(g): return F.conv2d(_r(g, 2, 3, 8, 8), _r(g, 4, 3, 3, 3), padding="same")
    @case
    def conv3d(g): return F.conv3d(_r(g, 1, 2, 4, 4, 4), _r(g, 3, 2, 3, 3, 3))
    @case
    def conv_transpose1d(g): return F.conv_transpose1d(_r(g, 2, 3, 8), _r(g, 3, 4, 3))
    @case
    def conv_transpose2d(g): return F.conv_transpose2d(_r(g, 2, 3, 6, 6), _r(g, 3, 4, 3, 3), stride=2)
    @case
    def prelu(g): return F.prelu(_r(g, 2, 3, 8), _r(g, 3).abs())
    # ---- pointwise ----
    @case
    def exp(g): return torch.exp(_r(g, 64))
    @case
    def log(g): return torch.log(_r(g, 64).abs() + 0.1)
    @case
    def tanh(g): return torch.tanh(_r(g, 64))
    @case
    def relu(g): return torch.relu(_r(g, 64))
    @case
    def gelu(g): return F.gelu(_r(g, 64))
    @case
    def sigmoid(g): return torch.sigmoid(_r(g, 64))
    @case
    def add_mixed(g): return _r(g, 64) + _r(g, 64, dtype=torch.bfloat16)
    @case
    def mul(g): return _r(g, 64) * _r(g, 64)
    @case
    def pow_scalar(g): return torch.pow(_r(g, 64), 2.0)
    @case
    def pow_tensor(g): return torch.pow(_r(g, 64).abs(), _r(g, 64))
    @case
    def rsqrt(g): return torch.rsqrt(_r(g, 64).abs() + 0.1)
    @case
    def softplus(g): return F.softplus(_r(g, 64))
    @case
    def addcmul(g): return torch.addcmul(_r(g, 64), _r(g, 64), _r(g, 64, dtype=torch.bfloat16))
    @case
    def addcdiv(g): return torch.addcdiv(_r(g, 64), _r(g, 64), _r(g, 64).abs() + 1)
    @case
    def atan2(g): return torch.atan2(_r(g, 64), _r(g, 64))
    @case
    def polar(g): return torch.polar(_r(g, 8).abs(), _r(g, 8))
    # ---- reductions ----
    @case
    def sum_all(g): return torch.sum(_r(g, 8, 16))
    @case
    def sum_dim(g): return torch.sum(_r(g, 8, 16), dim=1)
    @case
    def prod(g): return torch.prod(_r(g, 8, 4), dim=1)
    @case
    def mean(g): return torch.mean(_r(g, 8, 16), dim=0)
    @case
    def cumsum(g): return torch.cumsum(_r(g, 8, 16), dim=1)
    @case
    def logsumexp(g): return torch.logsumexp(_r(g, 8, 16), dim=1)
    @case
    def norm(g): return torch.norm(_r(g, 8, 16))
    @case
    def vector_norm(g): return torch.linalg.vector_norm(_r(g, 8, 16), dim=1)
    @case
    def amax(g): return torch.amax(_r(g, 8, 16), dim=1)
    @case
    def var(g): return torch.var(_r(g, 8, 16), dim=1)
    @case
    def quantile(g): return torch.quantile(_r(g, 8, 16), 0.3, dim=1)
    @case
    def trace(g): return torch.trace(_r(g, 8, 8))
    # ---- norms ----
    @case
    def layer_norm(g): return F.layer_norm(_r(g, 4, 16), (16,), _r(g, 16), _r(g, 16))
    @case
    def group_norm(g): return F.group_norm(_r(g, 2, 4, 8), 2, _r(g, 4), _r(g, 4))
    @case
    def batch_norm(g): return F.batch_norm(_r(g, 4, 3, 5), _r(g, 3), _r(g, 3).abs() + 1, training=False)
    @case
    def rms_norm(g): return F.rms_norm(_r(g, 4, 16), (16,))
    @case
    def normalize(g): return F.normalize(_r(g, 4, 16), dim=1)
    # ---- softmax ----
    @case
    def softmax(g): return torch.softmax(_r(g, 4, 16), dim=1)
    @case
    def log_softmax(g): return F.log_softmax(_r(g, 4, 16), dim=1)
    # ---- losses ----
    @case
    def mse_loss(g): return F.mse_loss(_r(g, 8, 4), _r(g, 8, 4))
    @case
    def l1_loss(g): return F.l1_loss(_r(g, 8, 4), _r(g, 8, 4))
    @case
    def smooth_l1_loss(g): return F.smooth_l1_loss(_r(g, 8, 4), _r(g, 8, 4))
    @case
    def huber_loss(g): return F.huber_loss(_r(g, 8, 4), _r(g, 8, 4))
    @case
    def cross_entropy(g): return F.cross_entropy(_r(g, 8, 5), torch.arange(8) % 5)
    @case
    def nll_loss(g): return F.nll_loss(F.log_softmax(_r(g, 8, 5), 1), torch.arange(8) % 5)
    @case
    def kl_div(g): return F.kl_div(F.log_softmax(_r(g, 8, 5), 1), F.softmax(_r(g, 8, 5), 1), reduction="batchmean")
    @case
    def bce_with_logits(g): return F.binary_cross_entropy_with_logits(_r(g, 8, 4), _uniform(g, 8, 4))
    @case
    def bce(g): return F.binary_cross_entropy(torch.sigmoid(_r(g, 8, 4)), _uniform(g, 8, 4))
    @case
    def margin_ranking_loss(g): return F.margin_ranking_loss(_r(g, 8), _r(g, 8), torch.ones(8))
    @case
    def cosine_embedding_loss(g): return F.cosine_embedding_loss(_r(g, 8, 4), _r(g, 8, 4), torch.ones(8))
    @case
    def triplet_margin_loss(g): return F.triplet_margin_loss(_r(g, 8, 4), _r(g, 8, 4), _r(g, 8, 4))
    @case
    def poisson_nll_loss(g): return F.poisson_nll_loss(_r(g, 8, 4), _r(g, 8, 4).abs())
    @case
    def multi_margin_loss(g): return F.multi_margin_loss(_r(g, 8, 5), torch.arange(8) % 5)
    # ---- cat / stack ----
    @case
    def cat_mixed(g): return torch.cat([_r(g, 4, 8), _r(g, 4, 8, dtype=torch.bfloat16)])
    @case
    def cat_fp32(g): return torch.cat([_r(g, 4, 8), _r(g, 2, 8)], dim=0)
    @case
    def stack_mixed(g): return torch.stack([_r(g, 4, 8, dtype=torch.bfloat16), _r(g, 4, 8)])
    # ---- index ops ----
    @case
    def index_select(g): return torch.index_select(_r(g, 8, 4), 0, torch.tensor([0, 3, 5]))
    @case
    def gather(g): return torch.gather(_r(g, 8, 4), 1, torch.tensor([[0], [1], [2], [3], [0], [1], [2], [3]]))
    @case
    def scatter_add(g): return torch.scatter_add(_r(g, 4, 4), 0, torch.tensor([[0, 1, 2, 3]]), _r(g, 1, 4))
    @case
    def index_put(g): return _r(g, 8, 4).index_put((torch.tensor([1, 3]),), _r(g, 2, 4))
    @case
    def index_copy(g): return _r(g, 8, 4).index_copy(0, torch.tensor([1, 6]), _r(g, 2, 4, dtype=torch.bfloat16))
    @case
    def embedding(g): return F.embedding(torch.tensor([[0, 2], [4, 1]]), _r(g, 5, 3))
    @case
    def masked_fill(g): return _r(g, 4, 4).masked_fill(torch.eye(4, dtype=torch.bool), -1.0)
    # ---- pooling, resampling, padding ----
    @case
    def max_pool2d(g): return F.max_pool2d(_r(g, 2, 3, 8, 8), 2)
    @case
    def avg_pool3d(g): return F.avg_pool3d(_r(g, 1, 2, 4, 4, 4), 2)
    @case
    def adaptive_avg_pool2d(g): return F.adaptive_avg_pool2d(_r(g, 2, 3, 8, 8), 3)
    @case
    def interpolate_bilinear(g): return F.interpolate(_r(g, 1, 2, 4, 4), scale_factor=2, mode="bilinear")
    @case
    def pad_reflect(g): return F.pad(_r(g, 1, 2, 6, 6), (1, 1, 2, 2), mode="reflect")
    @case
    def grid_sample(g): return F.grid_sample(_r(g, 1, 2, 5, 5), _r(g, 1, 3, 3, 2).tanh(), align_corners=False)
    # ---- distances, fft, linalg ----
    @case
    def cdist(g): return torch.cdist(_r(g, 6, 4), _r(g, 5, 4))
    @case
    def cosine_similarity(g): return F.cosine_similarity(_r(g, 6, 4), _r(g, 6, 4))
    @case
    def fft(g): return torch.fft.rfft(_r(g, 16))
    @case
    def inverse(g): return torch.linalg.inv(_r(g, 4, 4) + 4 * torch.eye(4))
    @case
    def linalg_solve(g): return torch.linalg.solve(_r(g, 4, 4) + 4 * torch.eye(4), _r(g, 4, 2))

    return c


CASES = _cases()


def flatten(value) -> list:
    """Tensors of a result, in order (tuples/lists flattened)."""
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, (tuple, list)):
        return [t for v in value for t in flatten(v)]
    raise TypeError(f"unexpected result type {type(value).__name__}")


def run_sweep(region_factory, input_dtype=torch.float32, device="cpu", fake=False) -> dict:
    """{case: [output tensors] or the error text} with every case run inside `region_factory()`
    from seed 0, inputs made in `input_dtype` on `device` (torch's default device meanwhile).
    With `fake=True` (no GPU needed) every case runs under FakeTensorMode and the results are
    [(dtype, shape)] signatures instead of tensors."""
    global INPUT_DTYPE
    INPUT_DTYPE = input_dtype
    results = {}
    previous_device = torch.get_default_device()
    torch.set_default_device(device)
    try:
        with FakeTensorMode(allow_non_fake_inputs=True) if fake else contextlib.nullcontext():
            for name, fn in CASES.items():
                g = _FakeGenerator(device) if fake else torch.Generator(device=device).manual_seed(0)
                try:
                    with region_factory():
                        outputs = flatten(fn(g))
                        results[name] = (signature(outputs) if fake else [t.detach().clone() for t in outputs])
                except RuntimeError as error:
                    results[name] = f"RuntimeError: {error}".split("\n")[0]
                if device != "cpu" and not fake:
                    results[name] = results[name] if isinstance(results[name], str) else [t.cpu() for t in results[name]]
    finally:
        INPUT_DTYPE = torch.float32
        torch.set_default_device(previous_device)
    return results


def signature(tensors) -> list[tuple[str, tuple[int, ...]]]:
    """What a fake run can compare: each output's dtype and shape."""
    return [(str(t.dtype), tuple(t.shape)) for t in tensors]


@contextlib.contextmanager
def torch_routing(device_type: str, dtype: torch.dtype):
    """torch.autocast's own region entry and exit, minus its check that the device is present (so
    torch's AutocastCUDA kernels can route fake CUDA tensors on a machine without a GPU)."""
    previous = (torch.is_autocast_enabled(device_type), torch.get_autocast_dtype(device_type))
    torch.set_autocast_enabled(device_type, True)
    torch.set_autocast_dtype(device_type, dtype)
    torch.autocast_increment_nesting()
    try:
        yield
    finally:
        if torch.autocast_decrement_nesting() == 0:
            torch.clear_autocast_cache()
        torch.set_autocast_enabled(device_type, previous[0])
        torch.set_autocast_dtype(device_type, previous[1])


if __name__ == "__main__":
    # Pristine torch: `python autocast_sweep.py OUT [cpu|cuda|fake-cuda]` saves torch's autocast
    # results (cpu: bfloat16, cuda: float16) for float32 inputs and for lower-precision inputs;
    # fake-cuda: torch's CUDA routing on fake tensors, as dtype/shape signatures.
    import sys

    target = sys.argv[2] if len(sys.argv) > 2 else "cpu"
    fake = target == "fake-cuda"
    device = "cuda" if fake else target
    low = torch.bfloat16 if device == "cpu" else torch.float16
    if fake:
        region = lambda: torch_routing("cuda", low)  # noqa: E731
    else:
        region = lambda: torch.autocast(device, dtype=low)  # noqa: E731
    torch.save({dtype: run_sweep(region, dtype, device, fake=fake) for dtype in (torch.float32, low)}, sys.argv[1])
