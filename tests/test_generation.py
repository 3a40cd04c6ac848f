"""Early-exit generation on tiny models: lossless speculation with cache reuse, exits at chosen levels, bad input."""

import pytest
import torch

from onejump.errors import ConfigError
from onejump.generation import (
    GenerationInterrupted,
    generate_confidence,
    generate_greedy,
    generate_reference,
    generate_speculative,
)
from onejump.generation.auto import MIN_GAIN, Candidate, choose, measure
from onejump.generation.bound import speculative_bound, speculative_costs
from onejump.generation.common import CAN_RECORD_PAST, GenerationResult
from onejump.lenses.base import Lens, LogitLens
from onejump.lenses.jumps import JumpBank
from onejump.model.loading import from_pretrained_model

from .tiny import ARCHS, tiny_model, tiny_tokenizer

PROMPT = [5, 17, 33, 8, 41, 12]


def _lm(arch: str):
    if arch in ("gemma2", "gemma3_text") and not CAN_RECORD_PAST:
        pytest.skip("rolling back a sliding-window cache past its window needs transformers >= 5.23")
    model = tiny_model(arch)
    model.generation_config.eos_token_id = None  # random weights: never stop early
    tok = tiny_tokenizer()
    tok.eos_token = None
    return from_pretrained_model(model, tok, name=f"tiny-{arch}")


@pytest.fixture(scope="module", params=["llama", "gpt2", "gemma3_text"])
def lm(request):
    return _lm(request.param)


class BankLens(Lens):
    """A jump lens for tests: one random JumpBank jump, then the model's head."""

    kind = "test-bank"

    def __init__(self, lm, seed: int = 0):
        super().__init__(lm)
        self.bank = JumpBank(1, lm.hidden_size, 4, seed=seed).eval()

    def transform(self, h, level):
        return self.bank.apply(h.float(), 0, level)


class OracleLens(Lens):
    """Knows the greedy continuation: right (and sure) except at every ``wrong_every``-th position.

    It looks a drafted state up among the level-E states of the greedy text (recorded by one
    teacher-forced forward); a draft whose context is the greedy text finds its position, so drafts
    are accepted in runs and rejected at known places: cache reuse meets accepts and rejects alike.
    """

    kind = "test-oracle"

    def __init__(self, lm, prompt, continuation, level, wrong_every=3):
        super().__init__(lm)
        ids = list(prompt) + list(continuation)
        states = {}
        handles = lm.adapter.level_hooks(lambda lv, h: states.__setitem__(lv, h[0].detach().clone()))
        try:
            with torch.no_grad():
                lm.model(input_ids=torch.tensor([ids]))
        finally:
            for handle in handles:
                handle.remove()
        start = len(prompt) - 1  # the state at position p predicts token p + 1
        self.keys = states[level][start:len(ids) - 1]
        self.next = list(continuation)
        self.wrong_every = wrong_every
        self.calls = 0

    def forward(self, h, level):
        self.calls += 1
        V = self.vocab_size
        out = torch.zeros(h.shape[0], V)
        for row, vec in enumerate(h.reshape(-1, h.shape[-1]).float()):
            dist = (self.keys.float() - vec).norm(dim=-1)
            pos = int(dist.argmin())
            if dist[pos] > 1e-3 * (1 + vec.norm()):
                continue  # unknown context: flat logits, probability 1/V
            token = self.next[pos]
            if pos % self.wrong_every == self.wrong_every - 1:
                token = (token + 1) % V
            out[row, token] = 30.0
        return out


def test_own_greedy_equals_generate(lm):
    ref = generate_reference(lm, PROMPT, 20).tokens
    assert generate_greedy(lm, PROMPT, 20).tokens == ref


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("draft_level,draft_len,threshold", [(1, 1, None), (1, 4, None), (2, 3, None),
                                                               (2, 8, None), (1, 5, 0.5), (2, 4, 0.5)])
