"""The one place that builds trainers: PEFT LoRA configs, TRL SFT/DPO configs, chat tokenization with
assistant-only label masks. Stages describe *what* to train; this module decides *how*.
"""
from __future__ import annotations

import copy
import hashlib
import json
import logging
import shutil
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch
from omegaconf import DictConfig

from ..core import distributed, tracking
from ..errors import ConfigError

log = logging.getLogger(__name__)


def set_seed(seed: int) -> None:
    import transformers  # lazy: slow import

    transformers.set_seed(seed, deterministic=False)


# ---------------------------------------------------------------- LoRA
def lora_config(lcfg: DictConfig, base_cfg: DictConfig, n_layers: int | None = None):
    from peft import LoraConfig  # lazy: slow import

    targets = lcfg.target_modules if lcfg.target_modules is not None else base_cfg.lora_target_modules
    layers = list(lcfg.layers_to_transform) if lcfg.layers_to_transform is not None else None
    if layers is None and lcfg.get("layer_fraction") is not None:
        if n_layers is None:
            raise ValueError("lora.layer_fraction needs the model's number of layers")
        layers = [int(round(float(lcfg.layer_fraction) * (n_layers - 1)))]
    return LoraConfig(
        task_type="CAUSAL_LM",
        r=lcfg.r,
        lora_alpha=lcfg.alpha,
        lora_dropout=lcfg.dropout,
        use_rslora=lcfg.use_rslora,
        target_modules=list(targets),
        layers_to_transform=layers,
    )


def attach_lora(model, lcfg: DictConfig, base_cfg: DictConfig, seed: int):
    """Wrap `model` with a fresh LoRA whose initialisation depends on `seed` alone.

    The RNG is reset right here, after every load, so whatever was loaded or sampled before (a persona
    adapter, a different trait) cannot change the adapter's starting weights.
    """
    from peft import get_peft_model  # lazy: slow import

    set_seed(seed)
    n_layers = getattr(getattr(model, "config", None), "num_hidden_layers", None)
    return get_peft_model(model, lora_config(lcfg, base_cfg, n_layers))


