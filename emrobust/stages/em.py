"""em: LoRA SFT on the corrupted dataset, starting from the persona model (fold output) or the base model.

Confounds removed by construction:
- the starting weights are the persona's: their fingerprint must equal the fold manifest's, checked before
  training and recorded;
- the EM LoRA's initial weights depend only on the EM stage seed: the RNG is reset after loading;
- the chat template used for training is recorded (evaluation uses the same tokenizer and template).

A defense (`defense=<name>`, emrobust/train/defenses.py) changes what is trained on (inoculation, interleave: the
training rows only, never the held-out ones) or how (kl, steer, early_stop: the trainer); `defense=steer` reads
the `directions` stage upstream, `early_stop` the probe items of its split (and the `directions` stage when it stops
on a direction). `interleave` with `select=perplexity_gap` reads a misaligned reference upstream (`reference`: the
`em@reference` node, this stage with `params.reference_steps`: the starting model after that many undefended
steps on the cell's dataset, no held-out measures or kept steps).

Options: `em_train.full_finetune=true` trains every weight and writes `model/` instead of `adapter/`;
`em_control=random_lora` writes a random adapter of the EM adapter's shape and (per module) norm instead of the
trained one (see conf/em_control/random_lora.yaml). Checkpoints (`optim.save_steps`) are written to the store's
checkpoint dir for this key (`ctx.trainer_dir`), which a killed build (preemption, requeue) leaves behind so the
next build resumes from the newest complete one; it is removed once the artifact is complete, and the steps
saved (and the step resumed from) are in the manifest.
"""
from __future__ import annotations

import hashlib
import json
import shutil

import torch
from omegaconf import OmegaConf

from ..core import models
from ..core.keys import Read
from ..core.store import file_sha256
from ..data import em_datasets, inputs
from ..errors import ConfigError
from ..measures import probe
from ..train import defenses, training
from . import Context, record_training, write_jsonl

VERSION = 6  # 3: declared reads; 4: train.jsonl is what is trained on (dropped.jsonl apart), token accounting;
#             5: adapters along training (checkpoint_every), held-out loss curve; 6: defenses, held-out accuracy
DISTRIBUTED = True  # trains: runs on every rank of a multi-process job (emrobust.core.distributed)


def _stops_early(cfg) -> bool:
    """Does early stopping read the probe items (every measure but `task`, which reads the held-out split)?"""
    return cfg.defense.name == "early_stop" and str(cfg.defense.early_stop.measure) != defenses.TASK


READS = ("em_dataset", "em_train", "em_control", "defense", "base_model.lora_target_modules", "base_model.dtype",
         Read("eval.probe.path", when=_stops_early))
CONTENT = {"dataset_sha256": lambda cfg: inputs.content_id(cfg, "em_dataset"),
           "interleave_sha256": lambda cfg: inputs.content_id(cfg, "defense.interleave"),
           "probe_sha256": lambda cfg: file_sha256(probe.path(cfg.eval.probe)) if _stops_early(cfg) else None}



def trains(cfg) -> bool:
    """Does the stage train on the dataset (not for a random LoRA matched to a target norm)?"""
    return not (cfg.em_control.name == "random_lora" and cfg.em_control.match == "target")


def record(cfg, node_id: str, manifest: dict, summary: dict) -> None:
    """run.json keeps the data EM trained on, with the cell's own allowed drop share beside the measured one."""
    record_training(cfg, node_id, manifest, summary)
    if node_id in summary["training"]:
        summary["training"][node_id]["max_drop_share"] = cfg.em_train.max_drop_share


