import io

from mimicnorm_deploy.progress import ProgressPrinter, bar, last_count


def test_counts_are_found_but_not_in_paths():
    assert last_count("[bn] epoch 1 step 150/390 loss 0.52 acc 80.1%") == (150, 390)
    assert last_count("round 2/5: runs/demo/bn/engines/fp32 batch 1 (3/12 segments)") == (3, 12)
    assert last_count("runs/2024/12/engine: memory") is None
    assert last_count("0/0 done") is None
    assert bar(5, 10, width=10) == "[#####.....]  50%"


def test_a_terminal_gets_one_redrawn_line_per_task():
    stream = io.StringIO()
    progress = ProgressPrinter(stream, is_tty=True)
    progress("calibrating")
    progress("calibration batch 1/4")
    progress("calibration batch 2/4")
    progress("calibration batch 4/4")
    progress("done")
    text = stream.getvalue()
    lines = text.split("\n")
    assert lines[0] == "calibrating"
    # Three redraws of one line (carriage returns), closed once the count completes.
    assert lines[1].count("\r") == 3 and lines[1].endswith("calibration batch 4/4 [" + "#" * 24 + "] 100%")
    assert lines[2] == "done"


def test_an_interrupted_bar_is_closed_before_the_next_message():
    stream = io.StringIO()
    progress = ProgressPrinter(stream, is_tty=True)
    progress("batch 8: 10/400 iterations")
    progress("warning: something")
    assert stream.getvalue() == f"\rbatch 8: 10/400 iterations {bar(10, 400)}\nwarning: something\n"


def test_ci_logs_get_plain_lines():
    stream = io.StringIO()
    progress = ProgressPrinter(stream, is_tty=False)
    for message in ("calibration batch 1/2", "calibration batch 2/2", "done"):
        progress(message)
    assert stream.getvalue() == "calibration batch 1/2\ncalibration batch 2/2\ndone\n"


def test_ci_logs_get_a_count_at_most_once_per_interval_but_always_its_first_and_last_line():
    stream, now = io.StringIO(), [0.0]
    progress = ProgressPrinter(stream, is_tty=False, log_interval_s=10.0, clock=lambda: now[0])
    for done in range(1, 41):  # 40 batches, 1 s apart
        now[0] = float(done)
        progress(f"[bn] fp32 accuracy: {256 * done}/10240 images")
        if done == 5:
            progress("[mimic] fp32 accuracy: 256/10240 images")  # another task: not held back
    lines = stream.getvalue().splitlines()
    assert [line.split(": ")[0] for line in lines].count("[mimic] fp32 accuracy") == 1
    bn_counts = [int(line.split(": ")[1].split("/")[0]) // 256 for line in lines if line.startswith("[bn]")]
    # The first, then one per 10 s of the clock (the other task's line restarts the interval), the last.
    assert bn_counts == [1, 6, 16, 26, 36, 40]