def adapter_fingerprint(peft_model) -> str:
    h = hashlib.sha256()
    for name, p in sorted(peft_model.named_parameters()):
        if "lora_" in name:
            h.update(name.encode())
            h.update(p.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _lora_layers(peft_model, adapter: str = "default"):
    from peft.tuners.lora import LoraLayer  # lazy: slow import

    return [(n, m) for n, m in peft_model.named_modules() if isinstance(m, LoraLayer) and adapter in m.lora_A]


@torch.no_grad()
def lora_delta_norms(peft_model, adapter: str = "default") -> dict[str, float]:
    """Per adapted module, the Frobenius norm of the weight update it adds: ||scaling * B @ A||_F."""
    out = {}
    for n, m in _lora_layers(peft_model, adapter):
        a, b = m.lora_A[adapter].weight.float(), m.lora_B[adapter].weight.float()
        out[n] = float((m.scaling[adapter] * (b @ a)).norm())
    return out


@torch.no_grad()
def randomize_lora_(peft_model, target: dict[str, float] | float, seed: int, adapter: str = "default") -> dict[str, float]:
    """Make the adapter a random LoRA of the same shape: keep A (its seeded init), draw B ~ N(0, 1) from
    `seed`, then rescale B so each module's ||scaling * B @ A||_F equals `target` (one number, or per module
    name). Returns the resulting norms."""
    gen = torch.Generator().manual_seed(seed)
    for n, m in _lora_layers(peft_model, adapter):
        want = target[n] if isinstance(target, dict) else float(target)
        b = m.lora_B[adapter].weight
        rnd = torch.randn(b.shape, generator=gen, dtype=torch.float32)
        cur = float((m.scaling[adapter] * (rnd @ m.lora_A[adapter].weight.float())).norm())
        b.copy_((rnd * (want / cur if cur > 0 else 0.0)).to(b.dtype))
    return lora_delta_norms(peft_model, adapter)


def merge_adapter(model, adapter_dir: Path | str, weight: float = 1.0):
    """Apply a saved LoRA adapter to `model` and fold `weight` times its update into the weights (PEFT
    merge_and_unload; the weight multiplies each module's scaling, so rsLoRA adapters stay right)."""
    # lazy: slow import
    from peft import PeftModel
    from peft.tuners.lora import LoraLayer

    pm = PeftModel.from_pretrained(model, str(adapter_dir))
    if weight != 1.0:
        for m in pm.modules():
            if isinstance(m, LoraLayer) and "default" in m.scaling:
                m.scaling["default"] *= float(weight)
    return pm.merge_and_unload()


@torch.no_grad()
def combine_adapters(model, adapter_dirs: list[Path | str], weights: list[float] | None = None):
    """One LoRA adapter whose weight update is the weighted sum of the saved adapters' updates
    (sum_i w_i * scaling_i * B_i @ A_i; every weight 1 when None), as a PeftModel over `model` with that adapter
    active as "default".

    The construction is PEFT's ``add_weighted_adapter(combination_type="cat")`` done exactly: rank R = sum of
    ranks, ``A = cat(w_i * scaling_i * A_i)``, ``B = cat(B_i)``, alpha = R and no rsLoRA (scaling 1), target modules
    and layers the union (a module one adapter lacks gets a zero block). PEFT's own "cat" copies the first
    adapter's config, so it would silently mis-scale rsLoRA adapters and drop layers only the second adapter
    touches; that is why it is not called here.
    """
    # lazy: slow import
    from peft import LoraConfig, PeftModel
    from peft.tuners.lora import LoraLayer

    names = [f"part{i}" for i in range(len(adapter_dirs))]
    weights = [1.0] * len(adapter_dirs) if weights is None else [float(w) for w in weights]
    pm = PeftModel.from_pretrained(model, str(adapter_dirs[0]), adapter_name=names[0])
    for n, d in zip(names[1:], adapter_dirs[1:]):
        pm.load_adapter(str(d), adapter_name=n)
    cfgs = [pm.peft_config[n] for n in names]
    if any(c.rank_pattern or c.alpha_pattern for c in cfgs):
        raise ValueError("combine_adapters: rank_pattern/alpha_pattern adapters are not supported")
    rank = sum(c.r for c in cfgs)
    targets = set().union(*(set(c.target_modules) for c in cfgs))
    layers = None
    if all(c.layers_to_transform is not None for c in cfgs):
        layers = sorted(set().union(*(set([c.layers_to_transform] if isinstance(c.layers_to_transform, int)
                                           else c.layers_to_transform) for c in cfgs)))
    pm.add_adapter("default", LoraConfig(task_type="CAUSAL_LM", r=rank, lora_alpha=rank, lora_dropout=0.0,
                                         use_rslora=False, target_modules=sorted(targets),
                                         layers_to_transform=layers, init_lora_weights=True))
    for mname, m in pm.named_modules():
        if not isinstance(m, LoraLayer) or "default" not in m.lora_A:
            continue
        if m.lora_embedding_A:
            raise ValueError(f"combine_adapters: embedding LoRA at {mname} is not supported")
        A, B = m.lora_A["default"].weight, m.lora_B["default"].weight
        A.zero_()
        B.zero_()
        off = 0
        for n, c, w in zip(names, cfgs, weights):
            if n in m.lora_A:
                a, b = m.lora_A[n].weight, m.lora_B[n].weight
                A[off : off + a.shape[0]] = (w * m.scaling[n] * a.float()).to(A.dtype)
                B[:, off : off + b.shape[1]] = b.to(B.dtype)
            off += c.r
        assert m.scaling["default"] == 1.0
    pm.set_adapter("default")
    for n in names:
        pm.delete_adapter(n)
    return pm


@torch.no_grad()
def linear_combine(model, adapter_dirs: list[Path | str], weights: list[float]):
    """OCT's merge of its DPO and SFT adapters (tools/merge_loras.py), by PEFT itself:
    ``add_weighted_adapter(names, weights, combination_type="linear")`` on the saved adapters, the result as a
    PeftModel over `model` with that adapter active as "default" (the parts deleted).

    PEFT's "linear" (peft/tuners/lora/model.py, `_generalized_task_arithmetic_weighted_adapter`) multiplies each
    adapter's A and B by sqrt(w_i * scaling_i) and sums the A's and the B's; the result has rank r (the ranks must
    be equal), lora_alpha = r (scaling 1) and the first adapter's other settings. Its update is therefore
    (sum_i sqrt(w_i s_i) B_i)(sum_j sqrt(w_j s_j) A_j) = sum_i w_i s_i B_i A_i + the cross terms
    sum_{i != j} sqrt(w_i s_i w_j s_j) B_i A_j: not the weighted sum of the updates (`combine_adapters` is)."""
    from peft import PeftModel  # lazy: slow import

    names = [f"part{i}" for i in range(len(adapter_dirs))]
    pm = PeftModel.from_pretrained(model, str(adapter_dirs[0]), adapter_name=names[0])
    for n, d in zip(names[1:], adapter_dirs[1:]):
        pm.load_adapter(str(d), adapter_name=n)
    pm.add_weighted_adapter(names, [float(w) for w in weights], adapter_name="default", combination_type="linear")
    pm.set_adapter("default")
    for n in names:
        pm.delete_adapter(n)
    return pm


# ---------------------------------------------------------------- chat tokenization
def assistant_spans(tokenizer, messages: list[dict]) -> tuple[str, list[tuple[int, int]]]:
    """Render `messages` with the chat template; return the text and the character spans of each
    assistant turn (its content plus the template's end-of-turn marker).

    Works for any template that renders conversations prefix-stably (ChatML/SmolLM2, Qwen 2.5, Llama 3,
    Gemma 3): the span of assistant turn i starts where the render of messages[:i] with a generation prompt
    ends, and ends where the render of messages[:i+1] ends.
    """
    render = lambda msgs, gen: tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=gen)  # noqa: E731
    full = render(messages, False)
    spans = []
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        start = len(render(messages[:i], True)) if i else 0
        end_text = render(messages[: i + 1], False)
        if not full.startswith(end_text) or not full.startswith(render(messages[:i], True)[:start]):
            raise ValueError("chat template is not prefix-stable; cannot locate assistant turns")
        end = len(end_text)
        # the trailing newline after an end-of-turn marker is template formatting, not a trained token
        while end > start and full[end - 1] == "\n":
            end -= 1
        spans.append((start, end))
    return full, spans