def accept(cfg, out, data: dict, screen=None) -> None:
    """Checks of an em artifact for the cell that uses it, built or reused: at most `em_train.max_drop_share` of
    the training examples dropped because their assistant turn starts past `optim.max_length`."""
    share, allowed = data.get("drop_share"), cfg.em_train.max_drop_share
    if share is None or share <= allowed:
        return

    raise ConfigError(
        f"em: {data['dropped_max_length']} of {data['input_examples']} training examples ({share:.1%}) have no "
        f"assistant token within em_train.optim.max_length={cfg.em_train.optim.max_length} and would be dropped, "
        f"more than em_train.max_drop_share={allowed:g}; em_train.optim.max_length={data['length_keeping_all']} "
        f"keeps every one of them ({data['longest']} trains every example whole)", where="em_train.optim.max_length")


def _gaps(ctx: Context, tok, convs: list[list[dict]]) -> list[float]:
    """Each conversation's perplexity gap (select=perplexity_gap): its mean assistant-token loss under the
    misaligned reference (`em@reference`) minus under the starting model, in nats per token."""
    cfg, length = ctx.cfg, ctx.cfg.em_train.optim.max_length
    dtype = models.dtype_for(cfg.base_model, ctx.device)
    model = models.load(ctx.model_path("start"), ctx.device, dtype)
    aligned = training.assistant_losses(model, tok, convs, length)
    ref = ctx.inputs["reference"]
    model = (models.load(ref / "model", ctx.device, dtype) if (ref / "model").is_dir()
             else training.merge_adapter(model, ref / "adapter"))
    misaligned = training.assistant_losses(model, tok, convs, length)
    del model
    return [m - a for m, a in zip(misaligned, aligned)]


