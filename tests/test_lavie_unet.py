"""LaVie base UNet: key compatibility with LaVie's checkpoints and outputs of LaVie's own code.

The golden data in tests/data/lavie comes from LaVie's reference implementation (see its README).
"""

from __future__ import annotations

import gzip
import importlib.util
import json
import pathlib
import pickle
from pathlib import Path

import pytest
import torch
from diffusers import UNet2DConditionModel
from safetensors.torch import load_file

from t2v_unlearn.models.lavie import (
    LaVieUNet3DConditionModel,
    lavie_unet_from_state_dict,
    load_lavie_checkpoint,
)
from t2v_unlearn.models.lavie.attention import LaVieTransformer3DModel, RelativePositionBias, RotaryEmbedding

DATA = Path(__file__).parent / "data" / "lavie"
REPO = Path(__file__).resolve().parents[1]
ATOL, RTOL = 1e-5, 1e-4


@pytest.fixture(autouse=True, scope="module")
def single_thread():
    # The tensors are tiny, so extra intra-op threads only add synchronisation. On a busy machine
    # (2 shared cores, load average 6), a tiny LaVie pipeline call took 10 s on two threads, 0.2 s on one.
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def read_config(name: str) -> dict:
    config = json.loads((DATA / name).read_text())
    return {key: value for key, value in config.items() if not key.startswith("_")}


def tiny_unet() -> LaVieUNet3DConditionModel:
    model = LaVieUNet3DConditionModel(**read_config("tiny_config.json"))
    model.load_state_dict(load_file(DATA / "tiny_unet.safetensors"), strict=True)
    return model.eval()


@pytest.fixture(scope="module")
def golden() -> dict[str, torch.Tensor]:
    return load_file(DATA / "golden_io.safetensors")


@pytest.fixture(scope="module")
def base_unet_on_meta() -> LaVieUNet3DConditionModel:
    with torch.device("meta"):
        return LaVieUNet3DConditionModel(**read_config("base_unet_config.json"))


def random_video(generator_seed: int, shape: tuple[int, ...]) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(generator_seed))


# --- Full-size model: keys, shapes, dtypes ---------------------------------------------------


def test_base_state_dict_matches_lavie(base_unet_on_meta):
    with gzip.open(DATA / "base_unet_state_dict.tsv.gz", "rt") as handle:
        rows = [line.rstrip("\n").split("\t") for line in handle][1:]
    expected = {key: (shape, dtype) for key, shape, dtype in rows}
    state_dict = base_unet_on_meta.state_dict()
    actual = {
        key: (str(list(tensor.shape)), str(tensor.dtype).removeprefix("torch."))
        for key, tensor in state_dict.items()
    }

    assert len(rows) == 830
    assert sorted(set(expected) - set(actual)) == []
    assert sorted(set(actual) - set(expected)) == []
    assert {key: value for key, value in actual.items() if value != expected[key]} == {}
    assert sum(tensor.numel() for tensor in state_dict.values()) == 909_124_356


def test_base_rotary_freqs_shared(base_unet_on_meta):
    rotary_modules = {
        id(module)
        for name, module in base_unet_on_meta.named_modules(remove_duplicate=False)
        if name.endswith("attn_temp.rotary_emb")
    }
    freqs_keys = [key for key in base_unet_on_meta.state_dict() if key.endswith("rotary_emb.freqs")]
    unique_elements = sum(p.numel() for p in base_unet_on_meta.parameters())
    unique_elements += sum(b.numel() for b in base_unet_on_meta.buffers())

    assert len(rotary_modules) == 1
    assert len(freqs_keys) == 16
    assert unique_elements == 909_124_116
    assert not any("rotary_emb" in name for name, _ in base_unet_on_meta.named_parameters())


def test_base_config_is_default(base_unet_on_meta):
    with torch.device("meta"):
        default = LaVieUNet3DConditionModel()
    expected = read_config("base_unet_config.json")

    for key, value in expected.items():
        actual = default.config[key]
        assert (list(actual) if isinstance(actual, tuple) else actual) == value, key


