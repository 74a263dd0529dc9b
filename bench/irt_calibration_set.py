"""Build the wheel's calibration items (policies/pretrained/calibration.jsonl) from the shared sets.

    python -m bench.irt_calibration_set [--arc 250] [--gsm8k 250]

- ARC-Challenge (RouterBench's test split, `routerbench/arc_challenge_test.csv`): the reference
  letter is the one the models RouterBench graded correct state (all of them must agree).
  ARC: AI2, CC BY-SA 4.0; RouterBench: Hu et al. 2024 (MIT).
- GSM8K (RouteLLM's `gsm8k_responses.csv`, GSM8K's test split): the reference number is the final
  number of the answers RouteLLM graded correct (both must agree). GSM8K: OpenAI, MIT; RouteLLM:
  Apache-2.0. These prompts are left out of the pretrained artifact's training data
  (bench/irt_pretrain.py), so a calibration never grades a model on a prompt the artifact saw.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from policies.answers import extract_answer
from policies.calibration import MAX_ITEMS, items_path
from training.joint import SHARED


def _agreed(ds, i: int) -> str | None:
    """The answer every model graded correct on row i states (None if none or they disagree)."""
    said = {
        extract_answer(ds.responses[m][i])
        for j, m in enumerate(ds.models)
        if ds.mask[i, j] and ds.quality[i, j] >= 1.0 and ds.responses.get(m) and ds.responses[m][i]
    }
    return said.pop() if len(said) == 1 and None not in said else None


def build(n_arc: int, n_gsm8k: int, seed: int = 0) -> list[dict]:
    from training.jobs import load

    rng = np.random.default_rng(seed)
    out = []
    sets = (
        (SHARED / "routerbench" / "arc_challenge_test.csv", "routerbench", "arc_challenge", n_arc,
         "ARC (AI2, CC BY-SA 4.0) via RouterBench (MIT)"),
        (SHARED / "routellm" / "gsm8k", "routellm", "gsm8k", n_gsm8k,
         "GSM8K test (OpenAI, MIT) via RouteLLM (Apache-2.0)"),
    )  # fmt: skip
    for path, fmt, task, n, lic in sets:
        ds = load(path, fmt)
        kept = 0
        for i in rng.permutation(len(ds)):
            answer = _agreed(ds, int(i))
            if answer is None:
                continue
            out.append(
                {
                    "id": f"{task}:{ds.prompt_ids[i]}",
                    "task": task,
                    "source": str(path.relative_to(SHARED)),
                    "license": lic,
                    "prompt": ds.texts[i],
                    "answer": answer,
                }
            )
            kept += 1
            if kept >= n:
                break
    if len(out) > MAX_ITEMS:
        raise SystemExit(f"{len(out)} items: the wheel ships at most {MAX_ITEMS}")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arc", type=int, default=250)
    ap.add_argument("--gsm8k", type=int, default=250)
    ap.add_argument("--out", type=Path, default=items_path())
    a = ap.parse_args()
    rows = build(a.arc, a.gsm8k)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    print(f"wrote {len(rows)} items to {a.out}")


if __name__ == "__main__":
    main()
