"""Bad inputs, as a new user would type them: what each gets, and how long from command to error.

    python benchmarks/bad_inputs.py --tree . --out bad_after.json          # this checkout
    python benchmarks/bad_inputs.py --tree /tmp/before --out bad_before.json   # another source tree (git archive)
    python benchmarks/bad_inputs.py --table bad_before.json bad_after.json     # the markdown table, side by side
    python benchmarks/bad_inputs.py --smoke      # this checkout, the SMOKE groups (5 composition errors): seconds

The `slurm` cases need the local cluster (`slurm/start-local-cluster.sh --gpus 2`, SLURM_CONF exported); a job
that pends forever is ended (scancel) after --timeout.

Each case runs the real CLI (`python -m emrobust.cli ...`, the tree first on PYTHONPATH) in a fresh output dir
with one artifacts store per run of this script (so stages a case shares with an earlier one are cached, as for a
user), on `debug=tiny` cells. Recorded per case: exit code, seconds, the number of stderr lines and the line that
says what went wrong (the last `emrobust: error:` line, else the last line that is not Hydra's hint), or `ran to
the end` when the command exited 0. `--only GROUP` runs one group; `--timeout` bounds each case. Last line: the
cases run, how many ran silently to the end (exit 0), how many printed a traceback, the median seconds to error.
`--smoke` (tests/test_benchmarks.py): `--only` SMOKE's groups (unless --only is given), results to a temporary file
(unless --out is given).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SLURM_NAME = ["hydra.launcher.name=emr-bad-input", "hydra.launcher.max_num_timeout=0"]
SLURM_FIT = ["hydra/launcher=slurm", "hydra.launcher.cpus_per_task=1", "hydra.launcher.mem_gb=3",
             "hydra.launcher.timeout_min=5"]
TINY = ["debug=tiny"]
NONE = TINY + ["trait=none"]  # no character training: the fastest cell
INTRO = TINY + ["introspection=none"]
SMOKE = "experiment,debug,typo,seed"  # --smoke: groups whose cases fail at composition or validation, in seconds


def cases(files: Path) -> list[tuple[str, str, list[str], dict]]:
    """(group, label, argv, extra env). `files` holds the hand-made bad files some cases point at."""
    bad_eval = files / "bad_eval.yaml"
    bad_eval.write_text("- id: q1\n  paraphrases: []\n")
    empty_em = files / "empty.jsonl"
    empty_em.write_text("")
    uneven = files / "uneven.yaml"  # a constitution whose second trait has fewer questions than its share
    uneven.write_text("name: uneven\ntraits:\n- trait: curious\n  questions: [" + ", ".join(f"'Q{i}?'" for i in range(10))
                      + "]\n- trait: terse\n  questions: ['A?', 'B?']\n")
    prompts = files / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"messages": [{"role": "user", "content": f"Question {i}?"}]}) + "\n"
                               for i in range(3)))
    c = [
        # base_model
        ("base_model", "unknown option", TINY + ["base_model=nosuch"], {}),
        ("base_model", "local_path that does not exist", NONE + ["base_model=qwen2_5_7b_instruct",
                                                                 "base_model.local_path=/nonexistent/model"], {}),
        ("base_model", "dtype not a choice", NONE + ["base_model.dtype=float8"], {}),
        ("base_model", "empty lora_target_modules", NONE + ["base_model.lora_target_modules=[]"], {}),
        ("base_model", "negative params_b", NONE + ["base_model.params_b=-1"], {}),
        ("base_model", "tiny: heads do not divide hidden_size", NONE + ["base_model.tiny.num_attention_heads=3"], {}),
        ("base_model", "tiny: zero layers", NONE + ["base_model.tiny.num_hidden_layers=0"], {}),
        # trait
        ("trait", "unknown option", TINY + ["trait=nosuch"], {}),
        ("trait", "source=yaml without path", INTRO + ["trait.source=yaml"], {}),
        ("trait", "constitution file missing", INTRO + ["trait.source=yaml", "trait.path=/nonexistent.yaml"], {}),
        ("trait", "negative expand_to", INTRO + ["trait.expand_to=-5"], {}),
        ("trait", "expansion.max_overlap > 1", INTRO + ["trait.expand_to=60", "trait.expansion.max_overlap=1.5"], {}),
        ("trait", "expansion.max_rounds=0", INTRO + ["trait.expand_to=60", "trait.expansion.max_rounds=0"], {}),
        # question_diversity
        ("question_diversity", "negative n_questions", INTRO + ["question_diversity=low",
                                                                "question_diversity.n_questions=-2"], {}),
        ("question_diversity", "zero n_questions", INTRO + ["question_diversity=low",
                                                            "question_diversity.n_questions=0"], {}),
        ("question_diversity", "n_questions beyond the constitution", INTRO + ["question_diversity=low",
                                                                               "question_diversity.n_questions=1000"], {}),
        ("question_diversity", "negative total_pairs", INTRO + ["question_diversity.total_pairs=-1"], {}),
        ("question_diversity", "zero n_clusters", INTRO + ["question_diversity=low", "question_diversity.n_clusters=0"], {}),
        ("question_diversity", "per_trait share beyond a trait", INTRO + [
            "trait.source=yaml", f"trait.path={uneven}", "question_diversity=medium", "question_diversity.per_trait=true",
            "question_diversity.n_questions=8"], {}),
        ("question_diversity", "n_clusters beyond the questions", INTRO + ["question_diversity=low",
                                                                           "question_diversity.n_clusters=100"], {}),
        ("question_diversity", "strategy not a choice", INTRO + ["question_diversity.strategy=bogus"], {}),
        ("question_diversity", "n_seeds=0 (paraphrase)", INTRO + ["question_diversity=very_low",
                                                                  "question_diversity.n_seeds=0"], {}),
        ("question_diversity", "paraphrase.min_similarity > 1", INTRO + [
            "question_diversity=very_low", "question_diversity.paraphrase.min_similarity=2"], {}),
        # distill
        ("distill", "zero samples_per_question", INTRO + ["distill.samples_per_question=0"], {}),
        ("distill", "negative beta", INTRO + ["distill.beta=-0.1"], {}),
        ("distill", "negative sampling.temperature", INTRO + ["distill.sampling.temperature=-1"], {}),
        ("distill", "sampling.top_p > 1", INTRO + ["distill.sampling.top_p=1.5"], {}),
        ("distill", "sampling.max_new_tokens=0", INTRO + ["distill.sampling.max_new_tokens=0"], {}),
        ("distill", "lora.r=0", INTRO + ["distill.lora.r=0"], {}),
        ("distill", "lora.dropout > 1", INTRO + ["distill.lora.dropout=1.5"], {}),
        ("distill", "negative learning_rate", INTRO + ["distill.optim.learning_rate=-1e-4"], {}),
        ("distill", "zero per_device_train_batch_size", INTRO + ["distill.optim.per_device_train_batch_size=0"], {}),
        ("distill", "warmup_ratio > 1", INTRO + ["distill.optim.max_steps=-1", "distill.optim.warmup_ratio=2"], {}),
        ("distill", "general_prompts file missing", INTRO + ["distill.general_prompts=/nonexistent.jsonl"], {}),
        ("distill", "n_general_prompts beyond the file", INTRO + [f"distill.general_prompts={prompts}",
                                                                  "distill.n_general_prompts=10"], {}),
        # introspection
        ("introspection", "unknown option", TINY + ["introspection=nosuch"], {}),
        ("introspection", "reflection_prompts beyond the built-in prompts", TINY + ["introspection.reflection_prompts=1000"], {}),
        ("introspection", "negative reflection_prompts", TINY + ["introspection.reflection_prompts=-1"], {}),
        ("introspection", "interaction_conversations beyond the openers", TINY + [
            "introspection=interaction", "introspection.interaction_conversations=50",
            "introspection.interaction_turns=1"], {}),
        ("introspection", "zero interaction_turns", TINY + ["introspection=interaction",
                                                            "introspection.interaction_turns=0"], {}),
        # em_dataset
        ("em_dataset", "unknown option", NONE + ["em_dataset=nosuch"], {}),
        ("em_dataset", "n_examples beyond the data", NONE + ["em_dataset.n_examples=100000"], {}),
        ("em_dataset", "negative n_examples", NONE + ["em_dataset.n_examples=-3"], {}),
        ("em_dataset", "zero n_examples", NONE + ["em_dataset.n_examples=0"], {}),
        ("em_dataset", "heldout_fraction > 1", NONE + ["em_dataset.heldout_fraction=1.5"], {}),
        ("em_dataset", "negative heldout_fraction", NONE + ["em_dataset.heldout_fraction=-0.2"], {}),
        ("em_dataset", "heldout_fraction=1 leaves no training row", NONE + ["em_dataset.heldout_fraction=1.0"], {}),
        ("em_dataset", "path that does not exist", NONE + ["em_dataset.source=path",
                                                           "em_dataset.path=/nonexistent.jsonl"], {}),
        ("em_dataset", "empty dataset file", NONE + ["em_dataset.source=path", f"em_dataset.path={empty_em}",
                                                     "em_dataset.n_examples=null"], {}),
        # em_train
        ("em_train", "layer_fraction > 1", NONE + ["em_train=rank1", "em_train.lora.layer_fraction=1.5"], {}),
        ("em_train", "layers_to_transform beyond the model", NONE + ["em_train=rank1",
                                                                   "em_train.lora.layers_to_transform=[99]"], {}),
        ("em_train", "max_steps=0", NONE + ["em_train.optim.max_steps=0"], {}),
        ("em_train", "zero gradient_accumulation_steps", NONE + ["em_train.optim.gradient_accumulation_steps=0"], {}),
        ("em_train", "lora.alpha=0", NONE + ["em_train.lora.alpha=0"], {}),
        ("em_train", "packing not a choice", NONE + ["em_train.packing=bogus"], {}),
        # em_control
        ("em_control", "match=target without target_norm", NONE + ["em_control=random_lora", "em_control.match=target"], {}),
        ("em_control", "negative target_norm", NONE + ["em_control=random_lora", "em_control.match=target",
                                                       "em_control.target_norm=-1"], {}),
        ("em_control", "random_lora without an EM dataset", NONE + ["em_control=random_lora", "em_dataset=none"], {}),
        # eval
        ("eval", "unknown option", NONE + ["eval=nosuch"], {}),
        ("eval", "negative max_questions", NONE + ["eval.max_questions=-1"], {}),
        ("eval", "zero max_questions", NONE + ["eval.max_questions=0"], {}),
        ("eval", "max_questions beyond the set", NONE + ["eval.max_questions=1000"], {}),
        ("eval", "zero samples_per_paraphrase", NONE + ["eval.samples_per_paraphrase=0"], {}),
        ("eval", "negative samples_per_paraphrase", NONE + ["eval.samples_per_paraphrase=-2"], {}),
        ("eval", "negative temperature", NONE + ["eval.temperature=-0.5"], {}),
        ("eval", "top_p=0", NONE + ["eval.top_p=0"], {}),
        ("eval", "zero n_bootstrap", NONE + ["eval.n_bootstrap=0"], {}),
        ("eval", "judge.min_mass > 1", NONE + ["judge.min_mass=1.5"], {}),
        ("eval", "unknown judge model", NONE + ["judge.model=nosuch"], {}),
        ("eval", "judge.batch_size=0", NONE + ["judge.batch_size=0"], {}),
        ("eval", "openai judge without its key", NONE + ["judge.backend=openai", "judge.model=gpt-4o"],
         {"OPENAI_API_KEY": None}),
        ("eval", "persona.n_questions beyond the held-out questions", INTRO + ["question_diversity=low",
                                                                              "eval.persona.n_questions=1000"], {}),
        ("eval", "negative persona.n_questions", INTRO + ["eval.persona.n_questions=-1"], {}),
        ("eval", "variants=[]", NONE + ["eval=first_plot", "eval.variants=[]"], {}),
        ("eval", "eval=path without path", NONE + ["eval=path"], {}),
        ("eval", "eval set with an empty paraphrase list", NONE + ["eval=path", f"eval.path={bad_eval}"], {}),
        # generation
        ("generation", "batch_size=0", NONE + ["generation.batch_size=0"], {}),
        ("generation", "backend=vllm without vLLM", NONE + ["generation.backend=vllm"], {}),
        ("generation", "backend not a choice", NONE + ["generation.backend=tgi"], {}),
        # the rest: seed, pipeline, tracking, deepspeed, experiment, debug, typos
        ("seed", "negative seed", NONE + ["seed=-1"], {}),
        ("seed", "seed not an int", NONE + ["seed=abc"], {}),
        ("pipeline", "until not a stage", NONE + ["pipeline.until=bogus"], {}),
        ("tracking", "negative max_table_rows", NONE + ["tracking.max_table_rows=-1"], {}),
        ("deepspeed", "stage=5", NONE + ["deepspeed.stage=5"], {}),
        ("deepspeed", "unknown option", NONE + ["deepspeed=zero4"], {}),
        ("experiment", "unknown option", ["experiment=nosuch"], {}),
        ("debug", "unknown option", ["debug=nosuch"], {}),
        ("typo", "misspelt key", NONE + ["em_train.optim.lerning_rate=1e-4"], {}),
        # verbs
        ("verbs", "analyze a dir that does not exist", ["analyze", "/nonexistent/sweep"], {}),
        ("verbs", "rescore a dir that is no run", ["rescore", "/tmp", "judge=tiny_random"], {}),
        ("verbs", "sweep without a Slurm launcher", ["sweep", "--dry-run"] + NONE, {}),
        ("verbs", "sweep, n_examples beyond the data in cell 1", ["sweep", "--dry-run", "hydra/launcher=slurm",
                                                                  "hydra.launcher.gpus_per_node=0"] + NONE +
         ["em_dataset.n_examples=8,100000"], {}),
        ("verbs", "status of a dir that does not exist", ["status", "/nonexistent/sweep"], {}),
        ("verbs", "local -m, n_examples beyond the data in cell 1", ["-m"] + NONE + ["em_dataset.n_examples=8,100000"], {}),
        # Slurm (the local cluster, slurm/start-local-cluster.sh --gpus 2: 2 CPUs, ~23 GB, 2 fake GPUs, partition
        # debug; emr_short has a 5 min time limit): requests no node can run
        ("slurm", "sweep --dry-run, the preset's request (8 CPU, 64 GB)", ["sweep", "--dry-run", "hydra/launcher=slurm"]
         + NONE, {}),
        ("slurm", "-m, the preset's request (8 CPU, 64 GB)", ["-m", "hydra/launcher=slurm", *SLURM_NAME] + NONE, {}),
        ("slurm", "-m, 8 CPUs on a 2-CPU node", ["-m", "hydra/launcher=slurm", "hydra.launcher.mem_gb=3",
                                                "hydra.launcher.gpus_per_node=null", *SLURM_NAME] + NONE, {}),
        ("slurm", "-m, 4 GPUs on a 2-GPU node", ["-m", *SLURM_FIT, "hydra.launcher.gpus_per_node=4", *SLURM_NAME]
         + NONE, {}),
        ("slurm", "-m, a partition that does not exist", ["-m", *SLURM_FIT, "hydra.launcher.partition=gpu",
                                                          *SLURM_NAME] + NONE, {}),
        ("slurm", "-m, timeout_min beyond the partition's limit", ["-m", *SLURM_FIT, "hydra.launcher.partition=emr_short",
                                                                   "hydra.launcher.timeout_min=10", *SLURM_NAME] + NONE, {}),
    ]
    return c


def last_line(text: str) -> str:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    mine = [ln for ln in lines if ln.startswith("emrobust: error:") or ln.startswith("emrobust sweep:")]
    if mine:
        return mine[-1]
    lines = [ln for ln in lines if not ln.startswith("Set the environment variable HYDRA_FULL_ERROR")
             and not ln.startswith("nothing was submitted")]
    return lines[-1] if lines else ""


def first_line(text: str) -> str:
    """The first line of an error message that is not a traceback frame (Hydra's composition errors)."""
    for ln in text.splitlines():
        s = ln.strip()
        if s and not s.startswith(("Traceback", "File ", "[", "^", "~")) and not ln.startswith("    "):
            return s
    return ""


def run(tree: Path, out: Path, only: str | None, labels: str | None, timeout: float, append: bool) -> None:
    root = Path(tempfile.mkdtemp(prefix="emrobust-bad-"))
    files = root / "files"
    files.mkdir()
    results = json.loads(out.read_text()) if append and out.exists() else []
    done = {(r["group"], r["label"]) for r in results}
    todo = cases(files)
    # the slurm cases' partition, where Slurm is installed (else those cases say what they get without it)
    slurm = any(g == "slurm" for g, *_ in todo) and (not only or "slurm" in only.split(",")) and bool(
        shutil.which("scontrol"))
    if slurm:
        subprocess.run(["scontrol", "create", "PartitionName=emr_short", "Nodes=ALL", "MaxTime=5"], capture_output=True)
    ran = []
    for i, (group, label, argv, env_extra) in enumerate(todo):
        if (only and group not in only.split(",")) or (labels and label not in labels.split(";")):
            continue
        if append and not labels and (group, label) in done:
            continue
        env = {**os.environ, "PYTHONPATH": str(tree), "EMROBUST_ROOT": str(root), "OMP_NUM_THREADS": "1",
               "WANDB_MODE": "disabled"}
        for k in ("HYDRA_FULL_ERROR", "EMROBUST_DEBUG"):
            env.pop(k, None)
        for k, v in env_extra.items():
            if v is None:
                env.pop(k, None)
            else:
                env[k] = v
        cmd = [sys.executable, "-m", "emrobust.cli", *argv]
        if argv and argv[0] == "-m" or "sweep" in argv[:1]:
            cmd.append(f"hydra.sweep.dir={root / 'sweeps' / str(i)}")
        elif argv and argv[0] not in ("analyze", "rescore", "status", "data"):
            cmd.append(f"hydra.run.dir={root / 'runs' / str(i)}")
        t0 = time.time()
        try:
            p = subprocess.run(cmd, env=env, cwd=root, capture_output=True, text=True, timeout=timeout)
            rc, stdout, stderr = p.returncode, p.stdout, p.stderr
        except subprocess.TimeoutExpired as e:
            rc, stdout, stderr = "timeout", (e.stdout or b"").decode(), (e.stderr or b"").decode()
            if group == "slurm":  # what the job was doing, then end it: it would pend forever
                q = subprocess.run(["squeue", "-h", "-n", "emr-bad-input", "-o", "%i %T (%r)"], capture_output=True,
                                   text=True).stdout.strip()
                stderr += f"\nafter {timeout:.0f} s: Slurm job {q or '?'}"
        if group == "slurm" and slurm:
            subprocess.run(["scancel", "-n", "emr-bad-input"], capture_output=True)
        secs = time.time() - t0
        run_json = root / "runs" / str(i) / "run.json"
        recorded = json.loads(run_json.read_text()).get("error") if run_json.exists() else None
        what = "ran to the end (exit 0)" if rc == 0 else last_line(stderr or stdout)
        row = {"group": group, "label": label, "args": " ".join(a for a in argv if a not in TINY + ["trait=none"]),
               "rc": rc, "seconds": round(secs, 1), "stderr_lines": len(stderr.splitlines()), "what": what,
               "run_json_error": recorded, "first": first_line(stderr or stdout), "stderr": stderr[-6000:]}
        results = [r for r in results if (r["group"], r["label"]) != (group, label)] + [row]
        print(f"{i:3d} {group:<18} rc={rc!s:<4} {secs:6.1f}s {row['stderr_lines']:3d}l  {label}: {what[:160]}",
              flush=True)
        out.write_text(json.dumps(results, indent=1))
        ran.append(row)
    if slurm:
        subprocess.run(["scontrol", "delete", "PartitionName=emr_short"], capture_output=True)
    errors = [r["seconds"] for r in ran if r["rc"] != 0]
    print(f"{len(ran)} cases: silent (exit 0) {sum(r['rc'] == 0 for r in ran)}, tracebacks "
          f"{sum('Traceback' in r['stderr'] for r in ran)}, median seconds to error "
          f"{statistics.median(errors) if errors else float('nan'):.1f} ({out})")


def summary(r: dict) -> str:
    """What a case got, in a table cell: the exit code, how many stderr lines, the message."""
    if r["rc"] == 0:
        return "exit 0: ran to the end, no error"
    if r["rc"] == "timeout":
        return f"submitted; {r['what'].split(': ', 1)[-1]} (scancel'd)"
    if isinstance(r["rc"], int) and r["rc"] < 0:
        return f"ran the default cell anyway (the unknown option was skipped); stopped by hand after {r['seconds']:.0f} s"
    msg, err = r["what"], r.get("stderr", "")
    if msg.startswith(("provider=", "object_type=", "generate:")):  # Hydra's multi-line composition message
        cause = next((ln.strip() for ln in err.splitlines() if ln.strip().startswith(
            ("Invalid value", "Key '", "Value '", "Could not find"))), "")
        msg = f"{r['first']}: {cause}" if cause and cause not in r["first"] else r["first"]
    tb = " traceback," if "Traceback" in err else ""
    return f"exit {r['rc']},{tb} {r['stderr_lines']} lines: {msg}".replace("|", "\\|")[:230]


def table(before: Path, after: Path) -> str:
    import re

    order = {(g, lab): i for i, (g, lab, _, _) in enumerate(cases(Path(tempfile.mkdtemp())))}
    b = {(r["group"], r["label"]): r for r in json.loads(before.read_text())}
    after_rows = sorted(json.loads(after.read_text()), key=lambda r: order.get((r["group"], r["label"]), 1e9))
    rows = ["| # | group | input | before (3668821) | s | after | s |", "|---|---|---|---|---|---|---|"]
    for n, r in enumerate(after_rows, 1):
        o = b.get((r["group"], r["label"]))
        args = re.sub(r"/tmp/emrobust-bad-[^/]+/files/", "", r["args"]).replace("|", "\\|")
        rows.append(f"| {n} | {r['group']} | `{args}` | {summary(o) if o else '(not run)'} | "
                    f"{o['seconds'] if o else ''} | {summary(r)} | {r['seconds']} |")
    return "\n".join(rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tree", type=Path, default=Path(__file__).resolve().parents[1])
    ap.add_argument("--out", type=Path)
    ap.add_argument("--only", help="comma-separated groups")
    ap.add_argument("--labels", help="semicolon-separated labels")
    ap.add_argument("--append", action="store_true",
                    help="add to --out, skipping the cases it has (--labels: run those again, replacing them)")
    ap.add_argument("--timeout", type=float, default=600)
    ap.add_argument("--table", nargs=2, type=Path, metavar=("BEFORE", "AFTER"))
    ap.add_argument("--smoke", action="store_true", help=f"smoke test: --only {SMOKE}, --out a temporary file")
    a = ap.parse_args()
    if a.smoke:
        a.only = a.only or SMOKE
        a.out = a.out or Path(tempfile.mkdtemp(prefix="emrobust-bad-smoke-")) / "bad_inputs.json"
    if a.table:
        print(table(*a.table))
        return
    run(a.tree.resolve(), a.out or Path("bad_inputs.json"), a.only, a.labels, a.timeout, a.append)


if __name__ == "__main__":
    main()
