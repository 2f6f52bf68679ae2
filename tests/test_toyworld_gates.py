"""Full quality gates of the committed toy-world weights (slow: several minutes on 2 CPU cores)."""

import pytest

from t2v_unlearn.toyworld.gates import GATES, measure_gates


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