def test_speculative_with_cache_reuse_equals_greedy(arch, draft_level, draft_len, threshold):
    """Accepts and rejects in every round shape, on every architecture: output identical to greedy."""
    lm = _lm(arch)
    n = 24
    ref = generate_greedy(lm, PROMPT, n).tokens
    lens = OracleLens(lm, PROMPT, ref, draft_level)
    res = generate_speculative(lm, lens, PROMPT, n, draft_level=draft_level, draft_len=draft_len,
                               draft_threshold=threshold)
    assert res.tokens == ref
    assert 0 < res.accepted < res.drafted
    assert res.accepted <= res.tested <= res.drafted
    if draft_len > 1:  # the oracle is wrong at every third position: two of three tested drafts accepted
        assert 0.5 < res.acceptance < 0.8


@pytest.mark.parametrize("draft_level,draft_len", [(1, 1), (1, 4), (2, 3), (2, 8)])
def test_speculative_with_logit_and_jump_lenses_equals_generate(lm, draft_level, draft_len):
    ref = generate_reference(lm, PROMPT, 24).tokens
    for lens in (LogitLens(lm), BankLens(lm)):
        for reuse in (True, False):
            res = generate_speculative(lm, lens, PROMPT, 24, draft_level=draft_level, draft_len=draft_len,
                                       reuse_cache=reuse)
            assert res.tokens == ref
            assert 0 <= res.accepted <= res.drafted


def test_dynamic_draft_length_stops_at_unsure_drafts(lm):
    """The oracle is sure where it knows the context (the greedy text) and flat elsewhere."""
    n, E = 20, 1
    ref = generate_greedy(lm, PROMPT, n).tokens
    fixed = generate_speculative(lm, OracleLens(lm, PROMPT, ref, E), PROMPT, n, draft_level=E, draft_len=6)
    dyn = generate_speculative(lm, OracleLens(lm, PROMPT, ref, E), PROMPT, n, draft_level=E, draft_len=6,
                               draft_threshold=0.5)
    assert fixed.tokens == dyn.tokens == ref
    # a fixed length keeps drafting after a wrong draft (flat logits, still counted); dynamic stops there
    assert dyn.drafted < fixed.drafted
    assert dyn.acceptance_rate > fixed.acceptance_rate


