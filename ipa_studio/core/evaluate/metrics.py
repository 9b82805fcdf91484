"""The paper's two alignment metrics (§4.2), computed with a CLIP model (ViT-L/14 in the paper).

- CLIP-I: cosine similarity of the CLIP image embeddings of the generated image and the image prompt.
- CLIP-T: CLIPScore (Hessel et al., 2021) of the generated image with the image prompt's caption,
  ``2.5 · max(cos(image, text), 0)``. The weight 2.5 is CLIPScore's own; with it, raw ViT-L/14
  image–text cosines of about 0.23 give the 0.58–0.61 the paper's Table 1 reports, so its CLIP-T is
  CLIPScore with w = 2.5 on a 0–1 scale (not ×100). The raw cosine is reported next to it.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image

from ipa_studio.core.errors import ModelFileError

CLIPSCORE_WEIGHT = 2.5

_BUNDLED_TOKENIZER = Path(__file__).resolve().parents[2] / "resources" / "tokenizer"


def cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Row-wise cosine similarity of two [N, D] batches (b may be [1, D] and is then broadcast)."""
    return F.cosine_similarity(a.float(), b.float(), dim=-1)


def clip_i(generated: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """CLIP-I per generated image: cos(generated image embedding, image prompt embedding)."""
    return cosine(generated, reference)


def clip_t(generated: torch.Tensor, text: torch.Tensor, weight: float = CLIPSCORE_WEIGHT) -> torch.Tensor:
    """CLIP-T per generated image: CLIPScore = weight · max(cos(image embedding, text embedding), 0)."""
    return weight * cosine(generated, text).clamp(min=0)


class ClipScorer:
    """Embeds images and captions with a transformers ``CLIPModel`` folder, on one device.

    The folder of ``openai/clip-vit-large-patch14`` carries its own preprocessing and tokenizer
    files; a folder without them gets CLIP's standard preprocessing at the model's resolution and the
    bundled CLIP tokenizer, which every CLIP model of this family shares.
    """

    def __init__(
        self, folder: str | Path, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32
    ) -> None:
        from transformers import CLIPImageProcessor, CLIPModel, CLIPTokenizer

        folder = Path(folder)
        if not (folder / "config.json").is_file():
            raise ModelFileError(
                f"'{folder}' is not a CLIP model folder (config.json missing). Use a transformers "
                "CLIPModel folder such as openai/clip-vit-large-patch14, the model the paper used."
            )
        self.device = torch.device(device)
        try:
            self.model = CLIPModel.from_pretrained(folder, dtype=dtype, local_files_only=True)
        except (OSError, ValueError, RuntimeError, KeyError) as exc:
            raise ModelFileError(f"The CLIP model in '{folder}' could not be loaded: {exc}") from exc
        self.model.to(self.device).eval().requires_grad_(False)
        self.dtype = dtype
        size = self.model.config.vision_config.image_size
        if (folder / "preprocessor_config.json").is_file():
            self.processor = CLIPImageProcessor.from_pretrained(folder, local_files_only=True)
        else:
            self.processor = CLIPImageProcessor(size=size, crop_size=size)
        tokenizer_dir = folder if (folder / "vocab.json").is_file() else _BUNDLED_TOKENIZER
        self.tokenizer = CLIPTokenizer.from_pretrained(tokenizer_dir, local_files_only=True)
        self.name = folder.name

    @torch.no_grad()
    def image_embeddings(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """[N, D] projected image embeddings (float32, on the CPU)."""
        pixels = self.processor(images=list(images), return_tensors="pt").pixel_values
        out = self.model.vision_model(pixel_values=pixels.to(self.device, self.dtype))
        return self.model.visual_projection(out.pooler_output).float().cpu()

    @torch.no_grad()
    def text_embeddings(self, texts: Sequence[str]) -> torch.Tensor:
        """[N, D] projected text embeddings (float32, on the CPU); captions past 77 tokens are cut."""
        tokens = self.tokenizer(
            list(texts),
            padding="max_length",
            max_length=self.tokenizer.model_max_length,
            truncation=True,
            return_tensors="pt",
        )
        out = self.model.text_model(
            input_ids=tokens.input_ids.to(self.device), attention_mask=tokens.attention_mask.to(self.device)
        )
        return self.model.text_projection(out.pooler_output).float().cpu()
