"""Schema names and versions of the JSON artifacts this package writes (torch-free, so that
`report` can read them anywhere). Bump a version whenever a field changes meaning or goes away."""

TRAIN_REPORT = ("mimicnorm-deploy/train-report", 1)
CALIBRATION = ("mimicnorm-deploy/calibration", 2)  # 2: encoding, plan, quality, hold-out
BENCH = ("mimicnorm-deploy/bench", 2)  # 2: raw samples, device timing lists, environment fingerprint
REPORT = ("mimicnorm-deploy/report", 1)
MEMORY_PROFILE = ("mimicnorm-deploy/memory-profile", 1)