def test_perfect_drafts_are_all_accepted_with_one_verification_per_round(lm):
    n, g = 16, 3
    ref = generate_greedy(lm, PROMPT, n).tokens
    lens = OracleLens(lm, PROMPT, ref, 1, wrong_every=10**6)
    res = generate_speculative(lm, lens, PROMPT, n, draft_level=1, draft_len=g)
    assert res.tokens == ref and res.acceptance == 1.0
    assert res.rounds <= -(-(n - 1) // (g + 1))  # g drafts + the full model's own token per round
    # cache reuse: every emitted token went through blocks 1..K exactly once (+ the prompt)
    assert res.layer_work == lm.num_blocks * (len(PROMPT) + n - 1)


def test_confidence_lambda_one_is_full_model(lm):
    ref = generate_reference(lm, PROMPT, 12).tokens
    res = generate_confidence(lm, LogitLens(lm), PROMPT, 12, lam=1.0)
    assert res.tokens == ref


def test_confidence_exits_only_at_the_chosen_levels():
    lm = _lm("llama")
    lm3 = lm.num_blocks  # 3 blocks: levels 1 and 2 can exit
    seen = []

    class Sure(Lens):
        kind = "test-sure"

        def forward(self, h, level):
            seen.append(level)
            out = torch.zeros(h.shape[0], self.vocab_size)
            out[..., 7] = 50.0
            return out

    res = generate_confidence(lm, Sure(lm), PROMPT, 6, lam=0.9, exit_levels=[2])
    assert set(seen) == {2}
    assert res.exit_levels == [lm3] + [2] * 5 and res.tokens[1:] == [7] * 5
    seen.clear()
    generate_confidence(lm, Sure(lm), PROMPT, 6, lam=0.9, exit_levels=[1, 2])
    assert set(seen) == {1}  # sure at the first checked level: the second is never reached


def test_deferred_kv_is_exact(lm):
    """Exit with the right token at every other step: the full-model steps must still match greedy."""
    n = 16
    ref = generate_reference(lm, PROMPT, n).tokens
    state = {"step": 0}

    class EveryOther(Lens):
        kind = "test-every-other"

        def forward(self, h, level):
            state["step"] += 1
            step = state["step"]
            out = torch.zeros(h.shape[0], self.vocab_size)
            if step % 2 == 0:  # confident and right on even steps
                out[-1, ref[step]] = 1e4
            return out

    res = generate_confidence(lm, EveryOther(lm), PROMPT, n, lam=0.5, exit_levels=[1])
    assert res.tokens == ref
    assert sum(lv < lm.num_blocks for lv in res.exit_levels) == (n - 1) // 2
    assert res.summary(lm.num_blocks)["layer_work_per_token"] < lm.num_blocks + 2


@pytest.mark.parametrize("kwargs,needle", [
    (dict(draft_level=0), "draft level"),
    (dict(draft_level=3), "draft level"),
    (dict(draft_level=1, draft_len=0), "draft length"),
    (dict(draft_level=1, draft_threshold=1.5), "draft threshold"),
])
def test_speculative_bad_input(lm, kwargs, needle):
    with pytest.raises(ConfigError, match=needle):
        generate_speculative(lm, LogitLens(lm), PROMPT, 5, **kwargs)


@pytest.mark.parametrize("kwargs,needle", [(dict(lam=0.0), "lambda"), (dict(lam=1.5), "lambda"),
                                           (dict(measure="entropy"), "measure"),
                                           (dict(exit_levels=[0]), "exit level"),
                                           (dict(exit_levels=[]), "exit levels")])
def test_confidence_bad_input(lm, kwargs, needle):
    with pytest.raises(ConfigError, match=needle):
        generate_confidence(lm, LogitLens(lm), PROMPT, 5, **kwargs)


def test_empty_prompt_and_zero_tokens(lm):
    with pytest.raises(ConfigError, match="empty"):
        generate_greedy(lm, [], 5)
    with pytest.raises(ConfigError, match="max new tokens"):
        generate_speculative(lm, LogitLens(lm), PROMPT, 0, draft_level=1)


def test_context_length_is_enforced(lm):
    """Tiny models have 128 positions: prompt + new tokens past that is refused before any work."""
    generate_greedy(lm, PROMPT, 128 - len(PROMPT))  # exactly fits
    for run in (lambda: generate_greedy(lm, PROMPT, 129 - len(PROMPT)),
                lambda: generate_speculative(lm, LogitLens(lm), PROMPT, 200, draft_level=1),
                lambda: generate_confidence(lm, LogitLens(lm), PROMPT, 200)):
        with pytest.raises(ConfigError, match=r"context of 128 positions; use at most 122 new tokens"):
            run()


@pytest.mark.parametrize("mode", ["greedy", "speculative", "confidence"])
def test_ctrl_c_returns_what_was_produced(lm, mode, monkeypatch):
    calls = {"n": 0}
    original = lm.model.forward

    def interrupted(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 6:
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    monkeypatch.setattr(lm.model, "forward", interrupted)
    run = {"greedy": lambda: generate_greedy(lm, PROMPT, 20),
           "speculative": lambda: generate_speculative(lm, LogitLens(lm), PROMPT, 20, draft_level=1, draft_len=2),
           "confidence": lambda: generate_confidence(lm, LogitLens(lm), PROMPT, 20, lam=1.0)}[mode]
    with pytest.raises(GenerationInterrupted) as info:
        run()
    assert isinstance(info.value, KeyboardInterrupt)
    produced = info.value.result.tokens
    monkeypatch.undo()
    assert 1 <= len(produced) < 20
    assert produced == generate_greedy(lm, PROMPT, 20).tokens[:len(produced)]


# ---- the bound, the auto picker ------------------------------------------------------------------

def test_speculative_bound_formula():
    assert speculative_bound(0.0, 3, 0.2, 1.0) == pytest.approx(1 / 1.6)
    assert speculative_bound(1.0, 3, 0.2, 1.0) == pytest.approx(4 / 1.6)
    a, g, c, v = 0.6, 4, 0.25, 1.0
    assert speculative_bound(a, g, c, v) == pytest.approx(sum(a ** i for i in range(g + 1)) / (g * c + v))


def test_measured_costs_from_timings():
    """c, v, the bound and the achieved speed-up from the timings a run records (controlled numbers)."""
    # 2 rounds of g=2 drafts: 3 of 4 accepted (round 1: both, round 2: first), 0.1 s a greedy step
    run = GenerationResult(tokens=[1] * 6, seconds=0.55, mode="speculative", drafted=4, accepted=3, tested=4,
                           rounds=2, prefill_seconds=0.1, draft_seconds=0.2, verify_seconds=0.2, checks=4)
    out = speculative_costs([run], 0.1, 2)
    assert out["acceptance"] == 0.75 and out["c"] == 0.5 and out["v"] == 1.0
    assert out["bound"] == pytest.approx(speculative_bound(0.75, 2, 0.5, 1.0), abs=1e-4)
    assert out["achieved"] == pytest.approx(5 * 0.1 / 0.45, abs=1e-4)  # 5 tokens after the prompt's
    assert out["bound_rounds"] == pytest.approx(5 * 0.1 / 0.4, abs=1e-4)
    assert out["overhead_fraction"] == pytest.approx(0.05 / 0.45, abs=1e-4)


def _spec(E, g, bound, achieved, a):
    return Candidate("speculative", {"draft_level": E, "draft_len": g}, bound, achieved, 1.0, a)


def _conf(lam, achieved, agreement):
    return Candidate("confidence", {"lam": lam, "exit_levels": [20, 25]}, 1.5, achieved, agreement)


def test_auto_picks_plain_greedy_when_no_exit_pays():
    choice = choose([_spec(20, 1, 0.62, 0.6, 0.4), _spec(28, 1, 0.74, 0.71, 0.63), _spec(28, 3, 0.55, 0.5, 0.6)])
    assert choice.mode == "greedy" and choice.params == {}
    assert choice.reason.startswith("plain greedy: no early exit pays on this model (bound 0.74x at best: "
                                    "speculative E=28 g=1, a=0.63)")


def test_auto_picks_the_fastest_exact_mode():
    choice = choose([_spec(20, 1, 1.2, 1.1, 0.7), _spec(20, 3, 1.5, 1.4, 0.7), _conf(0.9, 2.5, 0.9)])
    assert choice.mode == "speculative" and choice.params == {"draft_level": 20, "draft_len": 3}
    assert "speculative E=20 g=3: 1.40x" in choice.reason and "bound 1.50x" in choice.reason
    assert "\n" not in choice.reason


def test_auto_confidence_exits_only_above_the_agreement_floor():
    cands = [_spec(28, 1, 0.74, 0.71, 0.63), _conf(0.9, 2.5, 0.9), _conf(0.99, 1.3, 0.97)]
    exact = choose(cands, 1.0)
    assert exact.mode == "greedy" and "agrees with greedy on 0.90 of tokens, below the floor 1.00" in exact.reason
    loose = choose(cands, 0.95)
    assert loose.mode == "confidence" and loose.params["lam"] == 0.99
    assert choose(cands, 0.85).params["lam"] == 0.9
    assert choose([_spec(28, 1, 1.04, 1.02, 0.9)]).mode == "greedy"  # within timing noise of greedy
    with pytest.raises(ConfigError, match="agreement floor"):
        choose(cands, 0.0)


def test_auto_measures_real_candidates(lm):
    cands = measure(lm, LogitLens(lm), [PROMPT, PROMPT[:3]], new_tokens=6, levels=[1, 2], draft_lens=(1, 2),
                    with_confidence=True, lambdas=(0.5,))
    spec = [c for c in cands if c.mode == "speculative"]
    assert [(c.params["draft_level"], c.params["draft_len"]) for c in spec] == [(1, 1), (1, 2), (2, 1), (2, 2)]
    assert all(c.bound > 0 and c.achieved > 0 and 0 <= c.acceptance <= 1 for c in spec)
    conf = [c for c in cands if c.mode == "confidence"]
    assert len(conf) == 1 and 0 <= conf[0].agreement <= 1
    # the choice follows the rule whatever the timings: the fastest exact candidate, if it pays at all
    choice = choose(cands)
    allowed = [c for c in cands if c.agreement >= 1.0]
    if choice.mode == "greedy":
        assert all(c.achieved < MIN_GAIN for c in allowed)
    else:
        assert choice.params == max(allowed, key=lambda c: c.achieved).params


# ---- the command ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("tiny-llama-gen")
    model = tiny_model("llama")
    model.generation_config.eos_token_id = None
    model.save_pretrained(d)
    tok = tiny_tokenizer()
    tok.save_pretrained(d)
    return d


@pytest.fixture
def cli(tiny_dir, capsys):
    """``onejump generate`` on the tiny model, in this process: (exit code, stdout, stderr)."""
    from onejump.cli import main

    def run(*argv):
        code = main(["-q", "generate", "--model", str(tiny_dir), "--device", "cpu", *map(str, argv)])
        out = capsys.readouterr()
        return code, out.out, out.err

    return run


def test_cli_refuses_tokens_past_the_context(cli):
    code, out, err = cli("--prompt", "abc", "--max-new-tokens", 200, "--exit", "none")
    assert code == 2 and out == ""
    assert err.strip().splitlines() == ["onejump generate: error: --max-new-tokens 200: the prompt (3 tokens) + the "
                                        "new tokens exceed the model's context of 128 positions; use "
                                        "--max-new-tokens <= 125"]


@pytest.mark.parametrize("mode", ["none", "speculative", "confidence"])
def test_cli_ctrl_c_prints_what_was_produced(cli, monkeypatch, mode):
    from transformers import LlamaForCausalLM

    original = LlamaForCausalLM.forward
    calls = {"n": 0}

    def forward(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 8:
            raise KeyboardInterrupt
        return original(self, *args, **kwargs)

    monkeypatch.setattr(LlamaForCausalLM, "forward", forward)
    options = {"none": [], "speculative": ["--lens", "logit", "--draft-level", 1],
               "confidence": ["--lens", "logit", "--lambda", 1.0]}[mode]  # each mode's own options only
    code, out, err = cli("--prompt", "abc", "--max-new-tokens", 60, "--exit", mode, *options)
    assert code == 130
    assert "Traceback" not in err and "interrupted after" in err
    produced = int(err.split("interrupted after ")[1].split()[0])
    assert 1 <= produced < 60
    assert out.startswith("abc") and len(out.rstrip("\n")) > len("abc")


def test_cli_refuses_an_agreement_floor_outside_0_1(cli):
    code, out, err = cli("--prompt", "abc", "--exit", "auto", "--min-agreement", 1.5)
    assert code == 2 and err.strip().startswith(  # refused when the command line is parsed, by its range
        "onejump generate: error: argument --min-agreement: must be a number in (0, 1], got 1.5")


def test_cli_auto_says_why_in_one_line(cli):
    code, out, err = cli("--prompt", "abc", "--max-new-tokens", 5, "--exit", "auto", "--lens", "logit")
    assert code == 0 and out.startswith("abc")
    lines = [ln for ln in err.splitlines() if "--exit auto chose" in ln]
    assert len(lines) == 1
    assert lines[0].split("chose ")[1].startswith(("plain greedy: no early exit pays on this model (bound ",
                                                    "speculative E="))


def test_cli_auto_tries_the_given_levels(cli):
    code, _, err = cli("--prompt", "abc", "--max-new-tokens", 4, "--exit", "auto", "--lens", "logit",
                       "--exit-levels", "1", "--min-agreement", 0.5)
    tried = [ln.split("measuring ")[1] for ln in err.splitlines() if "measuring" in ln]
    assert code == 0 and tried == ["speculative E=1, g in 1,3", "confidence lambda=0.9", "confidence lambda=0.99"]
