"""scripts/parity_study.py on the tiny synthetic data set: real (short) training runs, resumed
studies that read what is finished, and a study that refuses to mix recipes."""

from script_loader import load_script

from engines.artifacts import read_json
from engines.schemas import PARITY_STUDY

QUICK = ["--dataset", "synthetic", "--archs", "resnet20", "--norms", "mimic,bn", "--seeds", "0",
         "--max-steps-per-epoch", "2"]  # fmt: skip


def test_a_study_trains_every_point_once_and_tabulates_it(tmp_path, capsys):
    study = load_script("parity_study")
    out = tmp_path / "parity"
    assert study.main([*QUICK, "--epochs", "2,1", "--out", str(out)]) == 0
    log = capsys.readouterr().out
    # Shortest schedule first; every run started once.
    starts = [line.split("]")[0] + "]" for line in log.splitlines() if line.endswith("] started")]
    assert starts == ["[1/4 resnet20 mimic 1 epochs seed 0]", "[2/4 resnet20 bn 1 epochs seed 0]",
                      "[3/4 resnet20 mimic 2 epochs seed 0]", "[4/4 resnet20 bn 2 epochs seed 0]"]  # fmt: skip

    rows = read_json(out / "parity.json", *PARITY_STUDY)["rows"]
    assert [(r["norm"], r["epochs"]) for r in rows] == [("mimic", 1.0), ("bn", 1.0), ("mimic", 2.0), ("bn", 2.0)]
    for row in rows:
        assert len(row["epoch_accuracies"]) == row["epochs"]  # one test accuracy per epoch
        assert row["final_accuracy"] == row["epoch_accuracies"][-1] <= row["best_accuracy"]
    two_epochs_mimic = rows[2]
    table = (out / "parity.md").read_text()
    difference = 100 * (two_epochs_mimic["final_accuracy"] - rows[3]["final_accuracy"])
    assert f"| resnet20 | 2 | {100 * two_epochs_mimic['final_accuracy']:.2f} (" in table
    assert table.splitlines()[3].endswith(f"| {difference:+.2f} |")

    # Started again: nothing is trained twice, the same table comes out.
    assert study.main([*QUICK, "--epochs", "1,2", "--out", str(out)]) == 0
    log = capsys.readouterr().out
    assert "started" not in log and log.count("done before, read") == 4
    assert (out / "parity.md").read_text() == table


def test_a_run_trained_with_another_recipe_is_refused_not_mixed_in(tmp_path, capsys):
    study = load_script("parity_study")
    out = tmp_path / "parity"
    assert study.main([*QUICK, "--norms", "mimic", "--epochs", "1", "--out", str(out)]) == 0
    capsys.readouterr()
    assert study.main([*QUICK, "--norms", "mimic", "--epochs", "1", "--augment", "--out", str(out)]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "trained with another recipe: augment False (asked True)" in error


def test_misspelt_names_fail_before_any_training(tmp_path, capsys):
    study = load_script("parity_study")
    assert study.main(["--archs", "resnet2", "--out", str(tmp_path / "p")]) == 2
    assert "unknown arch or norm: resnet2" in capsys.readouterr().err
    assert not (tmp_path / "p").exists()


def test_the_summary_puts_each_norm_beside_bn():
    study = load_script("parity_study")
    rows = [{"arch": "resnet20", "epochs": 5.0, "norm": norm, "seed": seed, "final_accuracy": accuracy}
            for norm, seed, accuracy in (("bn", 0, 0.91), ("bn", 1, 0.92), ("mimic", 1, 0.905), ("mimic", 0, 0.90),
                                         ("bn-revisited", 0, 0.93))]  # fmt: skip
    lines = study.summarize(rows).splitlines()
    assert lines[0] == "| arch | epochs | mimic % | bn % | bn-revisited % | mimic - bn | bn-revisited - bn |"
    assert lines[2] == ("| resnet20 | 5 | 90.25 (s0 90.00, s1 90.50) | 91.50 (s0 91.00, s1 92.00) | 93.00 (s0 93.00) "
                        "| -1.25 | +1.50 |")  # fmt: skip
