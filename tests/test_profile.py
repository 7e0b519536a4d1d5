"""The MAC counting rules, checked on layers whose counts are known by hand."""
import torch
from torch import nn

from edgekit.models.profile import human, profile_model


def test_conv_deconv_linear_counting_rules():
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),                 # 8*16*16 out * 3*9 = 55,296
        nn.BatchNorm2d(8), nn.ReLU(),                  # not counted
        nn.Conv2d(8, 8, 3, padding=1, groups=8),       # 8*16*16 * 1*9 = 18,432
        nn.ConvTranspose2d(8, 4, 2, stride=2),         # in 8*16*16 * 4*4 = 32,768
        nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        nn.Linear(4, 10),                              # 40
    )
    prof = profile_model(model, (1, 3, 16, 16), device="cpu")
    assert prof.macs == 55_296 + 18_432 + 32_768 + 40
    assert prof.params == sum(p.numel() for p in model.parameters())
    assert prof.output_shape == (1, 10)


def test_meta_and_cpu_profiles_agree():
    def make():
        return nn.Sequential(nn.Conv2d(1, 4, 3, stride=2, padding=1), nn.Conv2d(4, 4, 1))
    cpu = profile_model(make(), (1, 1, 33, 33), device="cpu")
    with torch.device("meta"):
        meta_model = make()
    meta = profile_model(meta_model, (1, 1, 33, 33), device="meta")
    assert (cpu.params, cpu.macs) == (meta.params, meta.macs) and cpu.macs > 0


def test_stage_breakdown_sums_to_total():
    from edgekit.models import profile_name
    prof = profile_name("fbnet_c")
    assert [s.name for s in prof.stages][:2] == ["stem", "stages.0"]
    assert sum(s.macs for s in prof.stages) == prof.macs
    assert sum(s.params for s in prof.stages) == prof.params


def test_human():
    assert human(5_288_548) == "5.29M" and human(0) == "0" and human(386e6) == "386.00M"
    assert human(464) == "464"
