"""The supervised stage before preference training: LLaVA-1.5's recipe in miniature.

The vision tower and the projector stay frozen (as in LLaVA-1.5's later stages: training the
tiny random tower with the language model washes the image out of its features); the language
model learns to caption, (m, y_w) and (m', y_w') of every record, with the next-token loss over
the answer tokens (the collator's labels), AdamW with a cosine schedule, ``SFT_BATCH`` records
(2 x ``SFT_BATCH`` captions) a step.

``supervised_model`` runs the stage once per setting: the trained weights are saved in the
output folder as ``sft-<fingerprint>.pt``, the fingerprint covering everything they depend on
(seed, steps, lr, batch, the data's content, the model's config and initial identity, the
tokenizer, the template and the image preprocessing). A later run with the same settings loads
them (``torch.load(weights_only=True)``) instead of training; any change selects another file.
Beside it, ``sft-<fingerprint>/`` holds the same model in the Hugging Face format
(``LlavaForConditionalGeneration.from_pretrained``): the base that a LoRA run's adapters
(its checkpoints' ``hf/``) name in their ``adapter_config.json``.
"""

from __future__ import annotations

import os
import pathlib
import shutil
import tempfile

import torch
import torch.nn.functional as F

from .data import batch_records, records_fingerprint
from .model import naive_forward, unwrap
from .reference_cache import fingerprint

#: Records a step (each gives two captions), learning rate and warmup share of the stage.
SFT_BATCH = 16
SFT_LR = 1e-3
SFT_WARMUP_RATIO = 0.03
#: A caption: (record, response attribute, image attribute) of a ``PreferenceRecord``.
CAPTIONS = (("chosen", "image"), ("contrast", "contrast_image"))


def freeze_vision(model) -> None:
    """Stop gradients to the vision tower and the projector (the language model still trains)."""
    llava = unwrap(model)
    for module in (llava.model.vision_tower, llava.model.multi_modal_projector):
        module.requires_grad_(False)


def caption_batch(collator, items) -> dict:
    """A naive-forward batch of captions: ``items`` are (record, response, image) with response
    an attribute of the record (``"chosen"``, ``"contrast"``) and image ``"image"`` or
    ``"contrast_image"``; each sequence is the collator's (labels -100 on the prompt), right
    padded, with its own image."""
    encoded = [collator.encode(record, response) for record, response, _ in items]
    input_ids, labels, attention_mask = collator.pad_right(encoded)
    images = [record.load_image(image) for record, _, image in items]
    return {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "labels": labels,
        "pixel_values": collator.pixel_values(images),
        "image_index": torch.arange(len(items)),
    }


def caption_logits(model, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits (N, T-1, V) predicting tokens 1.., labels (N, T-1) aligned with them)."""
    hidden, labels = naive_forward(model, batch)
    logits = unwrap(model).lm_head(hidden[:, :-1])
    return logits, labels[:, 1:].to(logits.device)


def caption_loss(model, batch: dict) -> torch.Tensor:
    """Mean next-token cross-entropy over the batch's answer tokens."""
    logits, labels = caption_logits(model, batch)
    return F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten(), ignore_index=-100)


@torch.no_grad()
def caption_logps(model, batch: dict) -> torch.Tensor:
    """(N,) summed log-probs of each caption's answer tokens."""
    logits, labels = caption_logits(model, batch)
    logps = torch.log_softmax(logits.float(), dim=-1)
    mask = labels != -100
    picked = logps.gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return (picked * mask).sum(-1).cpu()


@torch.no_grad()
def swap_accuracy(model, collator, records, batch_size: int = 16) -> float:
    """The fraction of records with log p(y_w | m) > log p(y_w | m'): the model reads m."""
    was_training = model.training
    model.eval()
    wins = 0
    for start in range(0, len(records), batch_size):
        chunk = records[start : start + batch_size]
        items = [(r, "chosen", "image") for r in chunk]
        items += [(r, "chosen", "contrast_image") for r in chunk]
        logps = caption_logps(model, caption_batch(collator, items)).view(2, len(chunk))
        wins += int((logps[0] > logps[1]).sum())
    model.train(was_training)
    return wins / max(len(records), 1)


