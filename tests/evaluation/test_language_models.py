"""Hugging Face causal-LM checkpoints, end to end through the ``Evaluator``: folders written
by ``save_pretrained`` (one safetensors file, or shards behind an index), weights loaded into
the architecture ``model.factory`` builds (examples/language/model.py), a sequence probe file,
``stiffness.loss: causal_lm``. The numbers must equal the engine's on the model
``from_pretrained`` reads back from the same folder, which the engine tests check against the
float64 reference (tests/stiffness/test_sequences.py)."""

from __future__ import annotations

import importlib.util
import shutil
import sys
from pathlib import Path

import pytest
import torch

from monitor.config.schema import load_config
from monitor.daemon.checks import run_checks
from monitor.evaluation.evaluator import Evaluator
from monitor.stiffness import compute_stiffness

transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "language" / "model.py"
VOCAB, N, T = 40, 18, 9
pytestmark = pytest.mark.filterwarnings("ignore::monitor.probe.sampling.ProbeWarning")


def write_probe(path: Path) -> None:
    """Right-padded sequences of lengths 2..9 in 3 classes, HF labels, attention mask."""
    torch.manual_seed(5)
    lengths = torch.arange(N) % 8 + 2
    mask = (torch.arange(T) < lengths.unsqueeze(1)).long()
    ids = torch.randint(1, VOCAB, (N, T)) * mask
    torch.save(
        {
            "inputs": ids,
            "targets": torch.arange(N) % 3,
            "token_targets": ids.masked_fill(mask == 0, -100),
            "attention_mask": mask,
        },
        path,
    )


def setup_run(tmp_path: Path, arch: str) -> Path:
    shutil.copy(EXAMPLE, tmp_path / "lm_models.py")  # the config's folder is importable
    write_probe(tmp_path / "probe.pt")
    config = tmp_path / "config.yaml"
    config.write_text(
        f"model:\n  factory: lm_models:build_{arch}\n  kwargs: {{vocab_size: {VOCAB}}}\n"
        "probe:\n  path: probe.pt\n  per_class: 6\n"
        "stiffness:\n  loss: causal_lm\n  device: cpu\n  batch_size: 4\n"
        "runs:\n  - name: lm\n    path: run\n"
    )
    return config


@pytest.mark.parametrize("shards", [False, True], ids=["one-file", "sharded"])
@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_hf_folder_evaluated_with_causal_lm(tmp_path: Path, arch: str, shards: bool) -> None:
    config = setup_run(tmp_path, arch)
    spec = importlib.util.spec_from_file_location("lm_models_direct", EXAMPLE)
    assert spec is not None and spec.loader is not None
    factories = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(factories)
    torch.manual_seed(11)  # other weights than the evaluator's skeleton gets
    trained = getattr(factories, f"build_{arch}")(vocab_size=VOCAB)
    folder = tmp_path / "run" / "checkpoint-20"
    trained.save_pretrained(folder, max_shard_size="8KB" if shards else "1GB")
    assert (folder / "model.safetensors.index.json").is_file() == shards
    assert len(list(folder.glob("*.safetensors"))) > (1 if shards else 0)

    report = run_checks(config)
    assert report.problems == []
    evaluator = Evaluator(load_config(config), torch.device("cpu"))
    got = evaluator.evaluate(folder).result

    reread = transformers.AutoModelForCausalLM.from_pretrained(folder).eval()
    want = compute_stiffness(reread, evaluator.probe, evaluator.options)
    assert got.counts.parameters == want.counts.parameters
    assert got.probe_loss == pytest.approx(want.probe_loss, rel=1e-6)
    for row_got, row_want in zip(got.cosine.matrix, want.cosine.matrix, strict=True):
        assert row_got == pytest.approx(row_want, abs=1e-6)
    assert got.cosine.within is not None and got.counts.zero_gradient == 0


def test_check_names_a_probe_without_token_labels(tmp_path: Path) -> None:
    config = setup_run(tmp_path, "llama")
    data = torch.load(tmp_path / "probe.pt")
    del data["token_targets"], data["attention_mask"]
    torch.save(data, tmp_path / "probe.pt")
    problems = run_checks(config).problems
    assert problems == [
        f"{config}: stiffness.loss: causal_lm needs per-token labels, but the probe has no "
        "'token_targets' (N, T)"
    ]


def test_check_names_a_classifier_given_a_sequence_loss(tmp_path: Path) -> None:
    config = setup_run(tmp_path, "llama")
    (tmp_path / "classifier.py").write_text(
        "import torch\n\ndef build():\n"
        "    return torch.nn.Sequential(torch.nn.Embedding(40, 4), torch.nn.Flatten(),\n"
        "                               torch.nn.Linear(36, 3))\n"
    )
    text = config.read_text().replace("lm_models:build_llama", "classifier:build")
    config.write_text(text.replace("  kwargs: {vocab_size: 40}\n", ""))
    (problem,) = run_checks(config).problems  # a probe with a mask: called with one
    assert "unexpected keyword argument 'attention_mask'" in problem
    data = torch.load(tmp_path / "probe.pt")
    del data["attention_mask"]
    torch.save(data, tmp_path / "probe.pt")
    (problem,) = run_checks(config).problems
    assert problem == (
        f"{config}: model.output: model output must be (batch, positions, vocabulary) logits, "
        "got shape (2, 3) (stiffness.loss: causal_lm)"
    )


README = Path(__file__).resolve().parents[2] / "README.md"


def readme_blocks() -> tuple[str, str]:
    """The README's sequence-probe example: its Python block and the YAML block after it."""
    text = README.read_text(encoding="utf-8")
    after = text.split("<!-- sequence-probe-example -->", 1)[1]
    python = after.split("```python\n", 1)[1].split("```", 1)[0]
    yaml = after.split("```yaml\n", 1)[1].split("```", 1)[0]
    return python, yaml


def test_readme_probe_example_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The README's example, as written: tokenise the sentences into probe.pt, then evaluate a
    GPT-2 checkpoint folder with the README's config (vocabulary size included)."""
    python, yaml = readme_blocks()
    monkeypatch.chdir(tmp_path)
    exec(compile(python, "README.md", "exec"), {})  # our own README, as a user runs it
    vocab = tokenizers.Tokenizer.from_file("tokenizer.json").get_vocab_size()
    assert f"vocab_size: {vocab}}}" in yaml  # the README's number is the tokenizer's
    data = torch.load("probe.pt")
    assert data["inputs"].shape == data["token_targets"].shape == data["attention_mask"].shape
    assert bool((data["token_targets"][data["attention_mask"] == 0] == -100).all())

    shutil.copy(EXAMPLE, tmp_path / "model.py")
    monkeypatch.delitem(sys.modules, "model", raising=False)  # the digits example's model.py
    (tmp_path / "config.yaml").write_text(yaml + "  device: cpu\n")
    spec = importlib.util.spec_from_file_location("readme_model", EXAMPLE)
    assert spec is not None and spec.loader is not None
    factories = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(factories)
    factories.build_gpt2(vocab_size=vocab).save_pretrained(tmp_path / "checkpoint-1")
    assert run_checks(tmp_path / "config.yaml").problems == []
    evaluator = Evaluator(load_config(tmp_path / "config.yaml"), torch.device("cpu"))
    result = evaluator.evaluate(tmp_path / "checkpoint-1").result
    assert result.classes == (0, 1, 2) and result.counts.examples == 12
    assert result.cosine.within is not None and result.probe_loss is not None
