"""The demo model: the real shape, and the same bits for the same seed everywhere."""

from __future__ import annotations

import hashlib

import pytest
import torch

from model_store.demo import DEMO_ARCH, demo_state_dict
from model_store.resnet import build_model, detect_architecture

# sha256 over (key, dtype, raw bytes) of demo_state_dict(0). It changes only if the demo's
# weights change, which would make `trained: false` demos differ between machines or releases.
SEED_0_DIGEST = "cf92b3869ac229b801a18d5c341d686b8c983bb8b3a2b092aca7359ce0dea29b"


def digest(state: dict[str, torch.Tensor]) -> str:
    hasher = hashlib.sha256()
    for key, tensor in state.items():
        hasher.update(key.encode())
        hasher.update(str(tensor.dtype).encode())
        hasher.update(tensor.contiguous().numpy().tobytes())
    return hasher.hexdigest()


@pytest.fixture(scope="module")
def seed_0() -> dict[str, torch.Tensor]:
    return demo_state_dict(0)


def test_demo_has_the_original_training_shape(seed_0: dict[str, torch.Tensor]) -> None:
    # GIVEN / WHEN the architecture is detected from the demo weights
    arch, num_classes = detect_architecture(seed_0)
    # THEN it is ResNet-50 with the 128-unit head and 133 classes, all float32
    assert arch == DEMO_ARCH and arch.depth == 50 and arch.head.hidden == 128 and not arch.head.dropout
    assert num_classes == 133
    assert {t.dtype for k, t in seed_0.items() if not k.endswith("num_batches_tracked")} == {torch.float32}


def test_demo_is_bit_identical_for_a_seed(seed_0: dict[str, torch.Tensor]) -> None:
    # GIVEN the seed-0 weights
    # WHEN they are generated again, and for another seed
    again, other = demo_state_dict(0), demo_state_dict(1)
    # THEN seed 0 matches itself and the recorded digest, and seed 1 differs
    assert digest(again) == digest(seed_0) == SEED_0_DIGEST
    assert not torch.equal(other["conv1.weight"], seed_0["conv1.weight"])


def test_demo_weights_have_torchvision_init_scales(seed_0: dict[str, torch.Tensor]) -> None:
    # GIVEN / WHEN / THEN convolutions have He fan-out variance and Linear the default 1/sqrt(fan_in) range
    conv = seed_0["layer3.0.conv2.weight"]  # 256 x 256 x 3 x 3
    assert conv.std().item() == pytest.approx((2.0 / (256 * 9)) ** 0.5, rel=0.02)
    assert seed_0["fc.0.weight"].abs().max().item() <= 1 / 2048**0.5
    assert torch.equal(seed_0["bn1.running_var"], torch.ones(64))


def test_demo_gives_finite_distinct_logits(seed_0: dict[str, torch.Tensor]) -> None:
    # GIVEN the demo weights in our model
    model = build_model(DEMO_ARCH, 133, device="meta")
    model.load_state_dict(seed_0, strict=True, assign=True)
    model.eval()
    # WHEN it runs on a small batch
    with torch.inference_mode():
        logits = model(torch.rand((2, 3, 64, 64), generator=torch.Generator().manual_seed(0)))
    # THEN the logits are finite and not all equal (the head is not degenerate)
    assert torch.isfinite(logits).all()
    assert logits.std(dim=1).min().item() > 0.1
