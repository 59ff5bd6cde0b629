"""BiT-HyperRule: the published table (google-research/big_transfer, bit_hyperrule.py) and our cap."""

from __future__ import annotations

from transferlab.train import hyperrule


def test_schedule_mixup_resolution_and_lr_follow_the_published_rule():
    assert hyperrule.schedule_supports(19_999) == [100, 200, 300, 400, 500]
    assert hyperrule.schedule_supports(20_000) == [500, 3000, 6000, 9000, 10_000]
    assert hyperrule.schedule_supports(500_000) == [500, 6000, 12_000, 18_000, 20_000]
    assert (hyperrule.mixup_alpha(19_999), hyperrule.mixup_alpha(20_000)) == (0.0, 0.1)
    assert hyperrule.resolution(95, 96) == (160, 128) and hyperrule.resolution(96, 96) == (512, 480)
    assert hyperrule.learning_rate(512) == 0.003 and hyperrule.learning_rate(64) == 0.003 / 8


def test_decide_records_every_decision_and_caps_the_crop_keeping_the_ratio():
    rule = hyperrule.decide(1000, (28, 28), batch_size=50, max_resolution=64)
    assert rule["crop"] == 64 and rule["resize"] == 80 and rule["capped_by_max_resolution"]
    assert rule["steps"] == 500 and rule["warmup_steps"] == 100 and rule["decay_steps"] == [200, 300, 400]
    assert rule["epochs"] == 25  # 500 steps of 20 batches
    assert rule["mixup_alpha"] == 0.0 and rule["head_init"] == "zeros" and rule["momentum"] == 0.9
    big = hyperrule.decide(50_000, (224, 224), batch_size=512, max_resolution=None)
    assert (big["resize"], big["crop"], big["mixup_alpha"], big["lr"]) == (512, 480, 0.1, 0.003)
