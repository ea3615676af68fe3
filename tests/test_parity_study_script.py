"""scripts/parity_study.py on the tiny synthetic data set: real (short) training runs, resumed
studies that read what is finished, and a study that refuses to mix recipes."""

import math

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
    assert table.splitlines()[3].endswith(f"| {difference:+.2f} |")  # one seed: no interval
    assert read_json(out / "parity.json", *PARITY_STUDY)["seed_noise"] == {"resnet20": None}

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
    # Another peak lr is another recipe too: its runs need their own --out.
    assert study.main([*QUICK, "--norms", "mimic", "--epochs", "1", "--lr", "0.2", "--out", str(out)]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "trained with another recipe: lr 0.1 (asked 0.2)" in error


def test_misspelt_names_fail_before_any_training(tmp_path, capsys):
    study = load_script("parity_study")
    assert study.main(["--archs", "resnet2", "--out", str(tmp_path / "p")]) == 2
    assert "unknown arch or norm: resnet2" in capsys.readouterr().err
    assert not (tmp_path / "p").exists()


def test_the_summary_puts_each_norm_beside_bn_with_an_interval_from_pooled_seed_noise():
    study = load_script("parity_study")
    rows = [{"arch": "resnet20", "epochs": 5.0, "norm": norm, "seed": seed, "final_accuracy": accuracy}
            for norm, seed, accuracy in (("bn", 0, 0.91), ("bn", 1, 0.92), ("mimic", 1, 0.905), ("mimic", 0, 0.90),
                                         ("bn-revisited", 0, 0.93))]  # fmt: skip
    lines = study.summarize(rows).splitlines()
    assert lines[0] == "| arch | epochs | mimic % | bn % | bn-revisited % | mimic - bn | bn-revisited - bn |"
    # Seed variances 0.5 (bn) and 0.125 (mimic) pool to 0.3125 over 2 df; t(0.975, 2) = 4.303.
    sd = math.sqrt(0.3125)
    mimic_half, revisited_half = 4.303 * sd * math.sqrt(1 / 2 + 1 / 2), 4.303 * sd * math.sqrt(1 + 1 / 2)
    assert lines[2] == ("| resnet20 | 5 | 90.25 (s0 90.00, s1 90.50) | 91.50 (s0 91.00, s1 92.00) | 93.00 (s0 93.00) "
                        f"| -1.25 ± {mimic_half:.2f} | +1.50 ± {revisited_half:.2f} |")  # fmt: skip
    assert "resnet20: sd 0.56 points, 2 df" in lines[4]


def test_a_difference_outside_the_seed_noise_is_bold_and_one_seed_everywhere_gives_no_interval():
    study = load_script("parity_study")
    rows = [{"arch": "resnet20", "epochs": 5.0, "norm": norm, "seed": seed, "final_accuracy": accuracy}
            for norm, seed, accuracy in (("bn", 0, 0.910), ("bn", 1, 0.911), ("mimic", 0, 0.890),
                                         ("mimic", 1, 0.891))]  # fmt: skip
    assert study.summarize(rows).splitlines()[2].endswith("| **-2.00 ± 0.30** |")
    one_seed = study.summarize([row for row in rows if row["seed"] == 0]).splitlines()
    assert one_seed[2].endswith("| -2.00 |") and "resnet20: no point with two seeds" in one_seed[4]


def test_t_quantiles_match_the_published_table():
    study = load_script("parity_study")
    table = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 6: 2.447, 10: 2.228, 30: 2.042, 120: 1.980}
    for df, quantile in table.items():
        assert abs(study.t_quantile_975(df) - quantile) < 0.004, df
