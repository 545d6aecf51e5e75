"""RQ-VAE: a learned semantic-ID tokeniser (TIGER, Rajput et al. 2023).

Residual k-means quantises the raw text embedding; an RQ-VAE first learns a small latent space in
which quantisation loses as little of the embedding as possible, then quantises it with L residual
codebooks. TIGER ("Recommender Systems with Generative Retrieval", Rajput et al., NeurIPS 2023)
uses it to give every item a short tuple of codes whose shared prefixes mean shared semantics.

Two tricks keep every code in use, which is what makes the IDs informative: codebooks start from
k-means on the latent residuals, and codes left unused during an epoch are moved onto random
current residuals.
"""

from __future__ import annotations

import itertools
import logging
from typing import NamedTuple

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F
from tqdm import tqdm

from gflowgr_dist.config import RqVaeConfig
from gflowgr_dist.semantic_ids.rkmeans import kmeans, standardize

logger = logging.getLogger(__name__)

_INIT_KMEANS_ITERS = 25
_INIT_MAX_ITEMS = 65_536


class RqVaeOutput(NamedTuple):
    """What one forward pass yields; losses are scalar means over the batch."""

    reconstruction: torch.Tensor  # [B, D]
    codes: torch.Tensor  # [B, L] int64
    residuals: torch.Tensor  # [L, B, latent] residual each level quantised (detached)
    reconstruction_loss: torch.Tensor  # []
    codebook_loss: torch.Tensor  # [] sum over levels of ||sg[r] - e||²
    commitment_loss: torch.Tensor  # [] sum over levels of ||r - sg[e]||²


def _mlp(dims: list[int]) -> nn.Sequential:
    """Linear layers through `dims`, ReLU between them (none after the last)."""
    layers: list[nn.Module] = []
    for i, (d_in, d_out) in enumerate(itertools.pairwise(dims)):
        layers.append(nn.Linear(d_in, d_out))
        if i < len(dims) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