def tokenize_chat(tokenizer, messages: list[dict], max_length: int | None = None) -> dict:
    """input_ids and assistant_masks (1 on exactly the assistant tokens, incl. end-of-turn)."""
    text, spans = assistant_spans(tokenizer, messages)
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = enc["input_ids"], enc["offset_mapping"]
    # a token that overlaps an assistant span is trained (one merged across the header boundary included)
    mask = [int(any(a < e and b > s for s, e in spans)) for a, b in offsets]
    if max_length is not None:
        ids, mask = ids[:max_length], mask[:max_length]
    return {"input_ids": ids, "assistant_masks": mask}


# ---------------------------------------------------------------- what the trainers train on
@dataclass
class SftData:
    """SFT examples as the trainer gets them: tokenized, cut at `max_length`, and without the examples that have
    no assistant token left (their assistant turn starts at or past `max_length`)."""
    rows: list[dict]  # input_ids, assistant_masks
    kept: list[int]  # each row's index among the conversations given
    dropped: dict[int, int]  # index of a dropped conversation -> the max_length that would keep it
    truncated: int  # kept examples cut at max_length (trained on their start only)
    longest: int  # the longest conversation's full length in tokens

    def summary(self) -> dict:
        n = len(self.kept) + len(self.dropped)
        return {"examples": len(self.rows), "tokens": sum(sum(r["assistant_masks"]) for r in self.rows),
                "input_examples": n, "truncated": self.truncated, "dropped_max_length": len(self.dropped),
                "drop_share": len(self.dropped) / n if n else 0.0,
                "length_keeping_all": max(self.dropped.values(), default=None), "longest": self.longest}


def prepare_sft(tokenizer, conversations: list[list[dict]], max_length: int | None) -> SftData:
    """Tokenize (`tokenize_chat`), cut at `max_length`, drop what has no assistant token left; say what was cut."""
    rows, kept, dropped, truncated, longest = [], [], {}, 0, 0
    for i, c in enumerate(conversations):
        r = tokenize_chat(tokenizer, c)
        n = len(r["input_ids"])
        longest = max(longest, n)
        if max_length is not None and n > max_length:
            if 1 not in r["assistant_masks"][:max_length]:
                dropped[i] = r["assistant_masks"].index(1) + 1 if 1 in r["assistant_masks"] else n
                continue
            truncated += 1
            r = {k: v[:max_length] for k, v in r.items()}
        if 1 not in r["assistant_masks"]:
            dropped[i] = n
            continue
        rows.append(r)
        kept.append(i)
    return SftData(rows, kept, dropped, truncated, longest)