def test_base_2d_keys_match_diffusers_unet2d(base_unet_on_meta):
    with torch.device("meta"):
        unet2d = UNet2DConditionModel(cross_attention_dim=768)
    shapes_2d = {key: tuple(tensor.shape) for key, tensor in unet2d.state_dict().items()}
    shapes_3d = {
        key: tuple(tensor.shape)
        for key, tensor in base_unet_on_meta.state_dict().items()
        if "_temp" not in key
    }

    assert len(shapes_2d) == 686
    assert shapes_3d == shapes_2d


# --- Golden outputs of LaVie's code ----------------------------------------------------------


@pytest.mark.parametrize("case", ["a", "b"])
def test_tiny_unet_matches_golden(golden, case):
    model = tiny_unet()
    with torch.no_grad():
        out = model(
            golden[f"{case}.sample"],
            golden[f"{case}.timestep"],
            encoder_hidden_states=golden[f"{case}.encoder_hidden_states"],
        ).sample

    torch.testing.assert_close(out, golden[f"{case}.out"], atol=ATOL, rtol=RTOL)


def test_tiny_unet_intermediates_match_golden(golden):
    model = tiny_unet()
    captured = {}

    def capture(name):
        def hook(module, inputs, output):
            # Down blocks return (hidden_states, skip connections).
            captured[name] = output[0] if isinstance(output, tuple) else output

        return hook

    model.time_embedding.register_forward_hook(capture("time_embedding"))
    model.mid_block.register_forward_hook(capture("mid_block"))
    for i, block in enumerate(model.down_blocks):
        block.register_forward_hook(capture(f"down_blocks.{i}"))
    for i, block in enumerate(model.up_blocks):
        block.register_forward_hook(capture(f"up_blocks.{i}"))
    with torch.no_grad():
        model(golden["a.sample"], golden["a.timestep"], golden["a.encoder_hidden_states"])

    names = sorted(key.removeprefix("a.intermediate.") for key in golden if key.startswith("a.intermediate."))
    assert names == [
        "down_blocks.0",
        "down_blocks.1",
        "down_blocks.2",
        "down_blocks.3",
        "mid_block",
        "time_embedding",
        "up_blocks.0",
        "up_blocks.1",
    ]
    for name in names:
        torch.testing.assert_close(
            captured[name],
            golden[f"a.intermediate.{name}"],
            atol=ATOL,
            rtol=RTOL,
            msg=lambda message, name=name: f"{name}: {message}",
        )


def test_transformer_wrapper_matches_golden():
    config = json.loads((DATA / "tiny_transformer3d_config.json").read_text())
    golden = load_file(DATA / "golden_transformer3d.safetensors")
    model = LaVieTransformer3DModel(
        num_attention_heads=config["num_attention_heads"],
        attention_head_dim=config["attention_head_dim"],
        in_channels=config["in_channels"],
        cross_attention_dim=config["cross_attention_dim"],
        rotary_emb=RotaryEmbedding(config["rotary_dim"]),
        num_layers=config["num_layers"],
        norm_num_groups=config["norm_num_groups"],
    )
    model.load_state_dict(load_file(DATA / "tiny_transformer3d.safetensors"), strict=True)
    with torch.no_grad():
        out = model.eval()(golden["hidden_states"], golden["encoder_hidden_states"])

    torch.testing.assert_close(out, golden["out"], atol=ATOL, rtol=RTOL)


def test_rotary_freqs_equal_stored_values():
    stored = load_file(DATA / "tiny_unet.safetensors")
    freqs = [tensor for key, tensor in stored.items() if key.endswith("rotary_emb.freqs")]

    assert len(freqs) == 10
    for tensor in freqs:
        assert torch.equal(RotaryEmbedding().freqs, tensor)


