"""Train PrecisionOps' reference model, a tiny Llama, on text that ships with Python.

Tests and the demo need a small but real causal LM, and no model or dataset hub is
reachable, so the project trains its own. The text is CPython's: `pydoc_data.topics`
plus the standard library's source files and their docstrings. Documents are
deduplicated and split into train and held-out by document hash, a byte-level BPE
tokenizer is trained on the train split, and a `LlamaForCausalLM` is trained from
random init. The held-out perplexity is reported beside a unigram model's.

Preparation (text, tokenizer, token ids) and training are separate phases, so the text
can be extracted where the interpreter lives and the training run on a GPU elsewhere:

    python scripts/train_reference_model.py --prepare-only --prep-dir .ref-prep
    python scripts/train_reference_model.py --train-from .ref-prep \\
        --out assets/models/pops-llama-tiny --device cuda --steps 6000

Without `--prepare-only`/`--train-from` both phases run in one go.
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import json
import math
import platform
import shutil
import sys
import sysconfig
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

SPECIAL_TOKENS = ["<unk>", "<s>", "</s>", "<pad>"]  # ids 0..3, in this order
UNK, BOS, EOS, PAD = SPECIAL_TOKENS
HOLDOUT_PERMILLE = 40  # 4% of documents, chosen by document hash
MAX_SOURCE_BYTES = 400_000  # larger stdlib files are generated tables, not prose or code
MIN_PROSE_CHARS = 80

# Every Linear's in and out dim is a multiple of 128, the int4 group size. The vocab is
# 3072 rather than 4096 so that 4 layers fit the 10 MB budget in bf16.
ARCHITECTURE = {
    "vocab_size": 3072,
    "hidden_size": 256,
    "intermediate_size": 768,
    "num_hidden_layers": 4,
    "num_attention_heads": 8,
    "num_key_value_heads": 4,
    "head_dim": 32,
    "max_position_embeddings": 4096,
    "rms_norm_eps": 1e-5,
    "tie_word_embeddings": False,
}
GENERATION_PROMPTS = [
    'def read_config(path):\n    """',
    "The for statement is used to",
    "class Queue:\n    def __init__(self",
]


@dataclass(frozen=True)
class Document:
    """One unit of training text: a source file, its docstrings, or a pydoc topic."""

    doc_id: str  # "code:json/decoder.py", "docstrings:json/decoder.py", "topic:assert"
    kind: str  # "code" or "prose"
    text: str
    split_key: str  # sha256 hex deciding the split; a file's code and docstrings share it


def stdlib_root() -> Path:
    """The directory of the running interpreter's standard library."""
    return Path(sysconfig.get_paths()["stdlib"])


def _is_skipped(rel: Path) -> bool:
    parts = set(rel.parts)
    if parts & {"site-packages", "dist-packages", "__pycache__", "lib-dynload"}:
        return True
    if any(part.startswith("config-") for part in rel.parts):
        return True
    # The topics module is taken as data below; sysconfigdata is machine-specific.
    return rel.as_posix() == "pydoc_data/topics.py" or rel.name.startswith("_sysconfigdata")


def iter_stdlib_sources(root: Path):
    """Yield (relative posix path, text, syntax tree) for each usable stdlib .py file."""
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root)
        if _is_skipped(rel) or path.stat().st_size > MAX_SOURCE_BYTES:
            continue
        try:
            text = path.read_bytes().decode("utf-8")
        except UnicodeDecodeError:  # a few test modules declare latin-1 on purpose
            continue
        text = text.replace("\r\n", "\n").strip("\n")
        if len(text) < 64 or "decoding_table = (" in text:  # charmap codec tables
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                tree = ast.parse(text)
            except (SyntaxError, ValueError):  # test files with deliberate bad syntax
                continue
        yield rel.as_posix(), text + "\n", tree