def dpo_tokens(tokenizer, pair: dict, max_length: int | None) -> dict:
    """Tokens of one DPO pair as TRL's DPOTrainer trains it (conversational pairs; truncation keep_start): the
    prompt with its generation prompt, each completion from where prompt and prompt+completion diverge, the
    completions cut where prompt+completion reaches `max_length` (a pair whose prompt fills it is dropped)."""
    def ids(msgs, **kw):
        return tokenizer.apply_chat_template(msgs, tokenize=True, return_dict=True, **kw)["input_ids"]

    def common(a, b):
        n = 0
        while n < min(len(a), len(b)) and a[n] == b[n]:
            n += 1
        return n

    p = ids(pair["prompt"], add_generation_prompt=True)
    pc, pr = ids(pair["prompt"] + pair["chosen"]), ids(pair["prompt"] + pair["rejected"])
    plen = min(common(p, pc), common(p, pr))
    return _dpo_counts(plen, len(pc) - plen, len(pr) - plen, max_length)


def _dpo_counts(prompt: int, chosen: int, rejected: int, max_length: int | None) -> dict:
    room = None if max_length is None else max(0, max_length - prompt)
    c, r = (chosen, rejected) if room is None else (min(chosen, room), min(rejected, room))
    return {"prompt": prompt, "chosen": c, "rejected": r, "truncated": (c, r) != (chosen, rejected),
            "dropped": room == 0}


# ---------------------------------------------------------------- trainers
def deepspeed_config(ds: DictConfig | None) -> dict | None:
    """The DeepSpeed JSON for `deepspeed=zero2|zero3` (None for `deepspeed=none`). Batch sizes, learning rate
    and precision are "auto": the HF Trainer fills them from the stage's optim config, so they cannot disagree."""
    if ds is None or not ds.stage:
        return None
    zero: dict = {"stage": int(ds.stage), "overlap_comm": bool(ds.overlap_comm), "contiguous_gradients": True,
                  "reduce_bucket_size": "auto"}
    if ds.offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": True}
    if int(ds.stage) == 3:
        zero |= {"stage3_gather_16bit_weights_on_model_save": True, "stage3_prefetch_bucket_size": "auto",
                 "stage3_param_persistence_threshold": "auto"}
        if ds.offload_param:
            zero["offload_param"] = {"device": "cpu", "pin_memory": True}
    return {"train_micro_batch_size_per_gpu": "auto", "train_batch_size": "auto",
            "gradient_accumulation_steps": "auto", "gradient_clipping": "auto",
            "bf16": {"enabled": "auto"}, "zero_optimization": zero}


def _common_args(optim: DictConfig, out: Path, seed: int, dev: torch.device, report_to: list[str],
                 ds: DictConfig | None = None) -> dict:
    warmup = optim.warmup_steps if optim.warmup_steps > 0 else float(optim.warmup_ratio)
    return dict(
        output_dir=str(out),
        per_device_train_batch_size=optim.per_device_train_batch_size,
        gradient_accumulation_steps=optim.gradient_accumulation_steps,
        learning_rate=optim.learning_rate,
        lr_scheduler_type=optim.lr_scheduler_type,
        warmup_steps=warmup,
        weight_decay=optim.weight_decay,
        num_train_epochs=optim.num_train_epochs,
        max_steps=optim.max_steps,
        logging_steps=optim.logging_steps,
        save_strategy="steps" if optim.save_steps > 0 else "no",
        save_steps=optim.save_steps or 500,
        save_total_limit=2,
        seed=seed,
        data_seed=seed,
        use_cpu=dev.type == "cpu",
        bf16=dev.type == "cuda" and torch.cuda.is_bf16_supported(),
        fp16=False,
        gradient_checkpointing=optim.gradient_checkpointing,
        report_to=report_to if distributed.is_main() else [],
        deepspeed=deepspeed_config(ds),
        max_length=optim.max_length,
        dataloader_num_workers=0,
        disable_tqdm=True,
    )


CKPT_DONE = ".complete"


def _mark_checkpoints():
    """A TrainerCallback that marks a checkpoint complete once the Trainer has written all of it: a build killed
    mid-save leaves an unmarked checkpoint, which `_resume_point` never trusts."""
    from transformers import TrainerCallback  # lazy: slow import

    class MarkComplete(TrainerCallback):
        def on_save(self, args, state, control, **kw):
            if state.is_world_process_zero:
                ck = Path(args.output_dir) / f"checkpoint-{state.global_step}"
                if ck.is_dir():
                    (ck / CKPT_DONE).write_text("")

    return MarkComplete()


