"""A small causal language model trained by Hugging Face's ``Trainer``, for the daemon to watch.

The data are token sequences of three kinds (the probe's classes): kind c counts up in steps
of c + 1 from a random start, modulo the vocabulary, padded on the right to random lengths.
The model (``model.py``: a tiny Llama, or GPT-2 with ``--arch gpt2``) learns to continue them
within a few hundred steps on a CPU. ``Trainer`` writes ``checkpoint-N`` folders (weights,
optimizer, ``trainer_state.json``) every ``--save-steps`` steps into ``--out``;
``StiffnessStopCallback`` stops training at the next step once the daemon's stop file exists.

    python train.py --write-probe probe.pt            # the held-out probe, then
    python train.py --out run --steps 300 --save-steps 50 [--save-pause 3]

Prints one JSON line at the end: the last step, and the step at which the stop file stopped
training (null if it did not).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from model import build_gpt2, build_llama  # the example's own factories, beside this file

VOCAB, T, KINDS = 32, 16, 3


def sequences(n: int, seed: int) -> dict[str, torch.Tensor]:
    """n padded sequences: ids (n, T), attention mask (n, T), HF labels (n, T), kind (n,)."""
    generator = torch.Generator().manual_seed(seed)
    kind = torch.arange(n) % KINDS
    start = torch.randint(0, VOCAB - 1, (n, 1), generator=generator)
    ids = (start + torch.arange(T) * (kind.unsqueeze(1) + 1)) % (VOCAB - 1) + 1  # 0 pads
    lengths = torch.randint(T // 2, T + 1, (n, 1), generator=generator)
    mask = (torch.arange(T) < lengths).long()
    ids = ids * mask
    return {"ids": ids, "mask": mask, "labels": ids.masked_fill(mask == 0, -100), "kind": kind}


def write_probe(path: Path, per_kind: int = 20) -> None:
    """The held-out probe: other sequences than training sees (another seed)."""
    data = sequences(per_kind * KINDS, seed=10_000)
    torch.save(
        {
            "inputs": data["ids"],
            "targets": data["kind"],
            "token_targets": data["labels"],
            "attention_mask": data["mask"],
        },
        path,
    )


def train(
    out: Path, arch: str, steps: int, save_steps: int, stop_file: Path, save_pause: float = 0.0
) -> dict[str, object]:
    import transformers

    class Pause(transformers.TrainerCallback):  # type: ignore[misc]
        """Sleeps after each save: a stand-in for the hours a real run takes between
        checkpoints, so that the daemon's verdict arrives while training still runs."""

        def on_save(self, *args: object, **kwargs: object) -> None:
            time.sleep(save_pause)

    from monitor.stopping.integrations.huggingface import StiffnessStopCallback

    transformers.set_seed(0)
    model = (build_llama if arch == "llama" else build_gpt2)(vocab_size=VOCAB)
    data = sequences(1024, seed=0)
    keys = {"input_ids": "ids", "attention_mask": "mask", "labels": "labels"}
    examples = [{key: data[name][i] for key, name in keys.items()} for i in range(len(data["ids"]))]
    callback = StiffnessStopCallback(stop_file, check_every_n_steps=1)
    trainer = transformers.Trainer(
        model=model,
        args=transformers.TrainingArguments(
            output_dir=str(out),
            max_steps=steps,
            save_strategy="steps",
            save_steps=save_steps,
            per_device_train_batch_size=16,
            learning_rate=3e-3,
            warmup_steps=10,
            report_to=[],
            logging_strategy="no",
            use_cpu=True,
            disable_tqdm=True,
            seed=0,
        ),
        train_dataset=examples,
        callbacks=[callback, Pause()],
    )
    trainer.train()
    return {"global_step": trainer.state.global_step, "stopped_at_step": callback.stopped_at_step}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("run"))
    parser.add_argument("--arch", choices=["llama", "gpt2"], default="llama")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--save-steps", type=int, default=50)
    parser.add_argument("--stop-file", type=Path, default=None, help="default: OUT/STOP")
    parser.add_argument("--save-pause", type=float, default=0.0, help="seconds after a save")
    parser.add_argument("--write-probe", type=Path, default=None, help="write the probe, exit")
    args = parser.parse_args()
    if args.write_probe is not None:
        write_probe(args.write_probe)
        return
    stop_file = args.stop_file if args.stop_file is not None else args.out / "STOP"
    outcome = train(args.out, args.arch, args.steps, args.save_steps, stop_file, args.save_pause)
    print(json.dumps(outcome))


if __name__ == "__main__":
    main()
