import json

import torch
from transformers import CLIPTextModel

from t2v_unlearn.export import PROVENANCE_FILE, save_text_encoder


def test_saved_encoder_reloads_identically(tiny_backend, tmp_path):
    encoder = tiny_backend.text_encoder
    with torch.no_grad():
        encoder.get_input_embeddings().weight.mul_(1.5)  # plays the part of an unlearned encoder
    save_text_encoder(encoder, tmp_path / "text_encoder", {"concepts": ["eiffel"], "shots": 2})

    assert (tmp_path / "text_encoder" / "model.safetensors").is_file()
    reloaded = CLIPTextModel.from_pretrained(tmp_path / "text_encoder").eval()
    ids = tiny_backend.tokenizer(["a photo of the Eiffel Tower"], padding="max_length", max_length=77,
                                 return_tensors="pt").input_ids
    with torch.no_grad():
        torch.testing.assert_close(reloaded(ids)[0], encoder(ids)[0], rtol=0, atol=0)

    provenance = json.loads((tmp_path / "text_encoder" / PROVENANCE_FILE).read_text())
    assert provenance["concepts"] == ["eiffel"]
    assert "torch" in provenance["versions"]


def test_resave_replaces_folder_completely(tiny_backend, tmp_path):
    target = tmp_path / "text_encoder"
    save_text_encoder(tiny_backend.text_encoder, target, {"epoch": 1})
    (target / "stale.txt").write_text("left from an older save")
    save_text_encoder(tiny_backend.text_encoder, target, {"epoch": 2})
    assert not (target / "stale.txt").exists()
    assert json.loads((target / PROVENANCE_FILE).read_text())["epoch"] == 2
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