def test_relative_position_buckets():
    bias = RelativePositionBias(heads=1)
    distance = torch.arange(16)
    expected = torch.tensor([0, 1, 2, 3, 4, 5, 6, 7, 8, 8, 9, 9, 10, 10, 11, 11])

    assert torch.equal(bias.bucket(distance), expected)
    assert torch.equal(bias.bucket(-distance[1:]), 16 + expected[1:])
    assert bias.bucket(torch.tensor([1000])).item() == 15


def test_rotary_rotates_interleaved_pairs():
    rotary = RotaryEmbedding(4)
    x = torch.zeros(2, 6)  # frames 0 and 1, head width 6: 4 rotated channels, 2 passed through
    x[:, 0] = 1.0
    x[:, 4:] = 3.0
    out = rotary(x)

    angle = rotary.freqs[0]  # frame 1, channel pair 0
    torch.testing.assert_close(out[0], x[0])
    torch.testing.assert_close(out[1, :2], torch.stack([angle.cos(), angle.sin()]))
    torch.testing.assert_close(out[1, 2:], x[1, 2:])


# --- Model behaviour -------------------------------------------------------------------------


def test_timestep_forms_agree(golden):
    model = tiny_unet()
    sample, text = golden["a.sample"], golden["a.encoder_hidden_states"]
    with torch.no_grad():
        outputs = [model(sample, t, text).sample for t in (980, torch.tensor(980), torch.tensor([980]))]

    torch.testing.assert_close(outputs[1], outputs[0], atol=0, rtol=0)
    torch.testing.assert_close(outputs[2], outputs[0], atol=0, rtol=0)


def test_unet_keeps_size_not_multiple_of_8():
    model = tiny_unet()
    sample = random_video(0, (1, 4, 3, 12, 20))
    with torch.no_grad():
        out = model(sample, 500, random_video(1, (1, 77, 48))).sample

    assert out.shape == sample.shape


def test_unet_rejects_wrong_text_batch():
    model = tiny_unet()
    with pytest.raises(ValueError, match="one text embedding per video"):
        model(random_video(0, (2, 4, 2, 8, 8)), 10, random_video(1, (1, 77, 48)))


def test_unet_rejects_4d_sample():
    model = tiny_unet()
    with pytest.raises(ValueError, match="frames"):
        model(random_video(0, (2, 4, 8, 8)), 10, random_video(1, (2, 77, 48)))


def test_unet_rejects_unsupported_config():
    with pytest.raises(ValueError, match="use_first_frame"):
        LaVieUNet3DConditionModel(**{**read_config("tiny_config.json"), "use_first_frame": True})


def test_gradient_checkpointing_same_gradients(golden):
    sample = golden["a.sample"][:, :, :2]
    text = golden["a.encoder_hidden_states"]
    gradients = []
    for checkpointing in (False, True):
        model = tiny_unet()
        if checkpointing:
            model.enable_gradient_checkpointing()
        model(sample, 500, text).sample.square().mean().backward()
        gradients.append({name: p.grad for name, p in model.named_parameters()})

    assert gradients[0].keys() == gradients[1].keys()
    for name in gradients[0]:
        torch.testing.assert_close(
            gradients[1][name], gradients[0][name], msg=lambda message, name=name: f"{name}: {message}"
        )


# --- Saving and loading ----------------------------------------------------------------------


def test_save_pretrained_round_trip(tmp_path, golden):
    model = tiny_unet()
    model.save_pretrained(tmp_path, safe_serialization=True)
    reloaded = LaVieUNet3DConditionModel.from_pretrained(tmp_path).eval()
    rotary_modules = {
        id(module)
        for name, module in reloaded.named_modules(remove_duplicate=False)
        if name.endswith("rotary_emb")
    }
    with torch.no_grad():
        out = reloaded(golden["a.sample"], golden["a.timestep"], golden["a.encoder_hidden_states"]).sample

    assert (tmp_path / "diffusion_pytorch_model.safetensors").is_file()
    assert len(rotary_modules) == 1
    torch.testing.assert_close(out, golden["a.out"], atol=ATOL, rtol=RTOL)