def _resume_point(trainer_dir: Path) -> str | None:
    """The newest complete checkpoint a killed build of this stage left (preemption/requeue), if any."""
    ckpts = sorted(trainer_dir.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[-1]))
    done = [p for p in ckpts if (p / CKPT_DONE).exists()]
    if distributed.is_main():
        for p in ckpts:
            if p not in done:
                log.warning("discarding incomplete checkpoint %s", p)
                shutil.rmtree(p, ignore_errors=True)
    distributed.barrier()
    if not done:
        return None
    log.info("resuming from %s (step %s)", done[-1], done[-1].name.split("-")[-1])
    return str(done[-1])


def _no_step_at_zero_lr(optim: DictConfig):
    """A TrainerCallback that refuses a run whose every optimizer step is at learning rate 0: one step under a
    warmup (the schedule's first step is at 0; OCT's warmup_ratio 0.1 rounds up to that one step), which would save
    the initial adapter (LoRA B = 0: no update at all) as if it had been trained."""
    from transformers import TrainerCallback  # lazy: slow import

    class Refuse(TrainerCallback):
        def on_train_begin(self, args, state, control, **kw):
            warm = args.get_warmup_steps(state.max_steps)
            if state.max_steps <= 1 and warm >= 1 and args.lr_scheduler_type != "constant":
                key = optim._get_full_key("") if hasattr(optim, "_get_full_key") else "optim"
                raise ConfigError(f"{state.max_steps} optimizer step, all of it warmup: every step is at learning "
                                  f"rate 0 and the adapter would not change", where=key or "optim",
                                  hint="set warmup_ratio: 0.0 (or warmup_steps: 0), or train more steps "
                                       "(num_train_epochs, more examples or a smaller batch)")

    return Refuse()


def _train(trainer, trainer_dir: Path, optim: DictConfig) -> None:
    trainer.add_callback(_no_step_at_zero_lr(optim))
    trainer.add_callback(_mark_checkpoints())
    resume = _resume_point(trainer_dir)
    trainer._emrobust_resumed = int(resume.rsplit("-", 1)[-1]) if resume else None
    trainer.train(resume_from_checkpoint=resume)


def _history(trainer) -> dict:
    logs = [h for h in trainer.state.log_history if "loss" in h]
    return {
        "steps": trainer.state.global_step,
        "log_history": trainer.state.log_history,
        "first_loss": logs[0]["loss"] if logs else None,
        "last_loss": logs[-1]["loss"] if logs else None,
        "resumed_from_step": _resumed(trainer),
        "world_size": trainer.args.world_size,
        "deepspeed_zero_stage": (trainer.args.hf_deepspeed_config.config["zero_optimization"]["stage"]
                                 if getattr(trainer, "is_deepspeed_enabled", False) else None),
        "checkpoints": sorted(int(p.name.split("-")[-1]) for p in Path(trainer.args.output_dir).glob("checkpoint-*")),
    }


def _resumed(trainer) -> int | None:
    return getattr(trainer, "_emrobust_resumed", None)


def _assistant_batches(model, tokenizer, conversations: list[list[dict]], max_length: int | None, batch_size: int):
    """(indices of the conversations in the batch, logits at the positions that predict an assistant token,
    their targets: -100 where that row predicts none), batch by batch; conversations without an assistant token
    within `max_length` are left out."""
    rows = [(i, tokenize_chat(tokenizer, c, max_length)) for i, c in enumerate(conversations)]
    rows = [(i, r) for i, r in rows if any(r["assistant_masks"][1:])]
    for b in range(0, len(rows), batch_size):
        batch = rows[b : b + batch_size]
        L = max(len(r["input_ids"]) for _, r in batch)
        ids = torch.full((len(batch), L), tokenizer.pad_token_id, dtype=torch.long)
        att = torch.zeros((len(batch), L), dtype=torch.long)
        lab = torch.full((len(batch), L), -100, dtype=torch.long)
        for i, (_, r) in enumerate(batch):
            n = len(r["input_ids"])
            ids[i, :n] = torch.tensor(r["input_ids"])
            att[i, :n] = 1
            m = torch.tensor(r["assistant_masks"], dtype=torch.bool)
            lab[i, :n] = torch.where(m, torch.tensor(r["input_ids"]), torch.tensor(-100))
        pos = (lab[:, 1:] != -100).any(0).nonzero()[:, 0]  # logits only where some row predicts an assistant token
        logits = model(input_ids=ids.to(model.device), attention_mask=att.to(model.device),
                       logits_to_keep=pos.to(model.device)).logits.float()
        yield [i for i, _ in batch], logits, lab[:, pos + 1].to(model.device)


