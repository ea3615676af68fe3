from engines.cpu import cpu_device, cpu_features, cpu_kind, needs_reduce_range

# Two cores of an AVX2-only server (like the machines this project was prototyped on).
AVX2_CPUINFO = """\
processor\t: 0
vendor_id\t: AuthenticAMD
model name\t: AMD EPYC 7B12
flags\t\t: fpu vme de pse tsc msr sse sse2 ssse3 fma cx16 sse4_1 sse4_2 movbe popcnt aes avx f16c avx2 bmi2

processor\t: 1
vendor_id\t: AuthenticAMD
model name\t: AMD EPYC 7B12
flags\t\t: fpu vme de pse tsc msr sse sse2 ssse3 fma cx16 sse4_1 sse4_2 movbe popcnt aes avx f16c avx2 bmi2
"""

CASCADE_LAKE_CPUINFO = """\
processor\t: 0
vendor_id\t: GenuineIntel
model name\t: Intel(R) Xeon(R) Platinum 8280 CPU @ 2.70GHz
flags\t\t: fpu sse sse2 avx avx2 avx512f avx512dq avx512cd avx512bw avx512vl avx512_vnni
"""

ALDER_LAKE_CPUINFO = """\
processor\t: 0
model name\t: 12th Gen Intel(R) Core(TM) i7-12700H
flags\t\t: fpu sse sse2 avx avx2 avx_vnni
"""

# Jetson AGX Orin (Cortex-A78AE): no "model name" line, dot product as "asimddp".
ORIN_CPUINFO = """\
processor\t: 0
BogoMIPS\t: 62.50
Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp
CPU implementer\t: 0x41
CPU architecture: 8
CPU part\t: 0xd42
"""

# Jetson Nano (Cortex-A57): ARMv8.0, no dot product.
NANO_CPUINFO = """\
processor\t: 0
model name\t: ARMv8 Processor rev 1 (v8l)
Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32
"""


def test_avx2_only_x86_has_no_int8_dot_product_and_needs_reduce_range():
    features = cpu_features(AVX2_CPUINFO, machine="x86_64")
    assert features.arch == "x86_64"
    assert features.model_name == "AMD EPYC 7B12"
    assert features.flags == ("avx2",)  # irrelevant flags are dropped
    assert not features.int8_dot_product
    assert needs_reduce_range(features)


def test_avx512_vnni_x86_has_int8_dot_product():
    features = cpu_features(CASCADE_LAKE_CPUINFO, machine="x86_64")
    assert features.flags == ("avx2", "avx512f", "avx512_vnni")
    assert features.int8_dot_product
    assert not needs_reduce_range(features)


def test_avx_vnni_without_avx512_counts_as_int8_dot_product():
    features = cpu_features(ALDER_LAKE_CPUINFO, machine="AMD64")
    assert features.arch == "amd64"
    assert features.int8_dot_product
    assert not needs_reduce_range(features)


def test_aarch64_with_asimddp_has_int8_dot_product():
    features = cpu_features(ORIN_CPUINFO, machine="aarch64")
    assert features.flags == ("asimddp",)
    assert features.model_name == "unknown"
    assert features.int8_dot_product
    assert not needs_reduce_range(features)


def test_aarch64_without_dot_product_never_needs_reduce_range():
    features = cpu_features(NANO_CPUINFO, machine="aarch64")
    assert features.model_name == "ARMv8 Processor rev 1 (v8l)"
    assert not features.int8_dot_product
    assert not needs_reduce_range(features)


def test_x86_flags_mean_nothing_on_arm():
    # Flag names are only meaningful for their own architecture.
    assert not cpu_features(CASCADE_LAKE_CPUINFO, machine="aarch64").int8_dot_product


def test_to_dict_and_this_machine():
    features = cpu_features(CASCADE_LAKE_CPUINFO, machine="x86_64")
    assert features.to_dict() == {
        "arch": "x86_64",
        "model_name": "Intel(R) Xeon(R) Platinum 8280 CPU @ 2.70GHz",
        "flags": ["avx2", "avx512f", "avx512_vnni"],
        "int8_dot_product": True,
    }
    device = cpu_device()
    assert device["name"] == "cpu"
    assert device["int8_dot_product"] == cpu_features().int8_dot_product


# Two cloud EPYCs that both call themselves "AMD EPYC": Milan (Zen 3, AVX2) and Genoa (Zen 4, AVX-512).
MILAN_CPUINFO = """\
processor\t: 0
vendor_id\t: AuthenticAMD
cpu family\t: 25
model\t\t: 1
model name\t: AMD EPYC
flags\t\t: fpu sse sse2 avx avx2 fma
"""
GENOA_CPUINFO = MILAN_CPUINFO.replace("model\t\t: 1", "model\t\t: 17").replace("avx2 fma", "avx2 avx512f avx512_vnni")


def test_cpu_kind_tells_apart_cpus_that_share_a_name():
    milan, genoa = cpu_kind(MILAN_CPUINFO, machine="x86_64"), cpu_kind(GENOA_CPUINFO, machine="x86_64")
    assert milan == "AMD EPYC, x86_64 family 25 model 1, avx2"
    assert genoa == "AMD EPYC, x86_64 family 25 model 17, avx2 avx512f avx512_vnni"


def test_cpu_kind_of_an_arm_cpu_names_its_implementer_and_part():
    assert cpu_kind(ORIN_CPUINFO, machine="aarch64") == "unknown, aarch64 implementer 0x41 part 0xd42, asimddp"
    assert cpu_kind(NANO_CPUINFO, machine="aarch64") == (
        "ARMv8 Processor rev 1 (v8l), aarch64 micro-architecture unknown, no relevant flags")