def docstrings(tree: ast.Module) -> list[str]:
    """The cleaned docstrings of a module, its classes and functions, in source order."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            doc = ast.get_docstring(node, clean=True)
            if doc and len(doc.split()) >= 3:
                found.append((getattr(node, "lineno", 0), doc.strip()))
    return [doc for _, doc in sorted(found, key=lambda item: item[0])]


def sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def collect_documents(root: Path | None = None) -> list[Document]:
    """All deduplicated documents: pydoc topics, stdlib source files and their docstrings."""
    from pydoc_data.topics import topics

    candidates = []
    for name in sorted(topics):
        text = topics[name].strip() + "\n"
        candidates.append(Document(f"topic:{name}", "prose", text, sha256(text)))
    for rel, text, tree in iter_stdlib_sources(root or stdlib_root()):
        key = sha256(text)
        candidates.append(Document(f"code:{rel}", "code", text, key))
        prose = "\n\n".join(docstrings(tree))
        if len(prose) >= MIN_PROSE_CHARS:
            candidates.append(Document(f"docstrings:{rel}", "prose", prose + "\n", key))
    seen, documents = set(), []
    for doc in candidates:  # identical text lands in one split only
        digest = sha256(doc.text)
        if digest not in seen:
            seen.add(digest)
            documents.append(doc)
    return documents


def split_of(doc: Document, holdout_permille: int = HOLDOUT_PERMILLE) -> str:
    """'heldout' for a deterministic `holdout_permille`/1000 of split keys, else 'train'."""
    return "heldout" if int(doc.split_key[:8], 16) % 1000 < holdout_permille else "train"


def split_documents(docs: list[Document], holdout_permille: int = HOLDOUT_PERMILLE):
    """Documents grouped as {'train': [...], 'heldout': [...]}, order kept."""
    splits: dict[str, list[Document]] = {"train": [], "heldout": []}
    for doc in docs:
        splits[split_of(doc, holdout_permille)].append(doc)
    return splits


def train_tokenizer(texts, vocab_size: int):
    """A byte-level BPE tokenizer trained on `texts`, as a transformers fast tokenizer.

    Byte-level means every string encodes (scripts unseen in training fall back to
    bytes), and `tokenizer(text)` prepends `<s>` as Llama tokenizers do.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=UNK))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    bos_id = tok.token_to_id(BOS)
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, bos_id)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        unk_token=UNK,
        model_max_length=ARCHITECTURE["max_position_embeddings"],
    )


def save_tokenizer(tokenizer, folder: Path) -> None:
    """Save so that `AutoTokenizer.from_pretrained(folder)` loads it in transformers 4 and 5."""
    tokenizer.save_pretrained(folder)
    config_path = folder / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    # Without an explicit class a folder whose config says llama would get LlamaTokenizer,
    # whose sentencepiece-style pre-tokenizer does not match this byte-level BPE.
    config["tokenizer_class"] = "PreTrainedTokenizerFast"
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def encode_stream(tokenizer, docs: list[Document]) -> np.ndarray:
    """Token ids of all documents, each wrapped as <s> ... </s>, concatenated (uint16)."""
    backend = tokenizer.backend_tokenizer
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    pieces = []
    for encoding in backend.encode_batch([d.text for d in docs], add_special_tokens=False):
        pieces.append(np.asarray([bos, *encoding.ids, eos], dtype=np.uint16))
    return np.concatenate(pieces) if pieces else np.zeros(0, dtype=np.uint16)


