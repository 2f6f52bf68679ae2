"""Quality gates of the committed toy-world weights.

The full gates are slow (several minutes on 2 CPU cores). The default suite runs the gate command's
sampling options on a few prompts.
"""

import numpy as np
import pytest

from t2v_unlearn.toyworld.gates import (
    GATES,
    _summarise,
    format_table,
    gate_prompts,
    generation_rates,
    main,
    measure_gates,
    replace_card_gates,
    stage_timeline,
    write_model_card,
)


def test_generation_rates_use_the_requested_seeds():
    from t2v_unlearn.backends.toyworld import build_toyworld_backend
    from t2v_unlearn.judges.detector import ToyWorldDetectorJudge

    backend = build_toyworld_backend(image_kwargs={"num_inference_steps": 4})
    judge = ToyWorldDetectorJudge()
    prompts = ["a Snoopy walking in the park at sunrise", "a cat climbing on Tokyo Tower"]
    result = generation_rates(backend, judge, prompts, image_seeds=2, video_seeds=0, first_seed=7)
    assert result["num_images"] == 4
    assert "videos" not in result
    images = backend.generate_images([p for p in prompts for _ in range(2)], [7, 8, 7, 8])
    hits = judge.detect_all(images)
    for index, row in enumerate(result["per_prompt"]):
        for key, share in row["images_detected"].items():
            assert share == pytest.approx(float(np.mean(hits[key][2 * index:2 * index + 2]))), (row["prompt"], key)
    assert result["per_prompt"][0]["named"] == ["park", "snoopy"]


def test_images_only_gates_print_a_table(monkeypatch):
    import t2v_unlearn.toyworld.gates as gates_module

    monkeypatch.setattr(gates_module, "gate_prompts", lambda concept_dir=None: gate_prompts(concept_dir)[:3])
    result = measure_gates(quick=True, samples={"heldout_renders": 60, "image_seeds": 1, "video_seeds": 0,
                                                "first_seed": 100})
    assert "videos_summary" not in result
    assert "generation_lavie" not in result
    table = format_table(result)
    assert "| concept | detector accuracy | images named | images unnamed |" in table
    assert "videos named" not in table
    assert "s per image" in table


def test_frame_counts_not_reported_as_gate():
    from t2v_unlearn.toyworld.grammar import concept_keys

    keys = concept_keys()
    frames = {key: {"named": 0.5, "named_count": 4, "unnamed": 0.0} for key in keys}
    videos = {key: {"named": 1.0, "named_count": 2, "unnamed": 0.0} for key in keys}
    result = {"detector_accuracy": dict.fromkeys(keys, 1.0), "detector_passed": True, "torch_threads": 2,
              "generation": {"videos": videos, "video_frames": frames, "seconds_per_video": 1.0},
              "videos_summary": _summarise(videos), "video_frames_summary": _summarise(frames)}
    summary = format_table(result).splitlines()
    frame_line = next(line for line in summary if line.startswith("- video_frames:"))
    video_line = next(line for line in summary if line.startswith("- videos:"))
    assert frame_line.endswith("per frame, not a gate")
    assert video_line.endswith("PASS")


def test_gate_command_refuses_no_generations(capsys):
    with pytest.raises(SystemExit):
        main(["--image-seeds", "0", "--video-seeds", "0"])
    assert "image_seeds and video_seeds are both 0" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--first-seed", "-1"])
    assert "--first-seed is -1" in capsys.readouterr().err


def test_stage_timeline_counts_parallel_stages_once():
    stages = [{"finished_at": 100.0, "seconds": 100.0}, {"finished_at": 80.0, "seconds": 30.0},
              {"finished_at": 160.0, "seconds": 50.0}]
    busy, span = stage_timeline(stages)
    assert busy == pytest.approx(150.0)
    assert span == pytest.approx(160.0)


def test_model_card_reports_resumed_training_gaps(tmp_path):
    from t2v_unlearn.toyworld.train import load_train_config

    hour = 3600.0
    metrics = {"vae": {"seconds": 600.0, "finished_at": 600.0},
               "unet": {"seconds": 1200.0, "finished_at": 5 * hour}}
    write_model_card(tmp_path / "MODEL_CARD.md", load_train_config(), metrics, _fake_gates(1))
    card = (tmp_path / "MODEL_CARD.md").read_text()
    assert "at least one stage was running for 30 minutes" in card
    assert "separate sittings, 300 minutes" in card


def _fake_gates(image_seeds: int, first_seed: int = 0) -> dict:
    from t2v_unlearn.toyworld.grammar import concept_keys

    keys = concept_keys()
    return {"samples": {"heldout_renders": 10, "image_seeds": image_seeds, "video_seeds": 0, "first_seed": first_seed},
            "num_prompts": 1, "detector_accuracy": dict.fromkeys(keys, 1.0), "detector_passed": True,
            "torch_threads": 2,
            "generation": {"images": {key: {"named": 1.0, "named_count": 1, "unnamed": 0.0} for key in keys},
                           "seconds_per_image": 0.1}}


def test_replace_card_gates_keeps_training(tmp_path):
    from t2v_unlearn.toyworld.train import load_train_config

    card = tmp_path / "MODEL_CARD.md"
    write_model_card(card, load_train_config(), {"vae": {"seconds": 60.0, "finished_at": 60.0}}, _fake_gates(4))
    training_part = card.read_text().split("## Quality gates")[0]
    assert "with 4 image seeds" in card.read_text()

    replace_card_gates(card, _fake_gates(8, first_seed=100))
    text = card.read_text()
    assert text.startswith(training_part)
    assert text.count("## Quality gates") == 1
    assert "with 8 image seeds" in text
    assert "from seed 100 on" in text
    assert "with 4 image seeds" not in text


def test_replace_card_gates_without_section(tmp_path):
    with pytest.raises(FileNotFoundError, match="make toyworld"):
        replace_card_gates(tmp_path / "MODEL_CARD.md", _fake_gates(4))
    card = tmp_path / "MODEL_CARD.md"
    card.write_text("# A card without gates\n")
    with pytest.raises(ValueError, match="no '## Quality gates' section"):
        replace_card_gates(card, _fake_gates(4))
    assert card.read_text() == "# A card without gates\n"


def test_gate_command_rejects_quick_card(capsys):
    with pytest.raises(SystemExit):
        main(["--quick", "--write-card"])
    assert "drop --quick" in capsys.readouterr().err


@pytest.fixture(scope="module")
def gates():
    return measure_gates()


@pytest.mark.slow
def test_detector_gate(gates):
    for key, accuracy in gates["detector_accuracy"].items():
        assert accuracy >= GATES["detector_accuracy"], key


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["images", "videos"])
def test_named_concepts_are_generated(gates, kind):
    for key, rates in gates["generation"][kind].items():
        if rates["named"] is not None:
            assert rates["named"] >= GATES["named_detected"], key


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["images", "videos"])
def test_unnamed_concepts_are_absent(gates, kind):
    for key, rates in gates["generation"][kind].items():
        if rates["unnamed"] is not None:
            assert rates["unnamed"] <= GATES["unnamed_detected"], key
