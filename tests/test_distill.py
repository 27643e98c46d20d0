"""Draft distillation (plain KD and AdaSPEC): the losses, a few real steps on tiny models, the CLI."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import tiny_model
from typer.testing import CliRunner

from tokenforge.models.distill import DistillConfig, distill, selective_loss, token_kl


def test_token_kl_is_the_forward_kl():
    target, draft = torch.randn(3, 5, 11), torch.randn(3, 5, 11)
    want = torch.nn.functional.kl_div(torch.log_softmax(draft, -1), torch.log_softmax(target, -1),
                                      log_target=True, reduction="none").sum(-1)
    torch.testing.assert_close(token_kl(draft, target), want)
    assert token_kl(target, target).abs().max() < 1e-6


def test_selective_loss_keeps_the_largest_gaps():
    kl = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0])
    ref = torch.tensor([0.9, 0.0, 2.9, 4.0, 1.0])  # gaps 0.1, 2.0, 0.1, 0.0, 4.0
    assert selective_loss(kl, ref, keep=0.4).item() == pytest.approx((2.0 + 5.0) / 2)
    assert selective_loss(kl, ref, keep=1.0).item() == pytest.approx(3.0)


@pytest.mark.parametrize("adaspec", [False, True])
def test_distillation_brings_the_draft_closer(adaspec):
    target = tiny_model("llama", seed=0)
    draft = tiny_model("llama", seed=1, hidden=16, layers=1)
    stream = np.random.default_rng(0).integers(1, 96, size=4000).astype(np.int32)
    cfg = DistillConfig(steps=12, batch_size=4, seq_len=32, lr=1e-2, warmup=2)
    reference = distill(target, draft, stream, cfg, log=lambda _: None)[0] if adaspec else None
    model, record = distill(target, draft, stream, cfg, reference=reference, log=lambda _: None)
    x = torch.from_numpy(stream[:512].astype(np.int64)).view(4, 128)
    with torch.no_grad():
        before = token_kl(draft.model(input_ids=x).logits, target.model(input_ids=x).logits)
        after = token_kl(model(input_ids=x).logits.double(), target.model(input_ids=x).logits)
    assert after.mean() < 0.9 * before.mean()
    assert record["loss_curve"] and not model.training


def test_distill_draft_command_is_registered():
    from tokenforge.cli import app

    result = CliRunner().invoke(app, ["distill-draft", "--help"])
    assert result.exit_code == 0 and "AdaSPEC" in result.output