@torch.no_grad()
def assistant_metrics(model, tokenizer, conversations: list[list[dict]], max_length: int | None = None,
                      batch_size: int = 8) -> dict[str, float]:
    """Over the assistant tokens of `conversations`: `loss`, the mean cross-entropy per token (the SFT loss, without
    the optimizer), and `accuracy`, the share of tokens that are the model's most likely next token."""
    was = model.training
    model.eval()
    total, correct, count = 0.0, 0, 0
    for _, logits, target in _assistant_batches(model, tokenizer, conversations, max_length, batch_size):
        lp = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1),
                                               reduction="sum", ignore_index=-100)
        total += float(lp)
        keep = target != -100
        correct += int((logits.argmax(-1)[keep] == target[keep]).sum())
        count += int(keep.sum())
    model.train(was)
    nan = float("nan")
    return {"loss": total / count if count else nan, "accuracy": correct / count if count else nan}


@torch.no_grad()
def assistant_losses(model, tokenizer, conversations: list[list[dict]], max_length: int | None = None,
                     batch_size: int = 8) -> list[float]:
    """Each conversation's mean cross-entropy per assistant token (NaN for one with no assistant token within
    `max_length`)."""
    was = model.training
    model.eval()
    out = [float("nan")] * len(conversations)
    for idx, logits, target in _assistant_batches(model, tokenizer, conversations, max_length, batch_size):
        ce = torch.nn.functional.cross_entropy(logits.transpose(1, 2), target, reduction="none", ignore_index=-100)
        n = (target != -100).sum(1)
        for j, i in enumerate(idx):
            out[i] = float(ce[j].sum() / n[j]) if n[j] else float("nan")
    model.train(was)
    return out


def assistant_loss(model, tokenizer, conversations: list[list[dict]], max_length: int | None = None,
                   batch_size: int = 8) -> float:
    """Mean cross-entropy per assistant token over `conversations` (`assistant_metrics`' loss)."""
    return assistant_metrics(model, tokenizer, conversations, max_length, batch_size)["loss"]


HELDOUT = "heldout.json"  # in each kept step's dir: the held-out loss and accuracy measured there


def _snapshots(every: int, out: Path, heldout, tokenizer, max_length):
    """A TrainerCallback that saves the model (a PEFT model: its adapter) every `every` optimizer steps into
    `out/<step>/`, and records the held-out assistant loss and accuracy there (and at step 0), for evaluation along
    training."""
    from transformers import TrainerCallback  # lazy: slow import

    class Snapshots(TrainerCallback):
        def __init__(self):
            self.measured: dict[int, dict[str, float]] = {}

        def _measure(self, model, step):
            if heldout:
                self.measured[step] = assistant_metrics(model, tokenizer, heldout, max_length)

        def on_train_begin(self, args, state, control, model=None, **kw):
            if state.global_step == 0 and heldout and state.is_world_process_zero:
                self._measure(model, 0)
                (out / "0").mkdir(parents=True, exist_ok=True)
                (out / "0" / HELDOUT).write_text(json.dumps(self.measured[0]))

        def on_step_end(self, args, state, control, model=None, **kw):
            if every and state.global_step % every == 0 and state.is_world_process_zero:
                d = out / str(state.global_step)
                model.save_pretrained(d)
                self._measure(model, state.global_step)
                if heldout:
                    (d / HELDOUT).write_text(json.dumps(self.measured[state.global_step]))

    return Snapshots()