class RqVae(nn.Module):
    """MLP encoder, L residual codebooks, MLP decoder mirroring the encoder.

    Args:
        input_dim: embedding dimension D.
        hidden_dims: encoder hidden widths; the decoder uses them reversed.
        latent_dim: dimension of the quantised latent.
        codebook_sizes: codes per level.
    """

    def __init__(
        self, input_dim: int, hidden_dims: list[int], latent_dim: int, codebook_sizes: list[int]
    ) -> None:
        super().__init__()
        self.encoder = _mlp([input_dim, *hidden_dims, latent_dim])
        self.decoder = _mlp([latent_dim, *reversed(hidden_dims), input_dim])
        self.codebooks = nn.ParameterList(
            nn.Parameter(torch.randn(size, latent_dim)) for size in codebook_sizes
        )

    @torch.no_grad()
    def init_codebooks(self, x: torch.Tensor, generator: torch.Generator) -> None:
        """Sets each codebook to k-means centroids of its level's residuals.

        Args:
            x: standardised inputs, [N, D].
            generator: seeded generator for k-means++ seeding.
        """
        residual = self.encoder(x)  # [N, latent]
        for codebook in self.codebooks:
            centroids, assign = kmeans(
                residual, codebook.shape[0], iters=_INIT_KMEANS_ITERS, generator=generator
            )
            codebook.copy_(centroids)
            residual = residual - centroids[assign]

    def quantise(
        self, z: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Residual quantisation of latents.

        Args:
            z: latents, [B, latent].

        Returns:
            (codes [B, L], quantised [B, latent], residuals [L, B, latent] detached,
            codebook loss [], commitment loss [])
        """
        residual = z  # [B, latent]
        quantised = torch.zeros_like(z)  # [B, latent]
        codes, residuals = [], []
        codebook_loss = z.new_zeros(())
        commitment_loss = z.new_zeros(())
        for codebook in self.codebooks:
            code = torch.cdist(residual.detach(), codebook.detach()).argmin(dim=1)  # [B]
            chosen = codebook[code]  # [B, latent]
            codebook_loss = codebook_loss + F.mse_loss(chosen, residual.detach())
            commitment_loss = commitment_loss + F.mse_loss(residual, chosen.detach())
            codes.append(code)
            residuals.append(residual.detach())
            quantised = quantised + chosen
            residual = residual - chosen.detach()
        return (
            torch.stack(codes, dim=1),
            quantised,
            torch.stack(residuals),
            codebook_loss,
            commitment_loss,
        )

    def forward(self, x: torch.Tensor) -> RqVaeOutput:
        """Encodes, quantises (straight-through) and decodes a batch.

        Args:
            x: standardised inputs, [B, D].
        """
        z = self.encoder(x)  # [B, latent]
        codes, quantised, residuals, codebook_loss, commitment_loss = self.quantise(z)
        z_q = z + (quantised - z).detach()  # [B, latent]; gradient passes straight to z
        reconstruction = self.decoder(z_q)  # [B, D]
        return RqVaeOutput(
            reconstruction=reconstruction,
            codes=codes,
            residuals=residuals,
            reconstruction_loss=F.mse_loss(reconstruction, x),
            codebook_loss=codebook_loss,
            commitment_loss=commitment_loss,
        )

    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Semantic codes of standardised inputs, [B, D] -> [B, L] int64."""
        return self.quantise(self.encoder(x))[0]


def fit_rqvae(
    embeddings: np.ndarray,
    codebook_sizes: list[int],
    cfg: RqVaeConfig,
    *,
    seed: int = 0,
    progress: bool = False,
) -> tuple[np.ndarray, dict[str, float]]:
    """Trains an RQ-VAE on item embeddings and returns every item's semantic codes.

    The global torch RNG state is left as it was; the result depends only on the inputs, `cfg`
    and `seed` (for a fixed number of torch threads).

    Args:
        embeddings: item embeddings, [I, D].
        codebook_sizes: codes per level, e.g. [32, 32, 32].
        cfg: encoder widths, latent size and optimisation settings.
        seed: the only source of randomness.
        progress: show a tqdm bar over epochs.

    Returns:
        (codes [I, L] int64 with codes[:, l] in [0, codebook_sizes[l]), final stats on the whole
        data: reconstruction_loss, commitment_loss, utilisation_l{l} (fraction of level l's codes
        used by some item) and epochs)
    """
    x = torch.from_numpy(standardize(embeddings))  # [I, D]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        generator = torch.Generator().manual_seed(seed)
        model = RqVae(x.shape[1], list(cfg.hidden_dims), cfg.latent_dim, codebook_sizes)
        model.init_codebooks(_init_sample(x, generator), generator)
        _train(model, x, cfg, generator, progress=progress)
        codes, stats = _evaluate(model, x, cfg.batch_size)
    stats["epochs"] = float(cfg.epochs)
    logger.info(
        "RQ-VAE fitted on %d items: %s",
        x.shape[0],
        ", ".join(f"{k}={v:.4g}" for k, v in stats.items()),
    )
    return codes.numpy().astype(np.int64), stats


def _init_sample(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """At most `_INIT_MAX_ITEMS` random rows of `x`, for codebook initialisation."""
    if x.shape[0] <= _INIT_MAX_ITEMS:
        return x
    return x[torch.randperm(x.shape[0], generator=generator)[:_INIT_MAX_ITEMS]]


def _train(
    model: RqVae,
    x: torch.Tensor,
    cfg: RqVaeConfig,
    generator: torch.Generator,
    *,
    progress: bool,
) -> None:
    """Mini-batch Adam on reconstruction + codebook + weighted commitment loss."""
    optimiser = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    sizes = [codebook.shape[0] for codebook in model.codebooks]
    for epoch in tqdm(range(cfg.epochs), desc="rq-vae", disable=not progress):
        usage = [torch.zeros(size, dtype=torch.int64) for size in sizes]
        order = torch.randperm(x.shape[0], generator=generator)
        for batch in order.split(cfg.batch_size):
            # Forward: encode, quantise with the straight-through estimator, decode.
            out = model(x[batch])

            # Loss: reconstruction + codebook + commitment_weight · commitment.
            loss = (
                out.reconstruction_loss
                + out.codebook_loss
                + cfg.commitment_weight * out.commitment_loss
            )

            # Step: one Adam update of encoder, decoder and codebooks.
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()

            # Usage: count which codes this batch chose, per level.
            for level, count in enumerate(usage):
                count += torch.bincount(out.codes[:, level], minlength=sizes[level])

        # Dead codes: move codes unused this epoch onto random current residuals (not after the
        # last epoch, so that the final codebooks are the trained ones).
        if epoch < cfg.epochs - 1:
            _revive_dead_codes(model, usage, out.residuals, generator)
        logger.debug("epoch %d: loss=%.4f", epoch + 1, float(loss.detach()))


@torch.no_grad()
def _revive_dead_codes(
    model: RqVae,
    usage: list[torch.Tensor],
    residuals: torch.Tensor,
    generator: torch.Generator,
) -> None:
    """Sets each level's unused codes to residuals drawn (with replacement) from `residuals`.

    Args:
        model: the model whose codebooks are edited in place.
        usage: per level, how often each code was chosen during the epoch, [K_l].
        residuals: the last batch's residuals per level, [L, B, latent].
        generator: seeded generator for the draws.
    """
    for level, (codebook, count) in enumerate(zip(model.codebooks, usage, strict=True)):
        dead = torch.nonzero(count == 0).flatten()  # [n_dead]
        if dead.numel() == 0:
            continue
        pick = torch.randint(residuals.shape[1], (dead.numel(),), generator=generator)
        codebook[dead] = residuals[level, pick]
        logger.debug("level %d: re-initialised %d dead codes", level, dead.numel())


@torch.no_grad()
def _evaluate(
    model: RqVae, x: torch.Tensor, batch_size: int
) -> tuple[torch.Tensor, dict[str, float]]:
    """Codes of every item and the mean losses and code utilisation over the whole data."""
    codes, recon, commit = [], 0.0, 0.0
    for batch in torch.arange(x.shape[0]).split(batch_size):
        out = model(x[batch])
        codes.append(out.codes)
        recon += float(out.reconstruction_loss) * batch.numel()
        commit += float(out.commitment_loss) * batch.numel()
    all_codes = torch.cat(codes)  # [I, L]
    stats = {
        "reconstruction_loss": recon / x.shape[0],
        "commitment_loss": commit / x.shape[0],
    }
    for level, codebook in enumerate(model.codebooks):
        used = torch.unique(all_codes[:, level]).numel()
        stats[f"utilisation_l{level}"] = used / codebook.shape[0]
    return all_codes, stats
