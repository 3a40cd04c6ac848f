# %% [markdown]
# # onejump quickstart
#
# Load a model, load the lens shipped with onejump for it, draw what every level predicts on a
# prompt, compare that lens with the logit lens, and let transformers' own `generate` draft with
# it. Everything runs offline on a CPU in well under a minute once `make setup` has prepared the
# model. Cells are marked `# %%` (VS Code, Jupyter's jupytext, Spyder run them one by one);
# `python examples/quickstart.py` runs them all.
#
# Settings (environment variables): `ONEJUMP_MODEL` (default `smollm2-135m`), `ONEJUMP_LENS`
# (default `pretrained`: the shipped lens of that model; or a lens folder), `ONEJUMP_OUT` (where the
# figure goes, default `runs/quickstart`).

# %%
import os
from pathlib import Path

import torch

import onejump as oj
from onejump.generation.assistant import generate_assisted
from onejump.trajectory import save_trajectories

MODEL = os.environ.get("ONEJUMP_MODEL", "smollm2-135m")
LENS = os.environ.get("ONEJUMP_LENS", "pretrained")
OUT = Path(os.environ.get("ONEJUMP_OUT", "runs/quickstart"))
PROMPT = "The Eiffel Tower is a wrought-iron lattice tower in Paris, named after the engineer"

torch.set_num_threads(1)  # small models on a shared CPU run fastest on one thread

# %% [markdown]
# ## The model and its shipped lens
# A lens turns a hidden state at an exit level into next-token logits. The shipped one is checked
# against the model's weights fingerprint: a lens trained on other weights is refused.

# %%
lm = oj.load_model(MODEL)
lens = oj.Lens.from_pretrained(LENS, lm)
print(f"{lm.name}: K={lm.num_blocks} blocks, H={lm.hidden_size}")
print(f"lens: {lens.kind}, {lens.num_parameters:,} parameters")
card = lens.extra.get("card", {}).get("evaluation")
if card:
    mean = card["precision@1_mean"]
    print(f"its card: precision@1 {mean['mean']:.3f} (95% {mean['low']:.3f}-{mean['high']:.3f}) on "
          f"{card['sentences']} {card['split']} sentences, averaged over levels")

# %% [markdown]
# ## A prediction trajectory
# Each cell is a lens's top-1 next-token guess at one level (rows) and one prompt token (columns),
# coloured by its probability. The logit lens on the left, the shipped lens on the right.

# %%
logit = oj.LogitLens(lm)
trajs = oj.trajectories([logit, lens], lm, PROMPT, names=["logit lens", LENS])
OUT.mkdir(parents=True, exist_ok=True)
figure = save_trajectories(trajs, OUT / "trajectory.png")
print(f"wrote {figure}")

# %% [markdown]
# ## Two lenses compared
# Per level, on this prompt: how often each lens's top-1 equals the model's own final top-1, and the
# KL from the model's final distribution to the lens's (nats; lower is closer).

# %%
final = trajs[0].top_ids[-1]
print(f"{'level':>5}  {'logit top-1 = final':>19}  {'lens top-1 = final':>18}  {'logit KL':>8}  {'lens KL':>7}")
for k in range(lm.num_blocks):
    agree = [float((t.top_ids[k] == final).mean()) for t in trajs]
    kl = [float(t.kl[k].mean()) for t in trajs]
    print(f"{k:>5}  {agree[0]:>19.2f}  {agree[1]:>18.2f}  {kl[0]:>8.2f}  {kl[1]:>7.2f}")

# %% [markdown]
# ## transformers' generate with the lens as its draft head
# `model.generate` drafts with blocks 1..E and the lens (an assistant model that owns no weights)
# and verifies with the whole model, so the text is exactly greedy decoding's.

# %%
ids = lm.tokenizer(PROMPT)["input_ids"]
E = max(1, (2 * lm.num_blocks) // 3)
assisted = generate_assisted(lm, lens, ids, 12, draft_level=E, draft_len=3)
plain = oj.generation.generate_reference(lm, ids, 12)
print(lm.tokenizer.decode(assisted.tokens))
print(f"identical to plain greedy: {assisted.tokens == plain.tokens}; drafts accepted "
      f"{assisted.accepted}/{assisted.drafted} at level {E}")