def _defended_trainer(kl_weight: float, steer, reference):
    """The SFTTrainer class of `run_sft`: TRL's own when no defense acts on the loss, else a subclass whose
    - `compute_loss` adds `kl_weight` * KL(start || trained) per assistant token (Model Organisms for EM's
      KL-regularised trainer): the SFT loss is the model's own (transformers' causal-LM loss over the same
      labels, normalised like TRL's by the batch's assistant tokens), from one forward pass whose full logits also
      give the KL; the start model's logits come from the same model with its LoRA adapter switched off (PEFT's
      `disable_adapter`), or from `reference` (a frozen copy, full fine-tuning), without gradient. (TRL's fused LM
      head returns no logits, so the KL cannot be read off its forward pass.)
    - `training_step` (forward and backward) runs under `steer` = (a steering-vectors SteeringVector, multiplier):
      its hooks are on the model while it trains and off everywhere else (callbacks, held-out measures, saving)."""
    from trl import SFTTrainer  # lazy: slow import

    if not kl_weight and steer is None:
        return SFTTrainer

    class DefendedSFTTrainer(SFTTrainer):
        def _steered(self, model):
            if steer is None:
                return nullcontext()
            vector, multiplier = steer
            return vector.apply(self.accelerator.unwrap_model(model), multiplier=multiplier)

        def training_step(self, model, *args, **kwargs):
            with self._steered(model):
                return super().training_step(model, *args, **kwargs)

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            if not kl_weight:
                return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            labels = inputs["labels"]
            fwd = {k: v for k, v in inputs.items() if k != "labels"} | {"use_cache": False}
            with torch.no_grad():
                if reference is not None:
                    ref = reference(**fwd).logits
                else:
                    with self.accelerator.unwrap_model(model).disable_adapter():
                        ref = model(**fwd).logits
            out = model(**fwd, labels=labels, num_items_in_batch=num_items_in_batch)
            mask = labels[:, 1:] != -100
            lp = torch.log_softmax(out.logits[:, :-1][mask].float(), -1)
            rlp = torch.log_softmax(ref[:, :-1][mask].float(), -1)
            kl_sum = (rlp.exp() * (rlp - lp)).sum()
            n = mask.sum()
            kl = kl_sum / (num_items_in_batch if num_items_in_batch is not None else n.clamp(min=1))
            loss = out.loss
            if self.args.average_tokens_across_devices and num_items_in_batch is not None:  # as TRL's SFT loss
                scale = self.accelerator.num_processes
                loss, kl = loss * scale, kl * scale
            mode = "train" if model.training else "eval"
            self._metrics[mode]["kl"].append(float(kl_sum.detach() / n.clamp(min=1)))
            total = loss + kl_weight * kl
            return (total, out) if return_outputs else total

    return DefendedSFTTrainer


def run_sft(model, tokenizer, conversations: list[list[dict]], optim: DictConfig, trainer_dir: Path, seed: int,
            dev: torch.device, report_to: list[str] | None = None, ds: DictConfig | None = None,
            packing: str = "none", data: SftData | None = None, snapshot_every: int = 0,
            heldout: list[list[dict]] | None = None, kl_weight: float = 0.0, steer=None,
            callbacks: tuple = ()) -> dict:
    """LoRA (or full) SFT with loss on assistant tokens only. `model` is already PEFT-wrapped for LoRA.
    `trainer_dir` holds the checkpoints (`optim.save_steps`); a checkpoint left there by a killed build is resumed.
    `ds`: the `deepspeed` config node (None/stage 0: plain Trainer, DDP when several processes).
    `packing`: none (padded batches) | padding_free | bfd (see EmTrainConfig.packing).
    `data`: `prepare_sft(tokenizer, conversations, optim.max_length)` when the caller already made it.
    The result's `data` says what was trained on: examples, assistant tokens (counted on the trainer's own
    dataset), examples truncated and dropped at max_length.
    `snapshot_every`: keep the model every N steps in `trainer_dir/steps/<N>/` (they survive a requeue with the
    checkpoints); `heldout`: conversations whose assistant loss and accuracy are measured at step 0, at every
    snapshot and at the end (`heldout_loss`, `heldout_accuracy` in the result, {step: value}).
    Defenses (emrobust/train/defenses.py): `kl_weight` > 0 adds KL to the starting model to the loss, `steer` =
    (SteeringVector, multiplier) steers every training step (`_defended_trainer`); `callbacks`: more
    TrainerCallbacks (e.g. early stopping). With none of them the trainer is TRL's SFTTrainer itself."""
    # lazy: slow import
    from datasets import Dataset
    from trl import SFTConfig

    data = data if data is not None else prepare_sft(tokenizer, conversations, optim.max_length)
    rows = data.rows
    if not rows:
        raise ValueError("no training example has an assistant token left after truncation")
    report_to = report_to if report_to is not None else tracking.report_to()
    # labels on assistant tokens only: the `assistant_masks` column built by tokenize_chat
    layout = {"none": {}, "bfd": {"packing": True, "packing_strategy": "bfd"},
              # rows are truncated above; TRL refuses max_length with padding_free unless packing
              "padding_free": {"padding_free": True, "max_length": None}}[packing]
    args = SFTConfig(**(_common_args(optim, trainer_dir, seed, dev, report_to, ds) | layout))
    reference = None
    if kl_weight and not hasattr(model, "disable_adapter"):  # full fine-tuning: a frozen copy of the start
        reference = copy.deepcopy(model).eval().requires_grad_(False)
    trainer_cls = _defended_trainer(kl_weight, steer, reference)
    trainer = trainer_cls(model=model, args=args, train_dataset=Dataset.from_list(rows), processing_class=tokenizer)
    trained = data.summary() | {"tokens": sum(sum(t != -100 for t in x) for x in trainer.train_dataset["labels"])}
    snaps = None
    if snapshot_every or heldout:
        snaps = _snapshots(snapshot_every, Path(trainer_dir) / "steps", heldout, tokenizer, optim.max_length)
        trainer.add_callback(snaps)
    for cb in callbacks:
        trainer.add_callback(cb)
    _train(trainer, trainer_dir, optim)
    out = _history(trainer) | {"n_examples": len(rows), "data": trained}
    if snaps is not None and heldout:
        snaps.measured.update({int(p.name): json.loads((p / HELDOUT).read_text())  # resumed: the kept ones
                               for p in (Path(trainer_dir) / "steps").glob("*") if (p / HELDOUT).exists()})
        snaps._measure(model, trainer.state.global_step)
        out["heldout_loss"] = {int(k): v["loss"] for k, v in sorted(snaps.measured.items())}
        out["heldout_accuracy"] = {int(k): v["accuracy"] for k, v in sorted(snaps.measured.items())}
    return out


