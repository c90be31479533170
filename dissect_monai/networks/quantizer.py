"""Multi-scale vector quantizer with EMA codebooks (fp32 even under bf16 autocast, synchronised across ranks).

Why not :class:`monai.networks.layers.EMAQuantizer`: it only disables *CUDA* autocast (so on a CPU bf16
autocast its distances run in bf16), searches un-normalised Euclidean distances, has no dead-code
restart and no usage statistics. Its one-hot counting is right; the counting here is the same
(``bincount`` of the assignments == column sums of the one-hot matrix), never a sum of code indices.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.distributed as dist
import torch.nn.functional as F
from monai.networks.layers import Conv
from monai.utils import ensure_tuple_rep
from torch import nn

from dissect_monai.utils.distributed import is_distributed

__all__ = ["EMACodebook", "MultiScaleQuantizer"]


def _rows(x: torch.Tensor) -> torch.Tensor:
    """``(B, C, *S)`` map -> ``(B * prod(S), C)`` rows (a view for channels_last maps, a copy otherwise)."""
    return torch.movedim(x, 1, -1).reshape(-1, x.shape[1])


def _as_map(rows: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """``(N, C)`` rows -> the ``(B, C, *S)`` map of ``shape`` (a view, channels_last strides)."""
    return torch.movedim(rows.view(shape[0], *shape[2:], shape[1]), -1, 1)


class _UnitRows(torch.autograd.Function):
    """``v / max(||v||, eps)`` per row of ``(N, D)`` fp32 ``v``: ``F.normalize(v, dim=1)`` with a fused backward.

    Same forward values as ``F.normalize(v, dim=1, eps=eps)``, same gradient up to fp32 rounding:
    ``(g - u (u . g)) / ||v||`` (``g / eps`` for rows with ``||v|| < eps``, whose norm is clamped), in three
    passes over the rows instead of autograd's chain of about ten (div, expand, sum, clamp, norm backward...),
    which dominated the quantizer's backward at the largest scale.
    """

    @staticmethod
    def forward(ctx, v: torch.Tensor, eps: float) -> torch.Tensor:  # type: ignore[override]
        norm = torch.linalg.vector_norm(v, dim=1, keepdim=True)
        unit = v / norm.clamp_min(eps)
        ctx.save_for_backward(unit, norm)
        ctx.eps = eps
        return unit

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:  # type: ignore[override]
        unit, norm = ctx.saved_tensors
        radial = (unit * grad).sum(dim=1, keepdim=True).masked_fill_(norm < ctx.eps, 0.0)
        return torch.addcmul(grad, unit, radial, value=-1.0).div_(norm.clamp_min(ctx.eps)), None


class _StraightThrough(torch.autograd.Function):
    """Straight-through output and commitment error of rows ``z`` ``(N, D)`` and their codes ``e`` (no gradient).

    Forward: ``z + (e - z)`` (value ``e``) and ``mse(z, e)``, the same values as ``z + (e - z).detach()`` and
    ``F.mse_loss(z, e)``. Backward: ``grad_z = grad_out + 2 / numel * grad_mse * (z - e)`` in one pass over the
    rows, where autograd would zero-fill the mse gradient, compute it, then add it to ``grad_out``.
    """

    @staticmethod
    def forward(ctx, z: torch.Tensor, e: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # type: ignore[override]
        diff = e - z
        ctx.save_for_backward(diff)
        return z + diff, F.mse_loss(z, e)

    @staticmethod
    def backward(  # type: ignore[override]
        ctx, grad_out: torch.Tensor, grad_mse: torch.Tensor
    ) -> tuple[torch.Tensor, None]:
        (diff,) = ctx.saved_tensors
        return torch.addcmul(grad_out, diff, grad_mse * (-2.0 / diff.numel())), None


def _unit_rows(v: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """L2-normalised rows ``(N, D)`` (fp32) of ``v`` ``(N, D)``, computed outside autocast (see :class:`_UnitRows`)."""
    with torch.autocast(device_type=v.device.type, enabled=False):
        return _UnitRows.apply(v.float(), eps)


class EMACodebook(nn.Module):
    """One codebook of ``num_codes`` unit vectors of size ``dim``, learnt by exponential moving averages.

    Assignment: nearest code of an L2-normalised vector, i.e. largest cosine similarity, computed in fp32.
    Update (training only, no gradient): with ``n_k`` the number of vectors assigned to code ``k`` in the
    batch (one-hot counts, summed over all ranks) and ``s_k`` the sum of those vectors,
    ``N_k <- decay * N_k + (1 - decay) * n_k``, ``S_k <- decay * S_k + (1 - decay) * s_k``; the code is
    the L2-normalised centroid ``S_k / N~_k`` with Laplace-smoothed counts
    ``N~_k = (N_k + eps) / (sum N + K eps) * sum N``. A code whose EMA count falls below
    ``dead_code_threshold`` is restarted from a random vector of the current batch (chosen on rank 0 and
    broadcast, so every rank keeps the same codebook) with count 1. :meth:`initialize` sets all codes from
    the first training batch (called by :class:`MultiScaleQuantizer`). Every piece of state is a buffer,
    so checkpoints restore it.

    Args:
        num_codes: codebook size ``K``.
        dim: code dimension ``D``.
        decay: EMA decay of counts and sums.
        eps: Laplace smoothing constant.
        dead_code_threshold: EMA count under which a code is restarted (0 disables restarts); must be < 1.
    """

    def __init__(
        self, num_codes: int, dim: int, decay: float = 0.99, eps: float = 1e-5, dead_code_threshold: float = 0.1
    ) -> None:
        super().__init__()
        if num_codes < 2 or dim < 1:
            raise ValueError(f"need num_codes >= 2 and dim >= 1, got num_codes={num_codes}, dim={dim}.")
        if not 0.0 < decay < 1.0:
            raise ValueError(f"decay must be in (0, 1), got {decay}.")
        if not 0.0 <= dead_code_threshold < 1.0:
            raise ValueError(f"dead_code_threshold must be in [0, 1) (restarted codes get count 1), got "
                             f"{dead_code_threshold}.")
        self.num_codes = num_codes
        self.dim = dim
        self.decay = decay
        self.eps = eps
        self.dead_code_threshold = dead_code_threshold
        self.search_block = 1024
        codes = F.normalize(torch.randn(num_codes, dim), dim=1)
        self.register_buffer("codebook", codes)
        self.register_buffer("ema_count", torch.ones(num_codes))
        self.register_buffer("ema_sum", codes.clone())
        self.register_buffer("initialized", torch.zeros((), dtype=torch.bool))
        self.register_buffer("perplexity", torch.zeros(()))
        self.register_buffer("usage", torch.zeros(()))
        self.register_buffer("dead_codes", torch.zeros(()))
        self.register_buffer("restarts", torch.zeros((), dtype=torch.long))

    def similarity(self, z: torch.Tensor) -> torch.Tensor:
        """Cosine similarity ``(N, K)`` (fp32) of unit vectors ``z`` ``(N, D)`` to every code."""
        if torch.jit.is_scripting():  # TorchScript needs a constant autocast device; exported nets run without it
            return z.float() @ self.codebook.t()
        with torch.autocast(device_type=z.device.type, enabled=False):
            return z.float() @ self.codebook.t()

    def assign(self, z: torch.Tensor) -> torch.Tensor:
        """Index ``(N,)`` (int64) of the nearest code of each unit vector ``z`` ``(N, D)``.

        Computed in blocks of ``search_block`` rows so each ``(rows, K)`` similarity block stays in cache
        (about 2x faster than one ``(N, K)`` matrix for the 32k C2 positions of a 64 px batch); exact fp32,
        the same values as :meth:`similarity` followed by ``argmax`` (ties: the first code).
        """
        if torch.jit.is_scripting():  # TorchScript needs a constant autocast device; exported nets run without it
            return self._blockwise_argmax(z.detach().float())
        with torch.autocast(device_type=z.device.type, enabled=False):
            return self._blockwise_argmax(z.detach().float())

    def _blockwise_argmax(self, z: torch.Tensor) -> torch.Tensor:
        """``argmax`` over codes of ``z @ codebook.T`` for fp32 rows ``z`` ``(N, D)``, block by block.

        One similarity buffer is reused for every block and each block's indices are copied into one output
        (no concatenation). ``torch.max`` over the codes gives the same index as ``argmax`` (the first of
        equal maxima) in about two thirds of its time on CPU.
        """
        n = z.shape[0]
        indices = torch.empty(n, dtype=torch.long, device=z.device)
        block = torch.empty(min(n, self.search_block), self.num_codes, device=z.device)
        codes = self.codebook.t()
        for start in range(0, n, self.search_block):
            rows = z[start:start + self.search_block]
            sim = block[: rows.shape[0]]
            torch.mm(rows, codes, out=sim)
            indices[start:start + rows.shape[0]] = torch.max(sim, dim=1)[1]
        return indices

    def lookup(self, indices: torch.Tensor) -> torch.Tensor:
        """Codes ``(*indices.shape, D)`` (fp32) of integer ``indices``."""
        return F.embedding(indices, self.codebook)

    @torch.no_grad()
    def initialize(self, z: torch.Tensor) -> None:
        """Set every code to a random row of unit vectors ``z`` ``(N, D)`` unless already initialised."""
        if not bool(self.initialized):
            self._replace_codes(torch.ones(self.num_codes, dtype=torch.bool, device=z.device), z.detach().float())
            self.initialized.fill_(True)

    @torch.no_grad()
    def update(self, z: torch.Tensor, indices: torch.Tensor) -> None:
        """EMA update from unit vectors ``z`` ``(N, D)`` assigned to ``indices`` ``(N,)``; then dead-code restart.

        Counts and sums are all-reduced over ranks when ``torch.distributed`` is initialised.
        """
        z = z.detach().float()
        counts = torch.bincount(indices, minlength=self.num_codes).float()
        sums = torch.zeros_like(self.ema_sum).index_add_(0, indices, z)
        if is_distributed():
            dist.all_reduce(counts)
            dist.all_reduce(sums)
        self.ema_count.mul_(self.decay).add_(counts, alpha=1.0 - self.decay)
        self.ema_sum.mul_(self.decay).add_(sums, alpha=1.0 - self.decay)
        total = self.ema_count.sum()
        smoothed = (self.ema_count + self.eps) / (total + self.num_codes * self.eps) * total
        self.codebook.copy_(F.normalize(self.ema_sum / smoothed.unsqueeze(1), dim=1))

        probs = counts / counts.sum().clamp_min(1.0)
        self.perplexity.copy_(torch.exp(-(probs * torch.log(probs.clamp_min(1e-12))).sum()))
        self.usage.copy_((counts > 0).float().mean())
        dead = self.ema_count < self.dead_code_threshold
        self.dead_codes.copy_(dead.sum().float())
        if bool(dead.any()):
            self._replace_codes(dead, z)
            self.restarts.add_(dead.sum())

    def _replace_codes(self, which: torch.Tensor, z: torch.Tensor) -> None:
        """Set the codes selected by the bool mask ``which`` ``(K,)`` to random rows of ``z`` (rank 0's choice)."""
        n = int(which.sum())
        if z.shape[0] >= n:
            rows = torch.randperm(z.shape[0], device=z.device)[:n]
        else:
            rows = torch.randint(z.shape[0], (n,), device=z.device)
        new = F.normalize(z[rows], dim=1)
        if is_distributed():
            dist.broadcast(new, src=0)
        self.codebook[which] = new
        self.ema_sum[which] = new
        self.ema_count[which] = 1.0

    def statistics(self) -> dict[str, float]:
        """Perplexity and usage (fraction of codes used) of the last training batch; codes found dead then."""
        return {
            "perplexity": float(self.perplexity),
            "usage": float(self.usage),
            "dead_codes": float(self.dead_codes),
        }


class MultiScaleQuantizer(nn.Module):
    """Vector quantisation of several encoder maps, one 1x1 projection and one :class:`EMACodebook` per scale.

    For scale ``i`` a map ``(B, in_channels[i], *S_i)`` is projected by a 1x1 convolution to
    ``code_dims[i]`` channels and L2-normalised over channels (fp32) to ``z``; each position takes its
    nearest code ``e``. Output is the straight-through map ``z + (e - z).detach()`` (forward value ``e``,
    gradient of ``z``), and the commitment loss ``beta * mean((z - e.detach())^2)`` (summed over scales),
    which trains the projection and the encoder (the codebook itself learns by EMA only).
    Distances, losses and EMA statistics run in fp32 even inside a bf16 autocast region.

    Args:
        in_channels: channels of each quantised map.
        num_codes: codebook size, one value or one per scale.
        code_dims: code dimension, one value or one per scale.
        spatial_dims: 2 or 3.
        commitment_weight: ``beta``.
        decay: EMA decay of the codebooks.
        eps: Laplace smoothing constant.
        dead_code_threshold: EMA count under which a code is restarted from batch vectors.
        names: name of each scale in statistics (default ``scale0``, ``scale1``...).
    """

    def __init__(
        self,
        in_channels: Sequence[int],
        num_codes: int | Sequence[int] = 512,
        code_dims: int | Sequence[int] = 64,
        spatial_dims: int = 2,
        commitment_weight: float = 0.25,
        decay: float = 0.99,
        eps: float = 1e-5,
        dead_code_threshold: float = 0.1,
        names: Sequence[str] | None = None,
    ) -> None:
        super().__init__()
        n = len(in_channels)
        if n == 0:
            raise ValueError("MultiScaleQuantizer needs at least one scale.")
        sizes = ensure_tuple_rep(num_codes, n)
        dims = ensure_tuple_rep(code_dims, n)
        self.names: list[str] = list(names) if names is not None else [f"scale{i}" for i in range(n)]
        if len(self.names) != n:
            raise ValueError(f"{len(self.names)} names for {n} scales.")
        conv = Conv[Conv.CONV, spatial_dims]
        self.projections = nn.ModuleList([conv(c, d, kernel_size=1) for c, d in zip(in_channels, dims)])
        self.codebooks = nn.ModuleList(
            [
                EMACodebook(k, d, decay=decay, eps=eps, dead_code_threshold=dead_code_threshold)
                for k, d in zip(sizes, dims)
            ]
        )
        self.code_dims: tuple[int, ...] = tuple(int(d) for d in dims)
        self.num_codes: tuple[int, ...] = tuple(int(k) for k in sizes)
        self.commitment_weight = commitment_weight

    def project(self, features: Sequence[torch.Tensor], projections: nn.ModuleList | None = None) -> list[torch.Tensor]:
        """L2-normalised (over channels) fp32 projections ``(B, code_dims[i], *S_i)`` of the maps ``features``.

        ``projections`` replaces the module's own 1x1 convolutions (the EMA target network passes its copy).
        Each map is a channels_last view of contiguous ``(positions, code_dims[i])`` rows, the layout
        :meth:`quantize` works in.
        """
        convs = self.projections if projections is None else projections
        if len(features) != len(convs):
            raise ValueError(f"expected {len(convs)} feature maps, got {len(features)}.")
        out = []
        for conv, f in zip(convs, features):
            z = conv(f)  # normalised as rows (positions x channels): channels_last maps need no copy
            out.append(_as_map(_unit_rows(_rows(z)), z.shape))
        return out

    def quantize(
        self, projected: Sequence[torch.Tensor], update: bool = False
    ) -> tuple[list[torch.Tensor], torch.Tensor, list[torch.Tensor]]:
        """Quantise projected maps (see :meth:`project`).

        Args:
            projected: ``(B, D_i, *S_i)`` unit vectors per scale.
            update: EMA-update the codebooks with these vectors (online network in training).

        Returns:
            straight-through quantised maps ``(B, D_i, *S_i)`` (fp32), commitment loss (fp32 scalar, summed
            over scales; 0 when ``projected`` carries no gradient), code indices ``(B, *S_i)`` (int64) per scale.
        """
        quantised, indices = [], []
        loss = projected[0].new_zeros((), dtype=torch.float32)
        with torch.autocast(device_type=projected[0].device.type, enabled=False):
            for codebook, z in zip(self.codebooks, projected):
                flat = _rows(z.float())  # a view of the rows of :meth:`project`; all work below is on rows
                if update:
                    codebook.initialize(flat)
                idx = codebook.assign(flat)
                codes = codebook.lookup(idx)
                if update:
                    codebook.update(flat, idx)
                if flat.requires_grad:
                    straight_through, commitment = _StraightThrough.apply(flat, codes)
                    loss = loss + self.commitment_weight * commitment
                    quantised.append(_as_map(straight_through, z.shape))
                else:  # no gradient path (target network, inference): the loss is 0 and the output is the code
                    quantised.append(_as_map(codes, z.shape))
                indices.append(idx.view(z.shape[0], *z.shape[2:]))
        return quantised, loss, indices

    @torch.jit.unused  # training path (EMA updates, torch.distributed); exported networks use code_indices
    def forward(self, features: list[torch.Tensor]) -> tuple[list[torch.Tensor], torch.Tensor, list[torch.Tensor]]:
        """Project and quantise ``features`` (one map per scale); codebooks are EMA-updated in training mode.

        Returns the outputs of :meth:`quantize`.
        """
        return self.quantize(self.project(features), update=self.training)

    def code_indices(self, features: list[torch.Tensor]) -> list[torch.Tensor]:
        """Nearest-code indices ``(B, *S_i)`` per scale, without any codebook update."""
        out: list[torch.Tensor] = []
        i = 0
        for conv, codebook in zip(self.projections, self.codebooks):
            z = F.normalize(conv(features[i]).float(), dim=1)
            flat = torch.movedim(z, 1, -1).reshape(-1, z.shape[1])
            out.append(codebook.assign(flat).view_as(z[:, 0]))
            i += 1
        return out

    def soft_code_histograms(self, projected: Sequence[torch.Tensor], temperature: float) -> list[torch.Tensor]:
        """Mean over positions of ``softmax(cos(z, codes) / temperature)`` per image: ``(B, K_i)`` fp32 per scale."""
        out = []
        with torch.autocast(device_type=projected[0].device.type, enabled=False):
            for codebook, z in zip(self.codebooks, projected):
                flat = torch.movedim(z.float(), 1, -1).reshape(z.shape[0], -1, z.shape[1])
                sim = flat @ codebook.codebook.t()
                out.append(torch.softmax(sim / temperature, dim=-1).mean(dim=1))
        return out

    def statistics(self) -> dict[str, float]:
        """``{name}_perplexity``, ``{name}_usage`` and ``{name}_dead_codes`` of the last training batch per scale."""
        stats = {}
        for name, codebook in zip(self.names, self.codebooks):
            stats.update({f"{name}_{k}": v for k, v in codebook.statistics().items()})
        return stats