def prepare(prep_dir: Path, *, vocab_size: int, holdout_permille: int) -> dict:
    """Extract text, train the tokenizer and write token ids and a manifest to `prep_dir`."""
    started = time.time()
    prep_dir.mkdir(parents=True, exist_ok=True)
    splits = split_documents(collect_documents(), holdout_permille)
    tokenizer = train_tokenizer((d.text for d in splits["train"]), vocab_size)
    save_tokenizer(tokenizer, prep_dir / "tokenizer")
    streams = {name: encode_stream(tokenizer, docs) for name, docs in splits.items()}
    for name, stream in streams.items():
        np.save(prep_dir / f"{name}.npy", stream)
    counts = np.bincount(streams["train"], minlength=len(tokenizer)).astype(np.int64)
    manifest = {
        "python": platform.python_version(),
        "stdlib": str(stdlib_root()),
        "holdout_permille": holdout_permille,
        # The model's vocab is the tokenizer's rounded up to 128, the LM head's out dim.
        "vocab_size": -(-len(tokenizer) // 128) * 128,
        "documents": {
            name: {
                kind: sum(1 for d in docs if d.kind == kind) for kind in ("code", "prose")
            }
            for name, docs in splits.items()
        },
        "characters": {name: sum(len(d.text) for d in docs) for name, docs in splits.items()},
        "tokens": {name: int(stream.size) for name, stream in streams.items()},
        "documents_sha256": sha256("\n".join(d.split_key + d.doc_id for d in splits["train"])),
        "train_token_counts": counts.tolist(),
        "command": _command(),
        "wall_s": round(time.time() - started, 1),
    }
    (prep_dir / "prep.json").write_text(json.dumps(manifest) + "\n")
    return manifest


def _command() -> str:
    """How this process was started, as a shell line."""
    return " ".join(["python", *sys.argv])


def unigram_nll(counts: np.ndarray, targets: np.ndarray) -> float:
    """Mean negative log-likelihood of `targets` under add-one-smoothed unigram counts."""
    counts = np.asarray(counts, dtype=np.float64)
    log_p = np.log(counts + 1.0) - np.log(counts.sum() + counts.size)
    return float(-log_p[np.asarray(targets, dtype=np.int64)].mean())


def eval_windows(stream: np.ndarray, seq_len: int) -> np.ndarray:
    """Non-overlapping windows of seq_len+1 tokens (stride seq_len); the tail is dropped."""
    n = (stream.size - 1) // seq_len
    index = np.arange(n)[:, None] * seq_len + np.arange(seq_len + 1)[None, :]
    return stream[index]


def build_model(vocab_size: int, bos_id: int, eos_id: int, pad_id: int):
    """A randomly initialised LlamaForCausalLM with the reference architecture."""
    from transformers import LlamaConfig, LlamaForCausalLM

    arch = {**ARCHITECTURE, "vocab_size": vocab_size}
    config = LlamaConfig(
        **arch, bos_token_id=bos_id, eos_token_id=eos_id, pad_token_id=pad_id,
        attention_bias=False, mlp_bias=False, hidden_act="silu",
    )
    return LlamaForCausalLM(config)


def lr_at(step: int, *, total: int, warmup: int, peak: float, min_ratio: float) -> float:
    """Linear warmup to `peak`, then cosine decay to `min_ratio * peak` at `total`."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return peak * (min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def evaluate_nll(model, windows, *, device, batch_size: int, autocast: bool) -> float:
    """Mean next-token NLL of `model` over `windows` (int array, [n, seq_len + 1])."""
    import torch
    import torch.nn.functional as F

    total, count = 0.0, 0
    model.eval()
    with torch.no_grad():
        for start in range(0, len(windows), batch_size):
            batch = torch.as_tensor(windows[start : start + batch_size].astype(np.int64), device=device)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
                logits = model(input_ids=batch[:, :-1]).logits
            loss = F.cross_entropy(
                logits.float().flatten(0, 1), batch[:, 1:].flatten(), reduction="sum"
            )
            total += float(loss)
            count += batch[:, 1:].numel()
    model.train()
    return total / count


def train(prep_dir: Path, out: Path, args) -> dict:
    """Train the reference model on prepared token ids and write the model folder."""
    import tokenizers
    import torch
    import torch.nn.functional as F
    import transformers

    started = time.time()
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    autocast = device.type == "cuda"  # bf16 autocast on the GPU; fp32 on the CPU
    torch.manual_seed(args.seed)
    torch.backends.cuda.matmul.allow_tf32 = True
    prep = json.loads((prep_dir / "prep.json").read_text())
    train_ids = torch.as_tensor(np.load(prep_dir / "train.npy").astype(np.int64), device=device)
    heldout = eval_windows(np.load(prep_dir / "heldout.npy"), args.seq_len)
    probe = heldout[: args.eval_windows]
    counts = np.asarray(prep["train_token_counts"])
    unigram = unigram_nll(counts, heldout[:, 1:].ravel())

    model = build_model(prep["vocab_size"], 1, 2, 3).to(device)
    n_params = sum(p.numel() for p in model.parameters())
    decay = [p for p in model.parameters() if p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.ndim < 2]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": args.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=args.lr, betas=(0.9, 0.95), eps=1e-8, fused=device.type == "cuda",
    )
    generator = torch.Generator().manual_seed(args.seed)
    offsets = torch.arange(args.seq_len + 1, device=device)
    total_steps, curve, evals, window_losses = args.steps, [], [], []
    print(f"params={n_params} train_tokens={train_ids.numel()} heldout_windows={len(heldout)} "
          f"unigram_ppl={math.exp(unigram):.1f} device={device}", flush=True)

    train_started = time.time()
    step, probe_from, probe_started = 0, args.probe_steps // 5, None
    while step < total_steps:
        lr = lr_at(step, total=total_steps, warmup=args.warmup, peak=args.lr, min_ratio=0.1)
        for group in optimizer.param_groups:
            group["lr"] = lr
        starts = torch.randint(0, train_ids.numel() - args.seq_len - 1, (args.batch_size,), generator=generator)
        batch = train_ids[starts.to(device)[:, None] + offsets]
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
            logits = model(input_ids=batch[:, :-1]).logits
        loss = F.cross_entropy(logits.float().flatten(0, 1), batch[:, 1:].flatten())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        window_losses.append(loss.detach())
        step += 1
        if args.time_budget_s and step in (probe_from, args.probe_steps):
            if device.type == "cuda":
                torch.cuda.synchronize()
            if step == probe_from:
                probe_started = time.time()
            else:
                # Time steps after the first few only: those pay for CUDA and cuBLAS start-up
                # (77 ms/step measured over the first 50 on an H100, 26 ms/step afterwards).
                per_step = (time.time() - probe_started) / (step - probe_from)
                fitting = step + int((args.time_budget_s - (time.time() - train_started)) / per_step)
                if fitting < total_steps:  # still in warmup, so the cosine can shrink
                    total_steps = max(fitting, 2 * args.warmup)
                    print(f"{per_step * 1e3:.1f} ms/step: steps reduced to {total_steps}", flush=True)
        if step % args.log_every == 0 or step == total_steps:
            mean = float(torch.stack(window_losses).mean())
            window_losses = []
            curve.append({"step": step, "lr": lr, "train_loss": round(mean, 4),
                          "elapsed_s": round(time.time() - train_started, 1)})
        if step % args.eval_every == 0 or step == total_steps:
            nll = evaluate_nll(model, probe, device=device, batch_size=args.batch_size, autocast=autocast)
            evals.append({"step": step, "heldout_loss": round(nll, 4), "heldout_ppl": round(math.exp(nll), 3)})
            print(f"step {step}/{total_steps} train_loss {curve[-1]['train_loss']:.3f} "
                  f"heldout_ppl {math.exp(nll):.2f} {time.time() - train_started:.0f}s", flush=True)
    train_wall = time.time() - train_started

    # Measure what ships: bf16 weights, computed in fp32 as a float32 load would.
    model = model.to(torch.bfloat16)
    reference = build_model(prep["vocab_size"], 1, 2, 3).to(device)
    reference.load_state_dict({k: v.float() for k, v in model.state_dict().items()})
    final_nll = evaluate_nll(reference, heldout, device=device, batch_size=args.batch_size, autocast=False)
    del reference

    out.mkdir(parents=True, exist_ok=True)
    model.generation_config.do_sample = False
    model.save_pretrained(out)
    for item in (prep_dir / "tokenizer").iterdir():
        shutil.copy2(item, out / item.name)
    samples = _greedy_samples(out, device)
    log = {
        "model": "pops-llama-tiny",
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "command": _command(),
        "prepare": {k: v for k, v in prep.items() if k != "train_token_counts"},
        "versions": {
            "python": platform.python_version(), "torch": torch.__version__,
            "transformers": transformers.__version__, "tokenizers": tokenizers.__version__,
            "numpy": np.__version__,
        },
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({platform.machine()})",
        "precision": "bf16 autocast, fp32 master weights" if autocast else "fp32",
        "parameters": n_params,
        "architecture": {**ARCHITECTURE, "vocab_size": prep["vocab_size"]},
        "steps": total_steps,
        "tokens_seen": total_steps * args.batch_size * args.seq_len,
        "train_wall_s": round(train_wall, 1),
        "total_wall_s": round(time.time() - started, 1),
        "loss_curve": curve,
        "heldout_curve": evals,
        "final": {
            "heldout_tokens": int(heldout[:, 1:].size),
            "heldout_loss": round(final_nll, 4),
            "heldout_ppl": round(math.exp(final_nll), 3),
            "unigram_ppl": round(math.exp(unigram), 3),
            "ppl_ratio_unigram_over_model": round(math.exp(unigram - final_nll), 2),
            "weights": "bf16 (evaluated in fp32 compute)",
        },
        "greedy_samples": samples,
        "train_token_counts": prep["train_token_counts"],
    }
    (out / "training_log.json").write_text(json.dumps(log, indent=1) + "\n")
    write_model_card(out, log)
    return log


def _greedy_samples(folder: Path, device) -> list[dict]:
    """Greedy continuations of a few prompts by the saved model, for the log."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).to(device).eval()
    samples = []
    for prompt in GENERATION_PROMPTS:
        ids = tokenizer(prompt, return_tensors="pt").input_ids.to(device)
        with torch.no_grad():
            out = model.generate(ids, max_new_tokens=48, do_sample=False, pad_token_id=tokenizer.pad_token_id)
        samples.append({"prompt": prompt, "completion": tokenizer.decode(out[0, ids.shape[1]:])})
    return samples


def write_model_card(out: Path, log: dict) -> None:
    """Write README.md for the model folder from its training log."""
    arch, final, prep, args = log["architecture"], log["final"], log["prepare"], log["args"]
    docs = prep["documents"]
    sample = log["greedy_samples"][0]
    lines = [
        "# pops-llama-tiny",
        "",
        "PrecisionOps' reference model: a small but real `LlamaForCausalLM` trained from random",
        "init by `scripts/train_reference_model.py` on text that ships with CPython. It exists so",
        "that tests and the demo calibrate, quantize, evaluate and serve a trained network with",
        "realistic activation statistics without reaching a model hub. It writes Python and",
        "Python-documentation English; it knows nothing else.",
        "",
        "## Architecture",
        "",
        f"- {log['parameters']:,} parameters, weights stored as bf16 safetensors",
        f"- {arch['num_hidden_layers']} layers, hidden {arch['hidden_size']}, MLP (SwiGLU) "
        f"{arch['intermediate_size']}, {arch['num_attention_heads']} attention heads of "
        f"{arch['head_dim']}, {arch['num_key_value_heads']} KV heads (GQA)",
        f"- vocab {arch['vocab_size']}, untied embeddings and LM head, RMSNorm eps "
        f"{arch['rms_norm_eps']}, default RoPE, max_position_embeddings "
        f"{arch['max_position_embeddings']} (trained at {args['seq_len']} tokens)",
        "- every Linear's in and out dimension is a multiple of 128 (the int4 group size)",
        "",
        "## Tokenizer",
        "",
        f"Byte-level BPE ({arch['vocab_size']} tokens, trained with `tokenizers` on the train split);",
        "special tokens `<unk>`=0, `<s>`=1 (prepended by `tokenizer(text)`), `</s>`=2, `<pad>`=3.",
        "Any string encodes; scripts absent from the training text (CJK, Cyrillic, Arabic, ...)",
        "fall back to one token per UTF-8 byte, which is what the multiscript traffic corpus probes.",
        "",
        "## Training data",
        "",
        f"CPython {prep['python']} standard library: `pydoc_data.topics`, every usable `.py` file",
        "(tests included; codec tables, generated files over 400 kB and undecodable files",
        "skipped) and each file's docstrings as a separate prose document. Deduplicated by text;",
        f"{prep['holdout_permille'] / 10:g}% of documents held out by document hash (a file's code and",
        "docstrings share one hash).",
        "",
        "| split | code docs | prose docs | characters | tokens |",
        "| --- | --- | --- | --- | --- |",
    ]
    for name in ("train", "heldout"):
        lines.append(f"| {name} | {docs[name]['code']} | {docs[name]['prose']} | "
                     f"{prep['characters'][name]:,} | {prep['tokens'][name]:,} |")
    lines += [
        "",
        "## Training",
        "",
        f"- {log['steps']} steps, batch {args['batch_size']} x {args['seq_len']} tokens "
        f"({log['tokens_seen']:,} tokens seen), AdamW (betas 0.9/0.95, weight decay "
        f"{args['weight_decay']}), peak lr {args['lr']}, {args['warmup']} warmup steps, cosine to 10%",
        f"- {log['precision']} on {log['device']}; "
        f"{log['train_wall_s']:.0f} s of training, {log['total_wall_s']:.0f} s in all",
        f"- versions: " + ", ".join(f"{k} {v}" for k, v in log["versions"].items()),
        "",
        "## Results (held-out split)",
        "",
        f"| model | perplexity on {final['heldout_tokens']:,} held-out tokens |",
        "| --- | --- |",
        f"| pops-llama-tiny (bf16 weights, fp32 compute) | {final['heldout_ppl']:.2f} |",
        f"| unigram, add-one smoothed train counts | {final['unigram_ppl']:.2f} |",
        "",
        f"Unigram perplexity / model perplexity = {final['ppl_ratio_unigram_over_model']:g}.",
        "`training_log.json` holds the loss curve, held-out curve, arguments, versions and",
        "the train token counts behind the unigram baseline.",
        "",
        "Greedy sample (prompt, then completion):",
        "",
        "```",
        sample["prompt"] + sample["completion"],
        "```",
        "",
        "## Reproduce",
        "",
        "```",
        prep["command"],
        log["command"],
        "```",
        "",
        f"The first command ran under CPython {prep['python']}, whose stdlib is the text (another",
        "Python version gives other text); the second ran on the device above.",
    ]
    if log["steps"] != args["steps"]:
        lines.append(f"`--time-budget-s` cut the schedule to {log['steps']} steps; `--steps {log['steps']}` "
                     "without it replays the same schedule.")
    lines.append("")
    (out / "README.md").write_text("\n".join(lines))


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("assets/models/pops-llama-tiny"))
    parser.add_argument("--prepare-only", action="store_true",
                        help="extract text, train the tokenizer, write token ids")
    parser.add_argument("--prep-dir", type=Path,
                        help="where preparation writes (default: .ref-prep with --prepare-only, else a temporary folder)")
    parser.add_argument("--train-from", type=Path, help="train from a folder written by --prepare-only")
    parser.add_argument("--device", help="cuda or cpu (default: cuda when available)")
    parser.add_argument("--steps", type=int, default=6000)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--warmup", type=int, default=300)
    parser.add_argument("--weight-decay", type=float, default=0.1)
    parser.add_argument("--vocab-size", type=int, default=ARCHITECTURE["vocab_size"])
    parser.add_argument("--holdout-permille", type=int, default=HOLDOUT_PERMILLE)
    parser.add_argument("--time-budget-s", type=float, default=0.0,
                        help="if > 0, shrink --steps after --probe-steps so training fits this many seconds")
    parser.add_argument("--probe-steps", type=int, default=50)
    parser.add_argument("--log-every", type=int, default=50)
    parser.add_argument("--eval-every", type=int, default=500)
    parser.add_argument("--eval-windows", type=int, default=64, help="held-out windows probed during training")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.prepare_only and args.train_from:
        parser.error("--prepare-only and --train-from exclude each other")
    if args.vocab_size % 128:
        parser.error("--vocab-size must be a multiple of 128 (the LM head's out dim)")
    if args.time_budget_s and args.probe_steps >= args.warmup:
        parser.error("--probe-steps must be below --warmup so the schedule can still shrink")
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.train_from:
        log = train(args.train_from, args.out, args)
    elif args.prepare_only:
        prep_dir = args.prep_dir or Path(".ref-prep")
        manifest = prepare(prep_dir, vocab_size=args.vocab_size, holdout_permille=args.holdout_permille)
        summary = {k: v for k, v in manifest.items() if k != "train_token_counts"}
        print(json.dumps(summary, indent=1))
        return
    else:
        with tempfile.TemporaryDirectory() as tmp:
            prep_dir = args.prep_dir or Path(tmp)
            prepare(prep_dir, vocab_size=args.vocab_size, holdout_permille=args.holdout_permille)
            log = train(prep_dir, args.out, args)
    print(json.dumps(log["final"], indent=1))


if __name__ == "__main__":
    main()