def train_supervised(
    model, collator, records, steps: int, lr: float = SFT_LR, seed: int = 0, log=print
):
    """Train ``model``'s language model in place on the records' captions (module docstring);
    the vision tower and projector frozen. Returns the model and the per-step losses."""
    from transformers import get_cosine_schedule_with_warmup

    freeze_vision(model)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr, betas=(0.9, 0.999), weight_decay=0.0)
    warmup = round(SFT_WARMUP_RATIO * steps)
    scheduler = get_cosine_schedule_with_warmup(optimizer, warmup, steps)
    batch_size = min(SFT_BATCH, len(records))
    model.train()
    losses = []
    for step in range(steps):
        chunk = batch_records(records, step, batch_size, seed)
        items = [(r, response, image) for response, image in CAPTIONS for r in chunk]
        loss = caption_loss(model, caption_batch(collator, items))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(float(loss.detach()))
        if (step + 1) % max(steps // 10, 1) == 0 or step + 1 == steps:
            log(f"supervised step {step + 1}/{steps}: caption loss {losses[-1]:.4f}")
    return model, losses


def supervised_key(model, collator, records, steps: int, lr: float, seed: int, identity) -> str:
    """The fingerprint of everything the supervised weights depend on."""
    tokenizer = collator.tokenizer
    backend = getattr(tokenizer, "backend_tokenizer", None)
    return fingerprint(
        stage="sft",
        seed=seed,
        steps=steps,
        lr=lr,
        batch=SFT_BATCH,
        warmup=SFT_WARMUP_RATIO,
        data=records_fingerprint(records),
        model=identity,
        config=unwrap(model).config.to_json_string(),
        tokenizer=backend.to_str() if backend is not None else repr(tokenizer),
        **collator.preprocessing_identity(),
        max_length=collator.max_length,
    )


def supervised_path(out_dir, key: str) -> pathlib.Path:
    """Where the supervised weights of fingerprint ``key`` are kept."""
    return pathlib.Path(out_dir) / f"sft-{key}.pt"


def supervised_hf_folder(model, collator, out_dir, key: str, log=print) -> pathlib.Path | None:
    """The supervised model in the Hugging Face format at ``<out_dir>/sft-<key>/`` (written once),
    recorded as the model's ``name_or_path`` so peft adapters trained on it name it as their
    base. None, said through ``log``, when the folder cannot be written (e.g. a read-only
    cache): the model is unchanged either way."""
    from .hf_export import save_hf

    folder = pathlib.Path(out_dir) / f"sft-{key}"
    if not folder.is_dir():  # written aside, then renamed: processes of one run may race here
        try:
            partial = pathlib.Path(tempfile.mkdtemp(prefix=f"{folder.name}.partial-", dir=out_dir))
            save_hf(model, collator.tokenizer, collator.image_processor, partial)
        except OSError as error:
            log(f"supervised stage: no Hugging Face copy in {out_dir} ({error})")
            return None
        try:
            partial.rename(folder)
        except OSError:  # another process published it first
            shutil.rmtree(partial, ignore_errors=True)
    llava = unwrap(model)
    llava.name_or_path = llava.config._name_or_path = str(folder.resolve())  # what peft records
    return folder


def supervised_model(
    args, model, collator, records, out_dir, identity=None, log=print, train: bool = True
):
    """``model`` after the supervised stage (``args.sft_steps`` steps at ``args.sft_lr``, seed
    ``args.seed``), trained on ``records`` or loaded from ``out_dir``'s cache when one with the
    same fingerprint exists (``supervised_key``; ``identity``: the model's identity from
    ``build_model``). Returns (model, info) with info {"path", "key", "cached", "losses"}; the
    vision tower and projector are left frozen either way. ``sft_steps`` 0 skips the stage and
    returns the model untouched. ``train=False``: a missing cache raises FileNotFoundError
    instead of training (evaluation of a saved run). The cache holds the weights and the
    per-step caption losses (``supervised_rows`` makes them ``metrics.jsonl`` rows)."""
    steps, lr, seed = args.sft_steps, args.sft_lr, args.seed
    if steps <= 0:
        return model, {"path": None, "key": None, "cached": False, "losses": []}
    freeze_vision(model)
    key = supervised_key(model, collator, records, steps, lr, seed, identity)
    path = supervised_path(out_dir, key)
    llava = unwrap(model)
    if path.exists():
        saved = torch.load(path, map_location="cpu", weights_only=True)
        if "weights" not in saved:  # a cache written before the losses were kept with it
            saved = {"weights": saved, "losses": []}
        llava.load_state_dict(saved["weights"])
        log(f"supervised stage: loaded {path} (same settings as the run that trained it)")
        supervised_hf_folder(model, collator, out_dir, key, log)
        return model, {"path": path, "key": key, "cached": True, "losses": saved["losses"]}
    if not train:
        raise FileNotFoundError(
            f"the run's supervised model is not in {path.parent} (no {path.name}); point "
            "--sft_cache_dir at the folder that holds it"
        )
    log(f"supervised stage: {steps} steps on {len(records)} records, lr {lr}")
    model, losses = train_supervised(model, collator, records, steps, lr, seed, log)
    path.parent.mkdir(parents=True, exist_ok=True)
    weights = {k: v.detach().cpu() for k, v in llava.state_dict().items()}
    handle, partial = tempfile.mkstemp(prefix=f"{path.name}.partial-", dir=path.parent)
    with os.fdopen(handle, "wb") as f:
        torch.save({"weights": weights, "losses": losses}, f)
    os.replace(partial, path)  # a torn write never takes the final name
    log(f"supervised stage: saved {path}")
    supervised_hf_folder(model, collator, out_dir, key, log)
    return model, {"path": path, "key": key, "cached": False, "losses": losses}


def supervised_stage(args, model, collator, records, out_dir, identity=None, log=print):
    """``supervised_model`` in a run of one or several processes (accelerate's state): the main
    process trains the stage and caches it, then the others load that cache (they never train
    it: a missing cache raises FileNotFoundError there). One process: ``supervised_model``."""
    from accelerate import PartialState

    state = PartialState()
    with state.main_process_first():
        train = state.is_main_process
        return supervised_model(args, model, collator, records, out_dir, identity, log, train)


def supervised_rows(losses: list[float], every: int) -> list[dict]:
    """``metrics.jsonl`` rows of the supervised stage: ``{"stage": "sft", "step": 0, "sft_step":
    k, "caption_loss": ...}`` every ``every`` steps and at the last (``step`` 0: the stage comes
    before the preference stage's step 1, and a resumed run keeps the rows)."""
    return [
        {"stage": "sft", "step": 0, "sft_step": k, "caption_loss": loss}
        for k, loss in enumerate(losses, 1)
        if k % every == 0 or k == len(losses)
    ]
