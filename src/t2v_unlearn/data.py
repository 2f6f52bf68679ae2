"""Latents of the few-shot images and the prompts paired with them in each batch."""

from __future__ import annotations

import random

import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset

from t2v_unlearn.concepts import Concept, PromptTemplates


@torch.no_grad()
def encode_images(vae, images: np.ndarray, generator: torch.Generator, batch_size: int = 8) -> torch.Tensor:
    """Encode uint8 images `(n, h, w, 3)` into scaled latents `(n, c, h/f, w/f)`, once.

    Each image is flipped horizontally with probability 1/2 before encoding; the flip is drawn once
    here, so every epoch sees the same latent for an image. The latent is a sample of the VAE's
    posterior, multiplied by the VAE's scaling factor, as in latent-diffusion training.
    """
    if len(images) == 0:
        raise ValueError("no images to encode")
    device = next(vae.parameters()).device
    dtype = next(vae.parameters()).dtype
    pixels = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float() / 127.5 - 1.0  # (n, 3, h, w)
    flips = torch.rand(len(pixels), generator=generator) < 0.5
    pixels[flips] = pixels[flips].flip(-1)
    latents = []
    for start in range(0, len(pixels), batch_size):
        chunk = pixels[start : start + batch_size].to(device=device, dtype=dtype)
        posterior = vae.encode(chunk).latent_dist
        noise = torch.randn(posterior.mean.shape, generator=generator).to(device=device, dtype=dtype)
        latents.append((posterior.mean + posterior.std * noise).float().cpu())
    return torch.cat(latents) * float(vae.config.scaling_factor)


def random_latents(count: int, latent_shape: tuple[int, int, int], generator: torch.Generator) -> torch.Tensor:
    """Uniform random latents in [0, 1), the image-free variant (shots=0) of the few-shot reference."""
    return torch.rand((count, *latent_shape), generator=generator)


class LatentPromptDataset(Dataset):
    """Pairs each latent with a prompt made from a random template and its concept's name.

    The template is drawn anew on every access, so each epoch sees other wordings, as in
    textual-inversion training.
    """

    def __init__(self, latents: torch.Tensor, concepts: list[Concept], templates: PromptTemplates,
                 concept_index: list[int]):
        if len(latents) != len(concept_index):
            raise ValueError(f"{len(latents)} latents but {len(concept_index)} concept labels")
        self.latents = latents
        self.concepts = concepts
        self.templates = templates
        self.concept_index = concept_index

    def __len__(self) -> int:
        return len(self.latents)

    def __getitem__(self, index: int) -> dict:
        concept = self.concepts[self.concept_index[index]]
        template = random.choice(self.templates.for_kind(concept.kind))
        return {"latents": self.latents[index], "prompt": template.format(concept.name), "concept": concept.key}


def collate(items: list[dict]) -> dict:
    return {
        "latents": torch.stack([item["latents"] for item in items]),
        "prompts": [item["prompt"] for item in items],
        "concepts": [item["concept"] for item in items],
    }


class UnlearningDataModule(pl.LightningDataModule):
    """All concepts' latents in one shuffled dataset, so each epoch mixes the concepts."""

    def __init__(self, dataset: LatentPromptDataset, batch_size: int = 2, shuffle: bool = True):
        super().__init__()
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        self.dataset = dataset
        self.batch_size = batch_size
        self.shuffle = shuffle

    def train_dataloader(self) -> DataLoader:
        # The dataset is a handful of latents in memory: worker processes would only add start-up time.
        return DataLoader(self.dataset, batch_size=self.batch_size, shuffle=self.shuffle,
                          collate_fn=collate, num_workers=0)
