"""Schema names and versions of every JSON artifact the toolkit writes, in one place (numpy-free
and torch-free, so any layer can import it). Each is a (name, version) pair passed to
engines.artifacts.write_json/read_json. Bump a version whenever a field changes meaning or goes
away; a reader refuses other versions with a one-line error saying what to re-run."""

RUN_MANIFEST = ("mimicnorm-deploy/run-manifest", 1)  # manifest.json: every artifact of a directory
ENGINE_MANIFEST = ("mimicnorm-deploy/engine-manifest", 2)  # 2: backend-neutral (target, backend_options, engine_file)
TRAIN_REPORT = ("mimicnorm-deploy/train-report", 1)
CALIBRATION = ("mimicnorm-deploy/calibration", 3)  # 2: encoding, plan, quality, hold-out; 3: quality.layer_images
BENCH = ("mimicnorm-deploy/bench", 2)  # 2: raw samples, device timing lists, environment fingerprint
REPORT = ("mimicnorm-deploy/report", 2)  # 2: ratios with bootstrap intervals, devices, TensorRT artifacts
COMPARISON = ("mimicnorm-deploy/comparison", 1)  # compare --json: pairs with ratio intervals
MEMORY_PROFILE = ("mimicnorm-deploy/memory-profile", 1)
DATA_SOURCE = ("mimicnorm-deploy/data-source", 1)  # data/dataset.json: what prepare-data read (for train --data)
ACTIVATION_RANGES = ("mimicnorm-deploy/activation-ranges", 2)  # <model>.ranges.json; 2: unclipped_inputs
CHECKPOINT = ("mimicnorm-deploy/checkpoint", 1)  # the JSON metadata in a checkpoint's safetensors header
TRAIN_STATE = ("mimicnorm-deploy/train-state", 1)  # train_state.pt (torch, weights_only): only its "version" is stored
INT8_STUDY_MODEL = ("mimicnorm-deploy/int8-study-model", 1)  # scripts/int8_study.py: one model's results
INT8_STUDY = ("mimicnorm-deploy/int8-study", 1)  # scripts/int8_study.py: the study's table
PARITY_STUDY = ("mimicnorm-deploy/parity-study", 2)  # scripts/parity_study.py: accuracies, seed noise
PARITY_RUN_HOST = ("mimicnorm-deploy/parity-run-host", 1)  # a parity run's host.json: the CPU kind it trains on
PARITY_RECORD = ("mimicnorm-deploy/parity-record", 1)  # docs/parity_runs.json: finished parity runs, kept in the repo
TENSORRT_DLA_LAYERS = ("mimicnorm-deploy/tensorrt-dla-layers", 1)  # engine_dir/dla_layers.json: where each layer runs
BUNDLE = ("mimicnorm-deploy/bundle", 1)  # bundle.json: a bundle's or a device results archive's files and engines
GPU_CHECK = ("mimicnorm-deploy/gpu-check", 1)  # scripts/gpu_check.sh: every CUDA path with its figures
TORCH_VS_ONNXRUNTIME = ("mimicnorm-deploy/torch-vs-onnxruntime", 1)  # scripts/bench_torch_vs_ort.py's summary
PEER_STUDY = ("mimicnorm-deploy/peer-study", 2)  # scripts/peer_study.py
PRECISION_PLAN = ("mimicnorm-deploy/precision-plan", 3)  # 3: the gate's hold-out size, resolution and flips
FP16_REFUSALS = ("mimicnorm-deploy/fp16-refusals", 1)  # demo: RUN/NORM/fp16_refusals.json, FP16 products refused
TRT_CALIBRATION_CACHE = ("mimicnorm-deploy/trt-calibration-cache", 1)  # <cache>.json sidecar: the model it is for