@pytest.mark.parametrize("with_ema", [True, False])
def test_load_lavie_checkpoint(tmp_path, with_ema):
    state_dict = load_file(DATA / "tiny_unet.safetensors")
    checkpoint = {"ema": state_dict, "model": {}, "opt": {}} if with_ema else state_dict
    path = tmp_path / "lavie_tiny.pt"
    torch.save(checkpoint, path)

    loaded = load_lavie_checkpoint(path)

    assert loaded.keys() == state_dict.keys()
    for key, tensor in state_dict.items():
        assert torch.equal(loaded[key], tensor), key


class _WriteMarkerOnLoad:
    """Pickles to a call of `Path.touch`, so unpickling it without restrictions creates a file."""

    def __init__(self, marker: pathlib.Path):
        self.marker = marker

    def __reduce__(self):
        return (pathlib.Path.touch, (self.marker,))


def test_load_lavie_checkpoint_rejects_code(tmp_path):
    path = tmp_path / "malicious.pt"
    marker = tmp_path / "code_ran"
    torch.save({"ema": {"conv_in.weight": torch.zeros(1)}, "payload": _WriteMarkerOnLoad(marker)}, path)

    with pytest.raises(pickle.UnpicklingError, match="Weights only load failed"):
        load_lavie_checkpoint(path)
    assert not marker.exists()

    # The payload is live: an unrestricted load runs it.
    torch.load(path, weights_only=False)
    assert marker.exists()


def test_missing_rotary_freqs_are_filled(golden):
    state_dict = {
        key: tensor
        for key, tensor in load_file(DATA / "tiny_unet.safetensors").items()
        if not key.endswith("rotary_emb.freqs")
    }
    model = lavie_unet_from_state_dict(state_dict, read_config("tiny_config.json")).eval()
    with torch.no_grad():
        out = model(golden["a.sample"], golden["a.timestep"], golden["a.encoder_hidden_states"]).sample

    torch.testing.assert_close(out, golden["a.out"], atol=ATOL, rtol=RTOL)


def test_unequal_rotary_freqs_rejected():
    state_dict = load_file(DATA / "tiny_unet.safetensors")
    key = next(key for key in state_dict if key.endswith("rotary_emb.freqs"))
    state_dict[key] = state_dict[key] * 2

    with pytest.raises(ValueError, match="all rotary_emb.freqs copies must be equal"):
        lavie_unet_from_state_dict(state_dict, read_config("tiny_config.json"))


def test_base_checkpoint_keys_load_strictly(base_unet_on_meta):
    # A full-size state dict of meta tensors takes the place of lavie_base.pt. The freqs entries are
    # left out because meta tensors cannot be compared, so they are filled in by the loader.
    state_dict = {
        key: tensor
        for key, tensor in base_unet_on_meta.state_dict().items()
        if not key.endswith("rotary_emb.freqs")
    }
    model = lavie_unet_from_state_dict(state_dict)
    freqs_keys = [key for key in model.state_dict() if key.endswith("rotary_emb.freqs")]

    assert len(state_dict) == 830 - 16
    assert len(freqs_keys) == 16
    assert torch.equal(model.state_dict()[freqs_keys[0]], RotaryEmbedding().freqs)


