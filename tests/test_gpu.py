"""The CUDA path (skipped without a GPU; CI has none): every stage on the GPU agrees with the CPU."""

import pytest
import torch

from onejump.evaluation.evaluator import evaluate, reuse_matrix
from onejump.evaluation.selection import select_ojfa
from onejump.extract import extract
from onejump.generation import generate_reference, generate_speculative
from onejump.lenses import LogitLens, PerLevelLens
from onejump.model.loading import from_pretrained_model
from onejump.training.config import TrainConfig
from onejump.training.fit import train_jumps

from .test_extract import SENTENCES
from .tiny import tiny_model, tiny_tokenizer

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


@pytest.fixture(scope="module")
def pair():
    cpu = from_pretrained_model(tiny_model("llama"), tiny_tokenizer(), name="tiny")
    gpu = from_pretrained_model(tiny_model("llama").cuda(), tiny_tokenizer(), name="tiny")
    return cpu, gpu


def test_extract_train_select_evaluate_on_cuda(pair, tmp_path):
    cpu, gpu = pair
    splits = [0] * 16 + [1] * 8
    s_cpu = extract(cpu, SENTENCES, tmp_path / "c", splits=splits, progress=False)
    s_gpu = extract(gpu, SENTENCES, tmp_path / "g", splits=splits, progress=False)
    torch.testing.assert_close(s_gpu.hidden(), s_cpu.hidden(), rtol=1e-3, atol=1e-3)
    config = TrainConfig(max_epochs=3, batch_size=8)
    bank_c, _ = train_jumps(s_cpu, config, device="cpu", progress=False)
    bank_g, _ = train_jumps(s_cpu, config, device="cuda", progress=False)
    for a, b in zip(bank_c.state_dict().values(), bank_g.state_dict().values()):
        torch.testing.assert_close(a.float(), b.cpu().float(), rtol=1e-2, atol=1e-3)
    sel_g = select_ojfa(s_cpu, bank_c, device="cuda")
    sel_c = select_ojfa(s_cpu, bank_c, device="cpu")
    torch.testing.assert_close(sel_g.matrix, sel_c.matrix, rtol=1e-4, atol=1e-6)
    assert sel_g.chosen == sel_c.chosen
    per_c, per_g = PerLevelLens(cpu, bank_c), PerLevelLens(gpu, bank_c.cuda())
    r_cpu = evaluate(s_cpu, {"identity": LogitLens(cpu), "full": per_c}, progress=False)
    r_gpu = evaluate(s_cpu, {"identity": LogitLens(gpu), "full": per_g}, progress=False)
    for method in ("identity", "full"):
        for metric in ("surprisal", "kl"):
            torch.testing.assert_close(r_gpu.metric(method, metric), r_cpu.metric(method, metric), rtol=1e-3,
                                       atol=1e-3)
    m_cpu, m_gpu = reuse_matrix(s_cpu, per_c, progress=False), reuse_matrix(s_cpu, per_g, progress=False)
    torch.testing.assert_close(m_gpu.pair_matrix("surprisal"), m_cpu.pair_matrix("surprisal"), rtol=1e-3, atol=1e-3)


def test_speculative_on_cuda_equals_generate(pair):
    _, gpu = pair
    prompt = [5, 17, 33, 8, 41, 12]
    gpu.model.generation_config.eos_token_id = None
    ref = generate_reference(gpu, prompt, 16).tokens
    res = generate_speculative(gpu, LogitLens(gpu), prompt, 16, draft_level=2, draft_len=3)
    assert res.tokens == ref
