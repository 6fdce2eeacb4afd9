"""CPU and CUDA compute the same thing: for every method (on GMF) and for SASRec, the same weights
give the same metrics on both devices, and one training step from the same state on the same batch
gives the same gradients. Skipped without a CUDA device (CI has none)."""

from __future__ import annotations

import copy

import pytest
import torch
from hydra import compose, initialize_config_dir

from recbench.assembly import build_model, load_data
from recbench.engine.loop import FitOptions, fit, train_step
from recbench.engine.losses import LOSSES
from recbench.engine.optim import make_optimizer
from recbench.tasks import build_task
from tests.conftest import CONF, assert_grads_close, disable_dropout, method_names

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device"),
]
CPU, GPU = torch.device("cpu"), torch.device("cuda")
TINY = [
    "dataset.loader.num_users=150",
    "dataset.loader.num_items=80",
    "dataset.loader.events_per_user=15",
]


def setup(overrides: list[str]):  # noqa: ANN201
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("config", overrides=[*TINY, *overrides])
    data = load_data(cfg)
    torch.manual_seed(0)
    model = build_model(cfg, data)
    options = FitOptions(loss=cfg.train.loss, epochs=2, lr=0.01, progress=False)
    fit(model, build_task(data, cfg, CPU).sampler, options)
    return cfg, data, model


def check(overrides: list[str]) -> None:
    cfg, data, model = setup(overrides)
    on_gpu = copy.deepcopy(model).to(GPU)
    cpu_parts, gpu_parts = build_task(data, cfg, CPU), build_task(data, cfg, GPU)
    model.eval(), on_gpu.eval()
    cpu_metrics = cpu_parts.evaluator.evaluate(model, "test")
    gpu_metrics = gpu_parts.evaluator.evaluate(on_gpu, "test")
    for key, value in cpu_metrics.items():
        assert gpu_metrics[key] == pytest.approx(value, abs=2e-3), key

    batch = next(cpu_parts.sampler.epoch(torch.Generator().manual_seed(1)))
    gpu_batch = type(batch)(
        **{k: (v.to(GPU) if torch.is_tensor(v) else v) for k, v in vars(batch).items()}
    )
    model.train(), on_gpu.train()
    torch.manual_seed(3)  # dropout masks differ across devices; compare with dropout off
    disable_dropout(model), disable_dropout(on_gpu)
    loss_fn = LOSSES[cfg.train.loss]
    grads = []
    for m, b in ((model, batch), (on_gpu, gpu_batch)):
        m.zero_grad()
        (loss_fn(m, b) + m.aux_loss().to(b.items.device)).backward()
        grads.append(
            {n: p.grad.detach().cpu() for n, p in m.named_parameters() if p.grad is not None}
        )
    assert_grads_close(grads[0], grads[1])
    # And a whole optimiser step runs on the device (Adam's first step is lr * sign(grad), so the
    # parameters themselves are compared through the gradients above, not after the step).
    assert torch.isfinite(train_step(on_gpu, gpu_batch, loss_fn, make_optimizer(on_gpu, 1e-3, 0.0)))


@pytest.mark.parametrize("method", method_names())
def test_gmf_every_method_agrees_across_devices(method: str) -> None:
    check([f"method={method}"])


@pytest.mark.parametrize(
    "model",
    [
        "neumf",
        "sasrec",
        "dot_bias",
    ],
)
def test_backbones_agree_across_devices(model: str) -> None:
    check([f"model={model}"])
