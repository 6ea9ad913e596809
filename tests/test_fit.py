"""``imgclassify embed`` and ``imgclassify fit``: embeddings out; your own categories from a folder of
examples, run as ``--model MODEL_DIR`` (real EfficientNet-Lite0 weights, the repository's photos)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from conftest import LABELLED, SAMPLES, parse_jsonl
from imgclassify.cli import app

LITE = ["-m", "efficientnet_lite0"]

#: categories made from the repository's photos (ImageNet photos by wnid, samples by name)
CATEGORIES = {
    "dogs": ("n02088094", "n02093428", "n02097474", "n02102480", "n02107908", "n02112137", "dog.jpg", "labrador.jpg"),
    "birds": ("n01601694", "n01795545", "n01860187", "n02027492"),
    "small_animals": ("n01440764", "n01682714", "n01740131", "n01980166", "n02165105", "n02268853"),
    "vehicles": ("n04147183", "n04310018", "n04509417", "bus.jpg"),
}
#: a photo of none of them: EfficientNet-Lite0 + the nearest head give it 0.35 at most (the fit's threshold: 0.68)
OUTLIER = LABELLED / "n09472597_volcano.JPEG"


def photo(member: str) -> Path:
    return next(LABELLED.glob(f"{member}_*.JPEG")) if member.startswith("n") else SAMPLES / member


def make_examples(root: Path) -> Path:
    for category, members in CATEGORIES.items():
        (root / category).mkdir(parents=True)
        for member in members:
            shutil.copy(photo(member), root / category / photo(member).name)
    return root


def invoke(*args: str):  # type: ignore[no-untyped-def]
    return CliRunner().invoke(app, list(args), catch_exceptions=False)


@pytest.fixture(scope="module")
def fitted(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, str]:
    """(EXAMPLES_DIR, MODEL_DIR, the report on stdout) of one fit, shared by the tests that only read it."""
    root = tmp_path_factory.mktemp("fit")
    examples = make_examples(root / "examples")
    result = invoke("fit", str(examples), "-o", str(root / "model"), *LITE)
    assert result.exit_code == 0, result.output
    return examples, root / "model", result.stdout


# -- the numerics, fast ---------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["nearest", "logistic", "centroid"])
def test_the_runtime_module_computes_what_the_fit_measured(kind: str) -> None:
    """FittedNet (what --model MODEL_DIR runs) gives the logits of the head the fit cross-validated."""
    import torch

    from imgclassify.fit.heads import fit_head
    from imgclassify.models.features import FittedNet

    generator = torch.Generator().manual_seed(0)
    features = torch.rand(12, 32, generator=generator) * 3
    y = torch.tensor([0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 2])
    head = fit_head(kind, features, y, 3)
    net = FittedNet(
        torch.nn.Identity(), weight=head.weight, members=head.members, bias=head.bias, center=head.center,
        scale=head.scale, power=head.power,
    )  # fmt: skip
    test = torch.rand(5, 32, generator=generator) * 3
    assert torch.allclose(net(test).double(), head.logits(test), atol=1e-4)
    assert (head.probabilities(features).argmax(1) == y).all()  # it learnt its own examples


def test_threshold_separates_right_from_the_rest() -> None:
    from imgclassify.fit.validation import choose_threshold, folds_of

    assert choose_threshold([0.9, 0.8, 0.95], [0.3, 0.5, 0.6]) == 0.7  # the middle of the gap 0.6 .. 0.8
    assert choose_threshold([0.8, 0.3], [0.6, 0.1]) == 0.45  # best at 0.2 and at 0.7: their middle
    assert choose_threshold([0.9], []) is None
    assert folds_of([0, 0, 0, 1, 1, 0], 2) == [0, 1, 0, 0, 1, 1]


def test_examples_are_found_sorted_and_checked(tmp_path: Path) -> None:
    from imgclassify.errors import UsageError
    from imgclassify.fit.examples import check_examples, find_examples

    for category, names in {"b": ["x.jpg", "y.png", "notes.txt"], "a": ["z.jpg"], ".hidden": ["h.jpg"]}.items():
        (tmp_path / category).mkdir()
        for name in names:
            (tmp_path / category / name).write_bytes(f"{category}/{name}".encode())
    (tmp_path / "b" / "copy.jpg").write_bytes(b"b/x.jpg")  # the same file twice in one category
    (tmp_path / "loose.jpg").write_bytes(b"loose")
    found = find_examples(tmp_path)
    assert found.categories == ["a", "b"] and found.counts() == [1, 2]
    assert found.skipped_non_images == 1 and found.duplicates == 1
    assert [e.category for e in found.items] == [0, 1, 1] and found.items[1].sha256 < found.items[2].sha256
    warnings = check_examples(found, tmp_path)
    assert any("in no category" in w for w in warnings)
    assert any("'a' has 1 example:" in w for w in warnings)
    (tmp_path / "b").rename(tmp_path / ".b")
    with pytest.raises(UsageError, match="fitting needs at least two"):
        check_examples(find_examples(tmp_path), tmp_path)


# -- embed --------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_embed_npy_and_parquet(tmp_path: Path, lite0) -> None:  # type: ignore[no-untyped-def]
    """One row per input in input order, float32 pooled features (the classifier's input), and a
    record with the error for a file that is not an image."""
    import numpy as np
    import pyarrow.parquet as pq
    import torch

    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"not an image")
    inputs = [str(SAMPLES / "labrador.jpg"), str(bad), str(SAMPLES / "kitten.jpg")]
    result = invoke("embed", *inputs, "-o", str(tmp_path / "e.npy"), *LITE)
    assert result.exit_code == 1, result.output  # one failed
    assert "2 embedded, 1 failed" in result.stderr and "1280 values each" in result.stderr
    vectors = np.load(tmp_path / "e.npy")
    assert vectors.shape == (3, 1280) and vectors.dtype == np.float32
    records = parse_jsonl((tmp_path / "e.jsonl").read_text())
    assert [r["path"] for r in records] == inputs and [r["row"] for r in records] == [0, None, 2]
    assert records[1]["error"] and records[0]["error"] is None and not vectors[1].any()
    # the pooled features: Lite0's own classifier on them gives predict's probabilities
    from imgclassify.models.features import load_module

    net, _ = load_module(lite0.plan)
    with torch.no_grad():
        classifier: torch.nn.Module = net.classifier  # type: ignore[assignment]
        probs = torch.softmax(classifier(torch.from_numpy(vectors[[0, 2]])), dim=1)
    expected = [p.top[0] for p in lite0.predict([inputs[0], inputs[2]])]
    assert probs.argmax(1).tolist() == [c.class_id for c in expected]
    assert probs.max(1).values.tolist() == pytest.approx([c.probability for c in expected], abs=1e-4)

    result = invoke("embed", *inputs, "-o", str(tmp_path / "e.parquet"), *LITE)
    assert result.exit_code == 1, result.output
    table = pq.read_table(tmp_path / "e.parquet")
    assert table.column_names == ["path", "vector", "model", "error"]
    assert table.column("path").to_pylist() == inputs
    assert set(table.column("model").to_pylist()) == {"efficientnet_lite0"}
    rows = table.column("vector").to_pylist()
    assert rows[1] is None and table.column("error").to_pylist()[1] == records[1]["error"]
    assert np.array_equal(np.asarray(rows[0], dtype=np.float32), vectors[0])
    assert (tmp_path / "e.parquet.manifest.json").is_file()


@pytest.mark.slow
def test_embed_resume_continues_a_cut_run(tmp_path: Path) -> None:
    import numpy as np

    inputs = [str(SAMPLES / n) for n in ("labrador.jpg", "kitten.jpg", "dog.jpg")]
    output = tmp_path / "e.npy"
    assert invoke("embed", *inputs, "-o", str(output), *LITE).exit_code == 0
    whole = np.load(output).copy()
    records = (tmp_path / "e.jsonl").read_text().splitlines(keepends=True)
    (tmp_path / "e.jsonl").write_text(records[0] + records[1][:10])  # killed while writing the second record
    result = invoke("embed", *inputs, "-o", str(output), "--resume", *LITE)
    assert result.exit_code == 0, result.output
    assert "2 embedded, 0 failed, 1 already in the output" in result.stderr
    assert [r["path"] for r in parse_jsonl((tmp_path / "e.jsonl").read_text())] == inputs
    assert np.array_equal(np.load(output), whole)
    parquet = tmp_path / "e.parquet"
    assert invoke("embed", *inputs[:2], "-o", str(parquet), *LITE).exit_code == 0
    result = invoke("embed", *inputs, "-o", str(parquet), "--resume", *LITE)
    assert "1 embedded, 0 failed, 2 already in the output" in result.stderr, result.output
    import pyarrow.parquet as pq

    assert sorted(pq.read_table(parquet).column("path").to_pylist()) == sorted(inputs)


# -- fit ----------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_fit_writes_a_model_folder_that_predict_runs(fitted: tuple[Path, Path, str], tmp_path: Path) -> None:
    _, model, report = fitted
    for name in ("imgclassify_head.json", "head.safetensors", "fit_manifest.json"):
        assert (model / name).is_file()
    config = json.loads((model / "imgclassify_head.json").read_text())
    assert config["categories"] == sorted(CATEGORIES)
    assert config["backbone"]["model"] == "efficientnet_lite0" and len(config["backbone"]["weights_sha256"]) == 64
    assert config["preprocessing"]["mean"] == [0.5, 0.5, 0.5] and 0 < config["threshold"] < 1
    manifest = json.loads((model / "fit_manifest.json").read_text())
    assert len(manifest["examples"]) == sum(len(m) for m in CATEGORIES.values())
    assert all(len(e["sha256"]) == 64 for e in manifest["examples"])
    assert "confusion (rows: category, columns: predicted)" in report and "small_animals" in report
    assert f"--threshold {config['threshold']:.2f}" in report

    held_out = [
        str(SAMPLES / "brittany.jpg"),
        str(SAMPLES / "three_dogs.jpg"),
        str(LABELLED / "n02120505_grey_fox.JPEG"),
    ]
    result = invoke("predict", *held_out, "-m", str(model), "-f", "jsonl", "-k", "2")
    assert result.exit_code == 0, result.output
    records = parse_jsonl(result.stdout)
    assert [r["class_name"] for r in records[:2]] == ["dogs", "dogs"]
    assert all(c["class_name"] in CATEGORIES for r in records for c in r["top_k"])  # type: ignore[attr-defined]


@pytest.mark.slow
def test_fitting_twice_gives_the_same_head_byte_for_byte(fitted: tuple[Path, Path, str], tmp_path: Path) -> None:
    examples, model, _ = fitted
    again = tmp_path / "again"  # a fresh folder: embedded again, no cache
    result = invoke("fit", str(examples), "-o", str(again), *LITE, "-q")
    assert result.exit_code == 0, result.output
    for name in ("head.safetensors", "imgclassify_head.json"):
        assert (again / name).read_bytes() == (model / name).read_bytes(), name


@pytest.mark.slow
def test_refit_embeds_only_the_new_example(tmp_path: Path) -> None:
    examples = make_examples(tmp_path / "examples")
    model = tmp_path / "model"
    total = sum(len(m) for m in CATEGORIES.values())
    result = invoke("fit", str(examples), "-o", str(model), *LITE)
    assert f"({total} embedded, 0 from the cache)" in result.stderr, result.output
    shutil.copy(SAMPLES / "brittany.jpg", examples / "dogs" / "brittany.jpg")
    result = invoke("fit", str(examples), "-o", str(model), *LITE)
    assert result.exit_code == 0, result.output
    assert f"on {total + 1} examples of 4 categories (1 embedded, {total} from the cache)" in result.stderr


@pytest.mark.slow
def test_threshold_sends_an_outlier_to_unknown(fitted: tuple[Path, Path, str], tmp_path: Path) -> None:
    _, model, _ = fitted
    threshold = json.loads((model / "imgclassify_head.json").read_text())["threshold"]
    dog = SAMPLES / "brittany.jpg"
    result = invoke(
        "predict", str(dog), str(OUTLIER), "-m", str(model), "--threshold", str(threshold),
        "--sort-into", str(tmp_path / "sorted"), "--dry-run",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    plan = [line.split("\t") for line in result.stdout.splitlines()]
    assert [(source, Path(destination).parent.name) for _, source, destination in plan] == [
        (str(dog.absolute()), "1-dogs"),
        (str(OUTLIER.absolute()), "unknown"),
    ]
    assert not (tmp_path / "sorted").exists()


@pytest.mark.slow
def test_the_fitted_threshold_is_the_default(fitted: tuple[Path, Path, str], tmp_path: Path) -> None:
    """Without --threshold a fitted model judges with its own (measured by the fit), in the records,
    the manifest, the sorting and the server; an explicit --threshold still wins."""
    _, model, _ = fitted
    threshold = json.loads((model / "imgclassify_head.json").read_text())["threshold"]
    out = tmp_path / "out.jsonl"
    result = invoke("predict", str(SAMPLES / "brittany.jpg"), str(OUTLIER), "-m", str(model), "-o", str(out))
    assert result.exit_code == 0, result.output
    assert [r["confident"] for r in parse_jsonl(out.read_text())] == [True, False]
    assert json.loads((tmp_path / "out.jsonl.manifest.json").read_text())["run"]["threshold"] == threshold
    result = invoke("predict", str(OUTLIER), "-m", str(model), "--threshold", "0", "-f", "jsonl")
    assert parse_jsonl(result.stdout)[0]["confident"] is True

    from imgclassify.pipeline import load_classifier
    from imgclassify.server import ServerConfig, create_app

    classifier = load_classifier(str(model), device="cpu")
    client = create_app(ServerConfig(), classifier=classifier, warm_up_async=False).test_client()
    assert client.get("/info").get_json()["server"]["threshold"] == threshold


def test_a_fitted_folder_refuses_other_backbone_weights(tmp_path: Path) -> None:
    from imgclassify.errors import CheckpointError
    from imgclassify.models.plan import plan_model
    from imgclassify.options import ModelOptions

    model = tmp_path / "model"
    model.mkdir()
    config = {
        "imgclassify_head": 1, "categories": ["a", "b"],
        "backbone": {"model": "efficientnet_lite0", "weights_sha256": "0" * 64},
        "head": {"type": "nearest", "file": "head.safetensors", "scale": 16.0, "power": 0.5},
        "preprocessing": {"resize": 256, "crop": 224, "interpolation": "bicubic", "mean": [0.5] * 3, "std": [0.5] * 3},
    }  # fmt: skip
    (model / "imgclassify_head.json").write_text(json.dumps(config))
    (model / "head.safetensors").write_bytes(b"")
    with pytest.raises(CheckpointError, match="fit it again on these weights"):
        plan_model(ModelOptions(model=str(model)))
