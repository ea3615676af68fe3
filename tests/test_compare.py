"""`compare` on synthetic bench JSONs whose answer is known."""

import json

from synthetic_runs import samples, write_bench, write_run

from mimicnorm_deploy.cli import main


def test_one_run_answers_the_products_questions(tmp_path, capsys):
    run = write_run(tmp_path / "run")
    assert main(["compare", str(run), "--json", str(tmp_path / "c.json")]) == 0
    out = capsys.readouterr().out
    assert "## MimicNorm vs BN-folded" in out and "## int8-per-channel.cpu vs fp32" in out
    pairs = json.loads((tmp_path / "c.json").read_text())["pairs"]
    twins = [p for p in pairs if p["group"] == "MimicNorm vs BN-folded"]
    assert len(twins) == 4  # 2 variants x 2 batch sizes
    for pair in twins:  # same distribution for both norms
        assert pair["ratio"]["verdict"] == "no detectable difference"
        assert pair["ratio"]["low"] < 1 < pair["ratio"]["high"]
        assert pair["ratio"]["paired"] is True  # same session, same rounds
    int8 = [p for p in pairs if p["group"] == "int8-per-channel.cpu vs fp32"]
    assert int8 and all(p["ratio"]["verdict"] == "faster" for p in int8)
    assert all(p["ratio"]["low"] < 0.6 < p["ratio"]["high"] for p in int8)


def test_a_twenty_percent_regression_fails_the_gate(tmp_path, capsys):
    baseline = write_run(tmp_path / "old", seed=0, session="a")
    slower = write_run(tmp_path / "new", scale_bn=1.2, seed=50, session="b")
    assert main(["compare", str(baseline), str(slower), "--fail-if-slower", "10"]) == 1
    captured = capsys.readouterr()
    assert "regression: resnet20 BN-folded fp32 batch 1" in captured.err
    assert "MimicNorm" not in "".join(line for line in captured.err.splitlines() if line.startswith("regression"))
    assert "## Per engine and input" in captured.out and "Test CPU" in captured.out
    assert main(["compare", str(baseline), str(slower), "--fail-if-slower", "30"]) == 0
    # Naming the slower run as the baseline turns the same shift into a speed-up: no regression.
    assert main(["compare", str(baseline), str(slower), "--baseline", str(slower), "--fail-if-slower", "10"]) == 0


def test_identical_runs_pass_the_gate(tmp_path):
    a = write_run(tmp_path / "a", seed=0, session="a")
    b = write_run(tmp_path / "b", seed=7, session="b")
    assert main(["compare", str(a), str(b), "--fail-if-slower", "5"]) == 0


def test_two_single_engine_files_pair_whatever_their_names(tmp_path, capsys):
    a = write_bench(tmp_path / "a.json", "mimic", "fp32", {1: samples(1)}, session="x")
    b = write_bench(tmp_path / "b.json", "bn", "trtexec-import", {1: samples(2, scale=1.5)}, session="y")
    assert main(["compare", str(a), str(b)]) == 0
    out = capsys.readouterr().out
    assert f"## {b} vs {a}" in out and "slower" in out
    assert main(["compare", str(a)]) == 0
    assert "Nothing to pair" in capsys.readouterr().out


def _error(capsys):
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    return lines[0]


def test_different_models_under_one_name_are_refused(tmp_path, capsys):
    a = write_run(tmp_path / "a", session="a")
    b = write_run(tmp_path / "b", shape=["batch", 3, 32, 32], session="b")
    assert main(["compare", str(a), str(b)]) == 2
    assert "different models under one name" in _error(capsys)


def test_missing_samples_and_old_schema_are_one_line_errors(tmp_path, capsys):
    path = write_bench(tmp_path / "a.json", "mimic", "fp32", {1: samples(1)})
    record = json.loads(path.read_text())
    del record["latency"][0]["samples_ms"]
    path.write_text(json.dumps(record))
    assert main(["compare", str(path)]) == 2
    assert "has no raw latency samples" in _error(capsys)
    record["schema_version"] = 1
    path.write_text(json.dumps(record))
    assert main(["compare", str(path)]) == 2
    assert "schema version 1 is not supported" in _error(capsys)


def test_bad_arguments_are_one_line_errors(tmp_path, capsys):
    a = write_run(tmp_path / "a")
    assert main(["compare", str(a), "--fail-if-slower", "10"]) == 2
    assert "pass two or more inputs" in _error(capsys)
    assert main(["compare", str(a), str(tmp_path / "missing")]) == 2
    assert "no such file or directory" in _error(capsys)
    assert main(["compare", str(a), str(a)]) == 2
    assert "named twice" in _error(capsys)
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["compare", str(a), str(empty)]) == 2
    assert "no engine with latency measurements" in _error(capsys)
    other = write_run(tmp_path / "other-arch", session="o")
    for path in other.rglob("*.json"):
        record = json.loads(path.read_text())
        record["model"]["arch"] = "mobilenetv2"
        path.write_text(json.dumps(record))
    assert main(["compare", str(a), str(other)]) == 2
    assert "no engine matches" in _error(capsys)


def test_html_has_every_section_and_no_outside_resource(tmp_path):
    a = write_run(tmp_path / "a", session="a")
    b = write_run(tmp_path / "b", scale_bn=1.2, seed=3, session="b")
    out = tmp_path / "c.html"
    assert main(["compare", str(a), str(b), "--html", str(out)]) == 0
    page = out.read_text()
    assert page.count("<svg") >= 4 and "polyline" in page
    assert 'id="environment"' in page and "MimicNorm vs BN-folded" in page
    assert "http://" not in page.replace("http://www.w3.org/2000/svg", "") and "https://" not in page
    assert "<script" not in page
