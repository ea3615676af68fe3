import numpy as np
import pytest
import tiny_onnx

import engines.bench as bench_module
from engines import build_engine, load_runner
from engines.base import Runner, TensorMeta
from engines.bench import (
    BenchPlan,
    LatencyResult,
    bench_engine,
    bench_engines,
    measure_latency,
    mlperf_views,
    peak_rss_fresh_process,
)
from engines.errors import UserError
from engines.onnxruntime import Options


@pytest.fixture
def engine_dir(tmp_path):
    model_path = tiny_onnx.make_tiny_resnet(tmp_path / "m.onnx")
    build_engine(model_path, tmp_path / "engine", options=Options(intra_op_threads=1))
    return tmp_path / "engine"


def test_latency_statistics_are_ordered_and_consistent(engine_dir):
    messages = []
    with load_runner(engine_dir) as runner:
        result = measure_latency(
            runner, 8, warmup_s=0.01, min_iterations=20, min_duration_s=0.05, progress=messages.append
        )
    assert result.batch_size == 8
    assert result.iterations >= 20
    assert result.warmup_iterations >= 3
    assert 0 < result.min_ms <= result.p50_ms <= result.p90_ms <= result.p95_ms <= result.p99_ms <= result.max_ms
    assert result.min_ms <= result.mean_ms <= result.max_ms
    # The loop ran for at least min_duration_s of timed inference, give or take loop overhead.
    assert result.iterations * result.mean_ms >= 0.5 * 50
    images_per_s_at_mean = 8 / (result.mean_ms / 1000)
    assert images_per_s_at_mean / 2 < result.throughput_ips < images_per_s_at_mean * 2
    assert messages[0] == "batch 8: warm-up"
    assert messages[-1] == f"batch 8: {result.iterations}/{result.iterations} iterations"
    assert set(result.to_dict()) >= {"p90_ms", "throughput_ips", "iterations", "samples_ms", "timing_source"}
    # The statistics are those of the kept samples, and a CPU engine has no device-side timing.
    assert len(result.samples_ms) == result.iterations
    assert result.p50_ms == pytest.approx(np.median(result.samples_ms))
    assert result.max_ms == max(result.samples_ms)
    assert result.device_timing_keys() == []
    assert "gpu_compute_ms" not in result.to_dict()


def test_from_samples_matches_numpy_and_rounds_to_a_microsecond():
    samples = [1.00049, 2.0, 3.0, 4.0, 10.0]
    result = LatencyResult.from_samples(4, samples, gpu_compute_ms=[0.5] * 5, timing_source="trtexec")
    assert result.samples_ms == [1.0, 2.0, 3.0, 4.0, 10.0]
    assert result.p50_ms == 3.0
    assert result.p90_ms == pytest.approx(np.percentile(result.samples_ms, 90))
    assert result.mean_ms == 4.0 and result.min_ms == 1.0 and result.max_ms == 10.0
    assert result.throughput_ips == pytest.approx(4 * 1000 / 4.0)
    assert result.device_timing_keys() == ["gpu_compute_ms"]
    assert LatencyResult.from_dict(result.to_dict()) == result
    overlapped = LatencyResult.from_samples(4, samples, throughput_ips=5000.0)
    assert overlapped.throughput_ips == 5000.0


def test_from_samples_refuses_what_it_cannot_pair():
    with pytest.raises(ValueError, match="unknown timing lists"):
        LatencyResult.from_samples(1, [1.0], gpu_ms=[1.0])
    with pytest.raises(ValueError, match="rounds"):
        LatencyResult.from_samples(1, [1.0, 2.0], rounds=[1, 2])
    with pytest.raises(ValueError, match="non-empty"):
        LatencyResult.from_samples(1, [])


def test_a_v1_entry_without_samples_is_a_one_line_error():
    old = {"batch_size": 1, "iterations": 3, "p50_ms": 1.0}
    with pytest.raises(UserError, match="batch 1 has no raw latency samples; re-run"):
        LatencyResult.from_dict(old, "old.json")


class FakeGpuRunner(Runner):
    """A fake GPU engine: reports a fixed device-side split after every inference."""

    inputs = [TensorMeta("images", ("batch", 1, 4, 4), "float32")]
    outputs = [TensorMeta("logits", ("batch", 3), "float32")]

    def _activate(self):
        pass

    def _deactivate(self):
        pass

    def _infer(self, feeds):
        return {"logits": np.zeros((len(feeds["images"]), 3), np.float32)}

    def memory(self):
        return {}

    def timing(self):
        return {"gpu_compute_ms": 0.25, "h2d_ms": 0.125, "d2h_ms": 0.0625}


def test_device_timing_is_kept_per_sample():
    with FakeGpuRunner() as runner:
        result = measure_latency(runner, 2, warmup_s=0, min_iterations=7, min_duration_s=0)
    assert result.device_timing_keys() == ["gpu_compute_ms", "h2d_ms", "d2h_ms"]
    assert result.gpu_compute_ms == [0.25] * result.iterations
    assert result.h2d_ms == [0.125] * result.iterations


def test_max_iterations_caps_the_timed_loop(engine_dir):
    with load_runner(engine_dir) as runner:
        result = measure_latency(runner, 1, warmup_s=0, min_iterations=5, min_duration_s=60, max_iterations=7)
    assert result.iterations == 7


class FixedBatchRunner(Runner):
    """Stands for an engine built for batch 2 only."""

    inputs = [TensorMeta("images", (2, 1, 8, 8), "float32")]
    outputs = [TensorMeta("logits", (2, 3), "float32")]

    def _activate(self):
        pass

    def _deactivate(self):
        pass

    def _infer(self, feeds):
        raise AssertionError("must not run with a wrong batch size")

    def memory(self):
        return {}