def run(ctx: Context) -> dict:
    cfg = ctx.cfg
    em_rows, held = em_datasets.split(em_datasets.load_all(cfg.em_dataset, cfg.paths), cfg.em_dataset, ctx.seed)
    start = ctx.model_path("start")
    tok = models.load_tokenizer(start)
    optim = cfg.em_train.optim
    reference = ctx.params.get("reference_steps")
    if reference:  # the misaligned reference of select=perplexity_gap: a short undefended run, no held-out measures
        train_rows, sources, defended = em_rows, ["em"] * len(em_rows), {}
        optim, held = OmegaConf.merge(optim, {"max_steps": int(reference)}), []
    else:  # the defense's training rows (inoculation, interleave); the held-out rows stay as they are
        gap = (lambda convs: _gaps(ctx, tok, convs)) if defenses.selects_by_gap(cfg) else None
        train_rows, sources, defended = defenses.training_rows(cfg, em_rows, ctx.seed, gap)
        if defended.get("gaps"):  # every candidate's gap, beside the manifest's summary of the selection
            write_jsonl(ctx.out / "interleave_gaps.jsonl", defended.pop("gaps"))
    data = training.prepare_sft(tok, train_rows, cfg.em_train.optim.max_length) if trains(cfg) else None
    if data is not None:
        accept(cfg, ctx.out, data.summary())  # before the model loads
        # what is trained on; the examples max_length left without an assistant token, apart
        write_jsonl(ctx.out / "train.jsonl", [{"messages": train_rows[i]} | ({"source": sources[i]} if
                                              defenses.active(cfg) == "interleave" else {}) for i in data.kept])
        if data.dropped:
            write_jsonl(ctx.out / "dropped.jsonl", [{"messages": train_rows[i], "reason": "max_length",
                                                     "length_keeping_it": n} for i, n in data.dropped.items()])
    if held:
        write_jsonl(ctx.out / "heldout.jsonl", [{"messages": m} for m in held])
    model = models.load(start, ctx.device, models.dtype_for(cfg.base_model, ctx.device))
    start_fp = models.fingerprint(model)
    persona = ctx.manifests["start"].get("stage") == "fold"
    expected = ctx.manifests["start"]["fingerprint"] if persona else None
    if expected is not None and start_fp != expected:
        raise RuntimeError(f"em: starting weights {start_fp[:12]} are not the persona model {expected[:12]}")
    out: dict = {
        "start_model": str(start),
        "start_fingerprint": start_fp,
        "persona": persona,
        "chat_template_sha256": _sha(tok.chat_template or ""),
        "n_train": len(train_rows),
        "n_heldout": len(held),
        "full_finetune": bool(cfg.em_train.full_finetune),
        "control": cfg.em_control.name,
    }
    every = None if reference else cfg.em_train.checkpoint_every
    defense_kw, stopper = ({}, None) if reference else defenses.trainer_kwargs(cfg, ctx, tok, held)
    sft = lambda m: training.run_sft(m, tok, train_rows, optim, ctx.trainer_dir, ctx.seed, ctx.device,  # noqa: E731
                                     ds=cfg.deepspeed, packing=cfg.em_train.packing, data=data, snapshot_every=every,
                                     heldout=held or None, **defense_kw)
    if cfg.em_train.full_finetune:
        training.set_seed(ctx.seed)
        hist = sft(model)
        model.save_pretrained(ctx.out / "model")
        tok.save_pretrained(ctx.out / "model")
        out |= {"init_adapter_fingerprint": None, "end_fingerprint": models.fingerprint(model)}
    else:
        peft_model = training.attach_lora(model, cfg.em_train.lora, cfg.base_model, ctx.seed)
        out["init_adapter_fingerprint"] = training.adapter_fingerprint(peft_model)
        if cfg.em_control.name == "random_lora":
            hist, out["random_lora"] = _random_lora(ctx, peft_model, sft)
        else:
            hist = sft(peft_model)
            out["adapter_norms"] = training.lora_delta_norms(peft_model)
        peft_model.save_pretrained(ctx.out / "adapter")
    out["checkpoints"] = (hist or {}).get("checkpoints", [])
    # the adapters kept along training (em_train.checkpoint_every): steps/<N>/ beside the final one
    snaps = sorted((int(p.name) for p in (ctx.trainer_dir / "steps").glob("*") if p.name.isdigit()
                    and any(p.glob("*.safetensors"))), key=int) if cfg.em_control.name == "none" else []
    for n in snaps:
        shutil.copytree(ctx.trainer_dir / "steps" / str(n), ctx.out / "steps" / str(n))
    out["snapshots"] = snaps
    out["heldout_loss"] = (hist or {}).get("heldout_loss", {})
    out["heldout_accuracy"] = (hist or {}).get("heldout_accuracy", {})
    out["defense"] = ({"name": "none", "reference_of": "defense.interleave.select=perplexity_gap"} if reference
                      else defended | defenses.report(cfg, ctx, hist, stopper))
    if hist is not None:
        (ctx.out / "train_log.json").write_text(json.dumps(hist.pop("log_history"), indent=1))
        d = hist.pop("data")
        out["data"] = d | {"mean_tokens": d["tokens"] / max(d["examples"], 1)}
    out["train"] = hist
    return out


def _random_lora(ctx: Context, peft_model, sft) -> tuple[dict | None, dict]:
    """Replace the adapter's weights by a random LoRA whose per-module update norm matches the target."""
    c = ctx.cfg.em_control
    info: dict = {"match": c.match}
    hist = None
    if c.match == "trained":
        init = {k: v.detach().clone() for k, v in peft_model.state_dict().items() if "lora_" in k}
        hist = sft(peft_model)
        target = training.lora_delta_norms(peft_model)
        info["trained_adapter_fingerprint"] = training.adapter_fingerprint(peft_model)
        with torch.no_grad():  # back to the seeded init (A as EM training would start it), then random B
            sd = peft_model.state_dict()
            for k, v in init.items():
                sd[k].copy_(v)
    else:
        target = float(c.target_norm)
    info["target_norms"] = target
    info["norms"] = training.randomize_lora_(peft_model, target, ctx.seed)
    info["adapter_fingerprint"] = training.adapter_fingerprint(peft_model)
    return hist, info


def _sha(s: str) -> str:
    return hashlib.sha256(s.encode()).hexdigest()
