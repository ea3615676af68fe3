"""scripts/parity_study.py on the tiny synthetic data set: real (short) training runs, resumed
studies that read what is finished, and a study that refuses to mix recipes."""

import math
from dataclasses import asdict
from pathlib import Path

from script_loader import load_script

from engines.artifacts import read_json, write_json
from engines.cpu import cpu_kind
from engines.schemas import PARITY_RECORD, PARITY_RUN_HOST, PARITY_STUDY

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


def test_the_fit_table_gives_each_norms_last_epoch_training_accuracy_averaged_over_seeds():
    study = load_script("parity_study")
    rows = [{"arch": "resnet20", "epochs": 5.0, "norm": norm, "seed": seed, "epoch_train_accuracies": [0.5, last]}
            for norm, seed, last in (("bn", 0, 0.95), ("bn", 1, 0.96), ("mimic", 0, 0.93))]  # fmt: skip
    lines = study.summarize_fit(rows).splitlines()
    assert lines[0] == "| arch | epochs | mimic training % | bn training % |"
    assert lines[2] == "| resnet20 | 5 | 93.00 | 95.50 |"


def test_the_curves_run_through_each_norms_seed_means_by_schedule_length(tmp_path):
    study = load_script("parity_study")
    rows = [{"arch": "resnet20", "epochs": epochs, "norm": norm, "seed": seed, "final_accuracy": accuracy}
            for epochs, norm, seed, accuracy in ((5.0, "bn", 1, 0.92), (1.8, "bn", 0, 0.90), (5.0, "bn", 0, 0.91),
                                                 (1.8, "mimic", 0, 0.89))]  # fmt: skip
    curves = study.curves(rows)
    assert curves == {"resnet20": {"bn": [(1.8, 90.0, [90.0]), (5.0, 91.5, [91.0, 92.0])],
                                   "mimic": [(1.8, 89.0, [89.0])]}}  # fmt: skip
    study.plot_curves(rows, tmp_path / "parity.png")
    assert (tmp_path / "parity.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_t_quantiles_match_the_published_table():
    study = load_script("parity_study")
    table = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 6: 2.447, 10: 2.228, 30: 2.042, 120: 1.980}
    for df, quantile in table.items():
        assert abs(study.t_quantile_975(df) - quantile) < 0.004, df


