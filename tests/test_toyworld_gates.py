"""Quality gates of the committed toy-world weights.

The full gates are slow (several minutes on 2 CPU cores). The default suite runs the gate command's
sampling options on a few prompts.
"""

import numpy as np
import pytest

from t2v_unlearn.toyworld.gates import (
    GATES,
    format_table,
    gate_prompts,
    generation_rates,
    main,
    measure_gates,
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


def test_gate_command_refuses_no_generations(capsys):
    with pytest.raises(SystemExit):
        main(["--image-seeds", "0", "--video-seeds", "0"])
    assert "image_seeds and video_seeds are both 0" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--first-seed", "-1"])
    assert "--first-seed is -1" in capsys.readouterr().err


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