def test_convert_script_round_trip(tmp_path, golden):
    checkpoint = tmp_path / "lavie_tiny.pt"
    torch.save({"ema": load_file(DATA / "tiny_unet.safetensors")}, checkpoint)
    script_path = REPO / "scripts" / "convert_lavie_checkpoint.py"
    spec = importlib.util.spec_from_file_location("convert_lavie_checkpoint", script_path)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)

    script.main([str(checkpoint), str(tmp_path / "unet"), "--config", str(DATA / "tiny_config.json")])
    converted = LaVieUNet3DConditionModel.from_pretrained(tmp_path / "unet").eval()
    with torch.no_grad():
        inputs = (golden["b.sample"], golden["b.timestep"], golden["b.encoder_hidden_states"])
        expected = tiny_unet()(*inputs).sample
        out = converted(*inputs).sample

    assert (tmp_path / "unet" / "diffusion_pytorch_model.safetensors").is_file()
    torch.testing.assert_close(out, expected, atol=0, rtol=0)


# --- Inflating a 2-D UNet --------------------------------------------------------------------


def tiny_unet2d() -> UNet2DConditionModel:
    config = read_config("tiny_config.json")
    torch.manual_seed(0)
    return UNet2DConditionModel(
        sample_size=8,
        block_out_channels=config["block_out_channels"],
        layers_per_block=config["layers_per_block"],
        norm_num_groups=config["norm_num_groups"],
        cross_attention_dim=config["cross_attention_dim"],
        attention_head_dim=config["attention_head_dim"],
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
    ).eval()


def test_from_unet2d_copies_2d_weights():
    unet2d = tiny_unet2d()
    model = LaVieUNet3DConditionModel.from_unet2d(unet2d)
    state_2d = unet2d.state_dict()
    state_3d = model.state_dict()
    temporal = [key for key in state_3d if "_temp" in key]

    assert sorted(set(state_3d) - set(temporal)) == sorted(state_2d)
    for key, tensor in state_2d.items():
        assert torch.equal(state_3d[key], tensor), key
    assert len(temporal) == 10 * 9
    for key in temporal:
        if "attn_temp.to_out.0" in key:
            assert not state_3d[key].any(), key
    assert any(state_3d[key].any() for key in temporal if "attn_temp.to_q" in key)


def test_from_unet2d_config_matches_tiny_lavie():
    model = LaVieUNet3DConditionModel.from_unet2d(tiny_unet2d())
    expected = read_config("tiny_config.json")

    for key, value in expected.items():
        actual = model.config[key]
        assert (list(actual) if isinstance(actual, tuple) else actual) == value, key


def test_from_unet2d_single_frames_match_2d():
    unet2d = tiny_unet2d()
    model = LaVieUNet3DConditionModel.from_unet2d(unet2d).eval()
    images = random_video(0, (2, 4, 8, 8))
    text = random_video(1, (2, 77, 48))
    timesteps = torch.tensor([999, 37])
    with torch.no_grad():
        expected = unet2d(images, timesteps, text).sample
        out = model(images[:, :, None], timesteps, text).sample[:, :, 0]

    torch.testing.assert_close(out, expected, atol=ATOL, rtol=RTOL)


def test_from_unet2d_repeated_frames_match_2d():
    # ResNet GroupNorms pool over frames, which equals per-frame statistics only when all frames
    # are equal, so the inflated model reproduces the image model exactly on a still video.
    unet2d = tiny_unet2d()
    model = LaVieUNet3DConditionModel.from_unet2d(unet2d).eval()
    image = random_video(0, (1, 4, 8, 8))
    text = random_video(1, (1, 77, 48))
    with torch.no_grad():
        expected = unet2d(image, 500, text).sample
        out = model(image[:, :, None].expand(-1, -1, 5, -1, -1), 500, text).sample

    for frame in range(5):
        torch.testing.assert_close(out[:, :, frame], expected, atol=ATOL, rtol=RTOL)


def test_from_unet2d_rejects_unsupported():
    config = dict(tiny_unet2d().config)
    config["transformer_layers_per_block"] = 2
    with torch.device("meta"):
        unet2d = UNet2DConditionModel(**{k: v for k, v in config.items() if not k.startswith("_")})

    with pytest.raises(ValueError, match="transformer_layers_per_block"):
        LaVieUNet3DConditionModel.from_unet2d(unet2d)
