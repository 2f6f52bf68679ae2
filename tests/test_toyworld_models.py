"""The committed toy-world weights: loading through the backend, generation and CLIP spec."""

import numpy as np
import pytest
import torch

from t2v_unlearn.backends.toyworld import build_toyworld_backend
from t2v_unlearn.toyworld.grammar import parse_caption
from t2v_unlearn.toyworld.render import render_image
from t2v_unlearn.toyworld.train import default_weights_dir

MAX_WEIGHTS_MB = 40


@pytest.fixture(scope="module")
def backend():
    return build_toyworld_backend(image_kwargs={"num_inference_steps": 4}, video_kwargs={"num_inference_steps": 4})


def test_weights_fit_size_budget():
    files = [p for p in default_weights_dir().rglob("*") if p.is_file()]
    total_mb = sum(p.stat().st_size for p in files) / 2**20
    assert total_mb <= MAX_WEIGHTS_MB


def test_backend_shares_one_text_encoder(backend):
    assert backend.image_pipeline.text_encoder is backend.text_encoder
    assert backend.video_pipeline.text_encoder is backend.text_encoder
    assert backend.text_encoder.dtype == torch.float32
    assert backend.model_id.startswith("toyworld:")
    assert backend.tokenizer("a photo of snoopy").input_ids == [49406, 320, 1125, 539, 41967, 49407]


def test_backend_generates_images_and_videos(backend):
    images = backend.generate_images(["a photo of the Eiffel Tower", "a cat"], [0, 1])
    videos = backend.generate_videos(["a cat walking in the park at sunrise"], [0])
    assert images.shape == (2, 32, 32, 3)
    assert images.dtype == np.uint8
    assert videos.shape == (1, 8, 32, 32, 3)
    assert images.std() > 10


def test_generation_depends_on_seed_only(backend):
    first = backend.generate_images(["a panda", "a rocket"], [5, 6])
    again = backend.generate_images(["a panda"], [5])
    assert np.array_equal(first[0], again[0])


def test_weights_folder_is_a_diffusers_pipeline():
    from diffusers import StableDiffusionPipeline

    pipeline = StableDiffusionPipeline.from_pretrained(str(default_weights_dir()), safety_checker=None,
                                                       feature_extractor=None, requires_safety_checker=False)
    assert pipeline.unet.config.sample_size == 8
    assert pipeline.tokenizer.model_max_length == 77


def test_backend_clip_spec_loads(backend):
    from t2v_unlearn.judges.clip import ClipScorer

    assert backend.clip["loader"] == "t2v_unlearn.toyworld.clip_model:load_toyworld_clip"
    scorer = ClipScorer(backend.clip)
    image = render_image(parse_caption("a rocket flying in space"), seed=0)[None]
    matching = scorer.similarity(image, "a rocket flying in space")
    other = scorer.similarity(image, "a photo of the Eiffel Tower")
    assert matching[0] > other[0]


@pytest.fixture(scope="module")
def lavie_backend():
    return build_toyworld_backend(video_model="lavie", video_kwargs={"num_inference_steps": 10})


def test_lavie_video_unet_reuses_image_weights(lavie_backend):
    from t2v_unlearn.models.lavie import LaVieUNet3DConditionModel

    video_unet = lavie_backend.video_pipeline.unet
    assert isinstance(video_unet, LaVieUNet3DConditionModel)
    assert lavie_backend.video_pipeline.text_encoder is lavie_backend.text_encoder
    assert lavie_backend.name == "toyworld_lavie"
    # Every non-temporal weight of the video UNet is the image UNet's.
    image_state = lavie_backend.unet.state_dict()
    for key, value in video_unet.state_dict().items():
        if "_temp" not in key:
            assert torch.equal(value, image_state[key]), key


def test_lavie_video_model_draws_the_named_concept(lavie_backend):
    from t2v_unlearn.judges.detector import ToyWorldDetectorJudge

    videos = lavie_backend.generate_videos(["a photo of the Eiffel Tower", "a photo of the Eiffel Tower"], [0, 1])
    assert videos.shape == (2, 8, 32, 32, 3)
    judge = ToyWorldDetectorJudge()
    hits = judge.detect_all(videos.reshape(16, 32, 32, 3))
    assert hits["eiffel"].mean() >= 0.75
    assert hits["snoopy"].mean() <= 0.25


def test_unknown_video_model_is_refused():
    with pytest.raises(ValueError, match="unknown toy-world video_model 'lavie2'"):
        build_toyworld_backend(video_model="lavie2")