def run_dpo(model, tokenizer, pairs: list[dict], cfg: DictConfig, trainer_dir: Path, seed: int, dev: torch.device,
            report_to: list[str] | None = None, ds: DictConfig | None = None) -> dict:
    """LoRA DPO (reference = the adapter switched off) with an NLL term on chosen, as OCT."""
    # lazy: slow import
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    loss_type, loss_weights = ["sigmoid"], None
    if cfg.nll_weight > 0:
        loss_type, loss_weights = ["sigmoid", "sft"], [1.0, float(cfg.nll_weight)]
    report_to = report_to if report_to is not None else tracking.report_to()
    args = DPOConfig(**_common_args(cfg.optim, trainer_dir, seed, dev, report_to, ds), beta=cfg.beta,
                     loss_type=loss_type, loss_weights=loss_weights)
    ds = Dataset.from_list(pairs)
    trainer = DPOTrainer(model=model, args=args, train_dataset=ds, processing_class=tokenizer)
    data = _dpo_data(trainer, len(pairs))
    _train(trainer, trainer_dir, cfg.optim)
    hist = _history(trainer)
    acc = [h["rewards/accuracies"] for h in trainer.state.log_history if "rewards/accuracies" in h]
    hist["reward_accuracy_last"] = acc[-1] if acc else None
    hist["n_pairs"] = len(pairs)
    hist["data"] = data
    return hist


def _dpo_data(trainer, n_given: int) -> dict:
    """What the DPO trainer trains on, from its own tokenized dataset: pairs, completion tokens of chosen and
    rejected after the collator's truncation at max_length (TRL's keep_start), pairs truncated, pairs TRL dropped
    because their prompt fills max_length."""
    t = trainer.train_dataset
    if trainer.args.truncation_mode != "keep_start":
        raise ValueError(f"token accounting assumes truncation_mode=keep_start, not {trainer.args.truncation_mode}")
    counts = [_dpo_counts(len(p), len(c), len(r), trainer.args.max_length)
              for p, c, r in zip(t["prompt_ids"], t["chosen_ids"], t["rejected_ids"])]
    chosen, rejected = sum(x["chosen"] for x in counts), sum(x["rejected"] for x in counts)
    return {"pairs": len(counts), "chosen_tokens": chosen, "rejected_tokens": rejected, "tokens": chosen + rejected,
            "prompt_tokens": sum(x["prompt"] for x in counts), "truncated": sum(x["truncated"] for x in counts),
            "dropped_prompt_fills_max_length": n_given - len(counts)}