def test_fixed_batch_engines_refuse_other_batch_sizes():
    with pytest.raises(UserError, match="fixed batch size of 2"):
        with FixedBatchRunner() as runner:
            measure_latency(runner, 8, warmup_s=0, min_iterations=1, min_duration_s=0)


def test_rss_probe_reports_peak_above_baseline(engine_dir):
    memory = peak_rss_fresh_process(engine_dir, batch_size=4, iterations=3)
    assert memory["peak_rss_bytes"] >= memory["baseline_rss_bytes"] > 10 * 2**20  # numpy + onnxruntime


def test_rss_probe_passes_user_errors_through(tmp_path):
    with pytest.raises(UserError, match="not an engine directory"):
        peak_rss_fresh_process(tmp_path, batch_size=1, iterations=1)


def test_bench_engine_reports_every_batch_size_and_memory(engine_dir):
    messages = []
    report = bench_engine(
        engine_dir, (1, 4), warmup_s=0.01, min_iterations=5, min_duration_s=0.02, progress=messages.append
    )
    assert report["engine"]["backend"] == "onnxruntime"
    assert [entry["batch_size"] for entry in report["latency"]] == [1, 4]
    assert report["memory"]["rss_batch_size"] == 4
    assert report["memory"]["model_file_bytes"] == (engine_dir / "model.onnx").stat().st_size
    assert report["memory"]["peak_rss_bytes"] >= report["memory"]["baseline_rss_bytes"] > 0
    assert f"{engine_dir}: memory in a fresh process, batch 4" in messages
    environment = report["environment"]
    assert environment["cpu"]["logical_cores"] >= 1
    assert len(environment["load_average_before"]) == len(environment["load_average_after"]) == 3
    assert "numpy" in environment["versions"]


def test_rss_probe_does_not_inherit_the_parents_peak(tmp_path):
    # Linux keeps ru_maxrss across fork + exec: a probe launched by a process that holds a lot of
    # memory (torch, a data set) must still report only its own address space.
    model = tiny_onnx.make_tiny_resnet(tmp_path / "m.onnx")
    build_engine(model, tmp_path / "engine")
    ballast = np.ones(400 * 2**20 // 8)  # 400 MiB held by this (the parent) process
    ballast[::512] = 2.0  # touch every page so it is resident
    report = peak_rss_fresh_process(tmp_path / "engine", batch_size=1, iterations=2)
    assert report["peak_rss_bytes"] < 300 * 2**20
    del ballast


def test_interleaved_rounds_pool_every_round_and_share_one_session(tmp_path, engine_dir):
    other = tmp_path / "other"
    build_engine(tiny_onnx.make_tiny_resnet(tmp_path / "o.onnx", seed=1), other, options=Options(intra_op_threads=1))
    messages = []
    plan = BenchPlan(batch_sizes=(1, 2), rounds=3, duration_s=0.03, min_iterations=6, warmup_s=0)
    records = bench_engines([engine_dir, other], plan, memory=False, progress=messages.append)
    assert len(records) == 2
    assert records[0]["session"]["id"] == records[1]["session"]["id"]
    assert records[0]["session"]["rounds"] == 3
    for record in records:
        for entry in record["latency"]:
            assert len(entry["rounds"]) == 3 and min(entry["rounds"]) >= 2  # ceil(6 / 3) per round
            assert sum(entry["rounds"]) == entry["iterations"] == len(entry["samples_ms"])
        assert record["mlperf"]["single_stream_p90_ms"] == record["latency"][0]["p90_ms"]
        assert "memory" not in record
    # Round 2 starts with the second engine: the order rotates.
    round_two = [m for m in messages if m.startswith("round 2/3")]
    assert round_two[0].startswith(f"round 2/3: {other} batch 1")


def test_a_sweep_skips_batch_sizes_the_engine_refuses_and_says_why():
    plan = BenchPlan(batch_sizes=(1, 2, 8), duration_s=0, min_iterations=1, warmup_s=0, sweep=True)
    with FixedBatchTwoRunner() as runner:
        segments, skipped = bench_module._interleaved_rounds([runner], ["fixed"], plan, None)
        assert list(segments[0]) == [2]
        assert set(skipped[0]) == {"1", "8"} and "fixed batch size of 2" in skipped[0]["1"]
        with pytest.raises(UserError, match="fixed batch size"):
            bench_module._interleaved_rounds([runner], ["fixed"], BenchPlan(batch_sizes=(1,)), None)


class FixedBatchTwoRunner(FakeGpuRunner):
    """A fake engine built for batch 2 only."""

    inputs = [TensorMeta("images", (2, 1, 4, 4), "float32")]


def test_mlperf_views_of_a_sweep():
    sweep = [LatencyResult.from_samples(b, [t] * 5) for b, t in ((1, 1.0), (8, 4.0), (64, 40.0))]
    views = mlperf_views(sweep)
    assert views["single_stream_p90_ms"] == 1.0
    assert views["offline_batch_size"] == 8 and views["offline_throughput_ips"] == pytest.approx(2000.0)
    assert mlperf_views(sweep[1:])["single_stream_p90_ms"] is None


def test_bench_plan_refuses_nonsense():
    with pytest.raises(UserError, match="at least 1 round"):
        BenchPlan(rounds=0)
    with pytest.raises(UserError, match="sizes >= 1"):
        BenchPlan(batch_sizes=(0,))