def test_the_record_keeps_finished_runs_with_their_cpu_kind_and_tabulates_like_the_run_directories(tmp_path, capsys):
    study = load_script("parity_study")
    out, record = tmp_path / "parity", tmp_path / "parity_runs.json"
    assert study.main([*QUICK, "--epochs", "1", "--out", str(out), "--record", str(record)]) == 0
    runs = read_json(record, *PARITY_RECORD)["runs"]
    assert [(r["norm"], r["epochs"], r["seed"]) for r in runs] == [("bn", 1.0, 0), ("mimic", 1.0, 0)]
    assert {r["cpu"] for r in runs} == {cpu_kind()} and all(r["recipe"]["dataset"] == "synthetic" for r in runs)
    assert all(r["epoch_accuracies"] == [r["final_accuracy"]] and len(r["epoch_train_accuracies"]) == 1 for r in runs)
    # Recorded again (resumed study): merged, not duplicated.
    assert study.main([*QUICK, "--epochs", "1", "--out", str(out), "--record", str(record)]) == 0
    assert read_json(record, *PARITY_RECORD)["runs"] == runs

    # Another machine, no run directories: the record alone gives the same table.
    elsewhere = tmp_path / "elsewhere"
    assert study.main([*QUICK, "--epochs", "1", "--out", str(elsewhere), "--from-record", str(record)]) == 0
    assert (elsewhere / "parity.md").read_text() == (out / "parity.md").read_text()
    assert not (elsewhere / "resnet20").exists()  # nothing was trained
    capsys.readouterr()

    # Runs of another CPU kind are tabulated apart, never beside this machine's.
    runs[0]["cpu"] = "Other CPU, x86_64 family 6 model 85, avx2 avx512f"
    write_json(record, *PARITY_RECORD, {"runs": runs})
    assert study.main([*QUICK, "--epochs", "1", "--out", str(elsewhere), "--from-record", str(record)]) == 0
    assert "bn %" not in (elsewhere / "parity.md").read_text()  # only this machine's MimicNorm run
    other = ["--cpu", runs[0]["cpu"]]
    assert study.main([*QUICK, "--epochs", "1", "--out", str(elsewhere), "--from-record", str(record), *other]) == 0
    assert "mimic %" not in (elsewhere / "parity.md").read_text()
    capsys.readouterr()
    write_json(record, *PARITY_RECORD, {"runs": runs[:1]})
    assert study.main([*QUICK, "--epochs", "1", "--out", str(elsewhere), "--from-record", str(record)]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and f"pass --cpu with one or more of (separated by ';'): {runs[0]['cpu']}" in error


def test_several_cpu_kinds_pool_seed_by_seed_each_seeds_runs_from_one_kind(tmp_path, capsys):
    study = load_script("parity_study")
    out, record = tmp_path / "parity", tmp_path / "parity_runs.json"
    assert study.main([*QUICK, "--epochs", "1", "--out", str(out), "--record", str(record)]) == 0
    here, there = cpu_kind(), "Other CPU, x86_64 family 6 model 85, avx2 avx512f"
    trained = {run["norm"]: run for run in read_json(record, *PARITY_RECORD)["runs"]}

    def run(norm, seed, cpu, accuracy):
        return {**trained[norm], "seed": seed, "cpu": cpu, "final_accuracy": accuracy}

    runs = [run("mimic", 0, here, 0.80), run("bn", 0, here, 0.82),  # seed 0: a whole block here
            run("bn", 0, there, 0.99),  # seed 0 there too, but only BN: left out, not a second draw
            run("mimic", 1, there, 0.70), run("bn", 1, there, 0.74),  # seed 1: only there
            run("mimic", 2, here, 0.60), run("mimic", 2, there, 0.65)]  # a tie: the kind listed first wins
    write_json(record, *PARITY_RECORD, {"runs": runs})
    table = tmp_path / "table"
    argv = [*QUICK, "--seeds", "0,1,2", "--epochs", "1", "--out", str(table), "--from-record", str(record)]
    assert study.main([*argv, "--cpu", f"{there}; {here}"]) == 0
    lines = (table / "parity.md").read_text().splitlines()
    h, t = (dict(zip(sorted([here, there]), "AB", strict=True))[kind] for kind in (here, there))  # letters by name
    # Seed variances 175/3 (mimic: 80, 70, 65) and 32 (bn: 82, 74) pool over 3 df.
    half_width = study.t_quantile_975(3) * math.sqrt((2 * 175 / 3 + 32) / 3) * math.sqrt(1 / 3 + 1 / 2)
    assert lines[2] == (f"| resnet20 | 1 | 71.67 (s0/{h} 80.00, s1/{t} 70.00, s2/{t} 65.00) "
                        f"| 78.00 (s0/{h} 82.00, s1/{t} 74.00) | -6.33 ± {half_width:.2f} |")  # fmt: skip
    assert f"{h} = {here}" in lines[4] and f"{t} = {there}" in lines[4]
    # One kind alone: its runs only, no letters.
    assert study.main([*argv, "--cpu", here]) == 0
    assert (table / "parity.md").read_text().splitlines()[2].startswith("| resnet20 | 1 | 70.00 (s0 80.00, s2 60.00) |")
    capsys.readouterr()


def test_a_run_started_on_another_cpu_kind_is_not_resumed_here(tmp_path, capsys):
    study = load_script("parity_study")
    out = tmp_path / "parity"
    directory = study.run_dir(out, "resnet20", "mimic", 1.0, 0)
    directory.mkdir(parents=True)
    other_host = {"cpu": "Other CPU, x86_64 family 6 model 85", "torch": "2.13.0"}
    write_json(directory / "host.json", *PARITY_RUN_HOST, other_host)
    assert study.main([*QUICK, "--norms", "mimic", "--epochs", "1", "--out", str(out)]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "started on Other CPU, x86_64 family 6 model 85 with torch 2.13.0" in error
    assert not (directory / "train_report.json").exists()


def test_a_run_without_its_cpu_kind_is_not_recorded(tmp_path, capsys):
    study = load_script("parity_study")
    out, record = tmp_path / "parity", tmp_path / "parity_runs.json"
    assert study.main([*QUICK, "--norms", "mimic", "--epochs", "1", "--out", str(out)]) == 0
    (study.run_dir(out, "resnet20", "mimic", 1.0, 0) / "host.json").unlink()  # as trained before host.json existed
    capsys.readouterr()
    assert study.main([*QUICK, "--norms", "mimic", "--epochs", "1", "--out", str(out), "--record", str(record)]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "has no host.json, so the CPU it trained on is unknown" in error
    assert not record.exists()


def test_the_committed_record_tabulates_for_every_cpu_kind_it_holds(tmp_path):
    """docs/parity_runs.json, the study's runs kept in the repository: every run complete, none
    twice, and the tables docs/BENCHMARKS.md quotes rebuilt from it, one CPU kind at a time."""
    study = load_script("parity_study")
    record = Path(__file__).resolve().parent.parent / "docs" / "parity_runs.json"
    runs = read_json(record, *PARITY_RECORD)["runs"]
    assert runs and len({study.record_key(run) for run in runs}) == len(runs)
    for run in runs:
        assert set(run["recipe"]) == {*study.RECIPE_FIELDS, "dataset"} - set(study.IDENTITY_FIELDS)
        assert len(run["epoch_accuracies"]) == len(run["epoch_train_accuracies"]) == math.ceil(run["epochs"])
        assert run["final_accuracy"] == run["epoch_accuracies"][-1] <= run["best_accuracy"]
    for cpu in {run["cpu"] for run in runs}:
        mine = [run for run in runs if run["cpu"] == cpu and run["recipe"]["dataset"] == "fashion-mnist"]
        argv = ["--from-record", str(record), "--cpu", cpu, "--out", str(tmp_path / "table"), "--seeds", "0,1,2",
                "--archs", ",".join({r["arch"] for r in mine}), "--norms", ",".join({r["norm"] for r in mine}),
                "--epochs", ",".join(f"{r['epochs']:g}" for r in mine)]  # fmt: skip
        assert study.main(argv) == 0
        table = (tmp_path / "table" / "parity.md").read_text()
        study_recipe = study.recipe_of(asdict(study.train_config(study.parse_args(argv), "resnet20", "mimic", 1, 0)),
                                       "fashion-mnist")  # fmt: skip
        for run in mine:
            if run["recipe"] == study_recipe:
                assert f"s{run['seed']} {100 * run['final_accuracy']:.2f}" in table
