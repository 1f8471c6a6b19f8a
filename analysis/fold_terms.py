"""Entry point (issue 27): the size of the fold's parts on one persona, from the adapter files alone: for every LoRA module,
dW_dpo = s_d B_d A_d, dW_sft = s_s B_s A_s, cross = sqrt(w_d s_d w_s s_s) (B_d A_s + B_s A_d) (PEFT 'linear').
Prints Frobenius norms summed over modules (sqrt of summed squares) of:
  exact(1, .25) = dW_dpo + .25 dW_sft;  cross terms;  peft_linear = exact + cross;  old exact(1, 1)
and the differences peft_linear - exact(1,.25) and peft_linear - exact(1,1), each relative to ||exact(1,.25)||.
usage: python -m analysis.fold_terms ARTIFACTS_ROOT (a store: paths.artifacts)"""
import json
import sys
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file

root = Path(sys.argv[1])
for fold in sorted((root / "fold").glob("*/manifest.json")):
    m = json.loads(fold.read_text())
    ups = m.get("upstream", {})
    if "introspect" not in ups:
        continue
    d_dir, s_dir = root / "distill" / ups["distill"] / "adapter", root / "introspect" / ups["introspect"] / "adapter"
    def load(d):
        c = json.loads((d / "adapter_config.json").read_text())
        return c["lora_alpha"] / c["r"], {k: v.astype(np.float64) for k, v in load_file(str(d / "adapter_model.safetensors")).items()}
    (sd, D), (ss, S) = load(d_dir), load(s_dir)
    wd, ws = 1.0, 0.25
    acc = dict(exact=0.0, cross=0.0, peft=0.0, old=0.0, peft_minus_exact=0.0, peft_minus_old=0.0)
    for ka in [k for k in D if "lora_A" in k]:
        kb = ka.replace("lora_A", "lora_B")
        Ad, Bd, As, Bs = D[ka], D[kb], S[ka], S[kb]
        dd, ds = sd * Bd @ Ad, ss * Bs @ As
        cross = np.sqrt(wd * sd * ws * ss) * (Bd @ As + Bs @ Ad)
        ex, old = wd * dd + ws * ds, dd + ds
        peft = ex + cross
        for k, v in dict(exact=ex, cross=cross, peft=peft, old=old, peft_minus_exact=peft - ex, peft_minus_old=peft - old).items():
            acc[k] += float((v ** 2).sum())
    n = {k: np.sqrt(v) for k, v in acc.items()}
    print(f"fold {fold.parent.name} (dpo_weight {m.get('dpo_weight')}, introspection_weight {m.get('introspection_weight')}, "
          f"{m.get('combination')}; manifest cross_terms_max_abs {(m.get('combined_adapter') or {}).get('cross_terms_max_abs')})")
    print("  norms: " + ", ".join(f"{k} {v:.4f}" for k, v in n.items()))
    print(f"  relative to ||exact(1,.25)||: cross terms {n['cross']/n['exact']:.1%}, peft_linear - exact(1,.25) "
          f"{n['peft_minus_exact']/n['exact']:.1%}, peft_linear - exact(1,1) {n['peft_minus_old']/n['exact']:.1%}")
