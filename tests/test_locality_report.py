import json

import pytest

from t2v_unlearn.analysis.locality import collect_runs, main, mark_pareto_front


def make_run(root, name, concept, lr, target, other, extra="", backend="toyworld", paraphrase=None, change=None):
    folder = root / name
    (folder / ".hydra").mkdir(parents=True)
    (folder / ".hydra" / "overrides.yaml").write_text(f"- concept={concept}\n- optim.lr={lr}\n- logger=none\n{extra}")
    (folder / "text_encoder").mkdir()
    weight = 3.0 if "retain.weight=3" in extra else 0.0
    provenance = {"concepts": [concept], "method": "paper", "backend": backend, "optimizer": {"lr": lr},
                  "retain": {"weight": weight}, "optimizer_steps": 10}
    (folder / "text_encoder" / "unlearning.json").write_text(json.dumps(provenance))
    metrics = {"video/target_rate_after": target, "video/other_rate_after": other,
               "video/target_rate_before": 1.0, "video/other_rate_before": 1.0}
    if paraphrase is not None:
        metrics.update({"video/paraphrase_rate_before": 1.0, "video/paraphrase_rate_after": paraphrase})
    if change is not None:
        metrics.update({"encoder/hidden_change_target": change[0], "encoder/hidden_change_other": change[1]})
    (folder / "metrics.json").write_text(json.dumps(metrics))


def test_pareto_front_per_concept(tmp_path):
    make_run(tmp_path, "0", "eiffel", 1e-5, 1.0, 1.0)
    make_run(tmp_path, "1", "eiffel", 1e-4, 0.1, 0.95)
    make_run(tmp_path, "2", "eiffel", 3e-4, 0.1, 0.5)   # dominated by run 1
    make_run(tmp_path, "3", "eiffel", 1e-3, 0.0, 0.1)
    make_run(tmp_path, "4", "snoopy", 1e-3, 0.5, 0.5)   # alone in its group
    make_run(tmp_path, "5", "eiffel", 1e-3, 0.5, 0.5, backend="toyworld_lavie")  # another model: own front
    runs = {r.folder.rsplit("/", 1)[-1]: r for r in mark_pareto_front(collect_runs(tmp_path))}
    assert runs["0"].pareto
    assert runs["1"].pareto
    assert not runs["2"].pareto
    assert runs["3"].pareto
    assert runs["4"].pareto
    assert runs["5"].pareto and runs["5"].group == "eiffel (toyworld_lavie)"
    assert runs["1"].overrides["optim.lr"] == "0.0001"


def test_report_files_written(tmp_path):
    make_run(tmp_path / "sweep", "0", "eiffel", 1e-5, 1.0, 1.0)
    make_run(tmp_path / "sweep", "1", "eiffel", 1e-4, 0.2, 0.9, extra="- retain.weight=3\n")
    main([str(tmp_path / "sweep"), "--out", str(tmp_path / "report"), "--command", "python train.py -m ..."])
    table = (tmp_path / "report" / "locality.md").read_text()
    # The settings each run used come from its unlearning.json; constant overrides get no column.
    assert "| eiffel (toyworld) | paper | 0.0001 | 3 | 10 | 1.00 | 0.20 | 1.00 | 0.90 | yes |" in table
    assert "| eiffel (toyworld) | paper | 1e-05 | 0 | 10 | 1.00 | 1.00 | 1.00 | 1.00 | yes |" in table
    assert "logger" not in table
    assert "python train.py -m ..." in table
    assert (tmp_path / "report" / "locality_eiffel__toyworld.png").stat().st_size > 1000
    assert len(json.loads((tmp_path / "report" / "locality.json").read_text())) == 2


def test_report_adds_paraphrase_columns(tmp_path):
    make_run(tmp_path / "sweep", "0", "eiffel", 1e-2, 0.0, 1.0, paraphrase=0.75)
    make_run(tmp_path / "sweep", "1", "eiffel", 1e-3, 0.0, 1.0)   # a run from before eval.paraphrases
    main([str(tmp_path / "sweep"), "--out", str(tmp_path / "report")])
    table = (tmp_path / "report" / "locality.md").read_text()
    assert "| paraphrase before | paraphrase after | Pareto |" in table
    assert "| 1.00 | 0.00 | 1.00 | 1.00 | 1.00 | 0.75 | yes |" in table
    assert "| 1.00 | 0.00 | 1.00 | 1.00 |  |  | yes |" in table


def test_missing_sweep_folder_is_named(tmp_path):
    with pytest.raises(SystemExit, match="does not exist"):
        main([str(tmp_path / "nowhere"), "--out", str(tmp_path / "report")])


def test_report_adds_encoder_change_columns(tmp_path):
    make_run(tmp_path / "sweep", "0", "eiffel", 1e-5, 1.0, 1.0, change=(0.0101, 0.00577))
    make_run(tmp_path / "sweep", "1", "eiffel", 1e-3, 0.0, 0.3)   # a run from before the encoder metrics
    main([str(tmp_path / "sweep"), "--out", str(tmp_path / "report")])
    table = (tmp_path / "report" / "locality.md").read_text()
    assert "| hidden change target | hidden change other | Pareto |" in table
    assert "| 1.00 | 1.00 | 1.00 | 1.00 | 0.0101 | 0.00577 | yes |" in table
    assert "| 1.00 | 0.00 | 1.00 | 0.30 |  |  | yes |" in table
