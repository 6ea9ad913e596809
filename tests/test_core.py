"""The stages: typed, composable, picklable; importing imgclassify changes nothing process-wide."""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import LABELLED, SAMPLES
from imgclassify.decode.decoder import Batch, Decoder
from imgclassify.decode.loading import default_workers, iter_batches
from imgclassify.inference import Backend, InferenceBackend
from imgclassify.results.render import Renderer

PHOTOS = [str(SAMPLES / n) for n in ("kitten.jpg", "dog.jpg", "labrador.jpg")]


def test_stages_compose_to_the_same_records_as_the_classifier(lite0) -> None:  # type: ignore[no-untyped-def]
    paths = [*PHOTOS, str(SAMPLES / "missing.jpg"), str(LABELLED / "n01440764_tench.JPEG")]
    decoder = Decoder(lite0.preprocess_config, lite0.decode)
    renderer = Renderer(lite0.labels, top_k=3)
    records = []
    for batch in iter_batches(paths, decoder, batch_size=2, workers=0):
        assert isinstance(batch, Batch)
        probs = lite0.backend(batch.tensor) if batch.tensor is not None else None
        local = {k: batch.errors[i] for k, i in enumerate(batch.indices) if i in batch.errors}
        records += renderer.render([paths[i] for i in batch.indices], probs, local)
    # the same batches (oneDNN's rounding can depend on the batch size on some CPUs: AMD EPYC)
    assert records == list(lite0.predict(paths, batch_size=2, top_k=3))
    assert records[3].error == "file not found" and records[4].class_id == 0  # tench


def test_backend_interface(lite0) -> None:  # type: ignore[no-untyped-def]
    backend = lite0.backend
    assert isinstance(backend, InferenceBackend)
    probs = backend(torch.zeros(2, 3, 224, 224, dtype=torch.uint8))
    assert probs.shape == (2, 1000) and probs.dtype == torch.float32 and probs.device.type == "cpu"
    assert torch.allclose(probs.sum(1), torch.ones(2), atol=1e-4)


def test_decoder_takes_paths_streams_and_bytes(lite0) -> None:  # type: ignore[no-untyped-def]
    decoder = Decoder(lite0.preprocess_config, lite0.decode)
    data = (SAMPLES / "kitten.jpg").read_bytes()
    import io

    a, b, c = decoder(SAMPLES / "kitten.jpg"), decoder(data), decoder(io.BytesIO(data))
    assert a.dtype == torch.uint8 and tuple(a.shape) == (3, 224, 224)
    assert torch.equal(a, b) and torch.equal(a, c)
    assert decoder.try_decode(b"") == (None, "empty file")
    assert decoder.try_decode(b"not an image")[1] == "not an image, or a format Pillow cannot read"


def test_renderer_checks_top_k_and_row_count(lite0) -> None:  # type: ignore[no-untyped-def]
    from imgclassify.errors import UsageError

    with pytest.raises(UsageError, match="between 1 and 1000"):
        Renderer(lite0.labels, top_k=1001)
    renderer = Renderer(lite0.labels, top_k=2)
    probs = torch.zeros(1, 1000)
    probs[0, 7] = 0.75
    probs[0, 3] = 0.25
    [record] = renderer.render(["x"], probs)
    assert [(c.class_id, c.probability) for c in record.top] == [(7, 0.75), (3, 0.25)]
    with pytest.raises(ValueError, match="more probability rows"):
        renderer.render(["x"], torch.zeros(2, 1000))


def test_stage_objects_pickle_and_give_the_same_records(lite0) -> None:  # type: ignore[no-untyped-def]
    clone = pickle.loads(pickle.dumps(lite0))
    assert list(clone.predict(PHOTOS, top_k=3)) == list(lite0.predict(PHOTOS, top_k=3))
    for stage in (lite0.decoder, lite0.renderer(5), lite0.plan, lite0.options):
        assert pickle.loads(pickle.dumps(stage)) == stage


@pytest.mark.slow
def test_frozen_bf16_backend_pickles_without_its_graph() -> None:
    from imgclassify import load_classifier

    clf = load_classifier("efficientnet_lite0", device="cpu", precision="bf16")
    assert clf.backend.name == "torch-frozen-bf16"
    photos = PHOTOS * 11  # long enough to plan for the frozen graph
    first = [p.class_id for p in clf.predict(photos, batch_size=8, workers=0)]
    clone = pickle.loads(pickle.dumps(clf))
    assert clone.backend.inner.graphs == {}  # TorchScript does not travel: traced again on first use
    assert [p.class_id for p in clone.predict(photos, batch_size=8, workers=0)] == first


@pytest.mark.slow
def test_a_classifier_travels_to_another_process(lite0, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(1) as pool:
        remote = pool.apply(_predict_in_child, (pickle.dumps(lite0), PHOTOS))
    assert remote == [p.to_dict() for p in lite0.predict(PHOTOS)]


def _predict_in_child(blob: bytes, paths: list[str]) -> list[dict[str, object]]:
    classifier = pickle.loads(blob)
    return [p.to_dict() for p in classifier.predict(paths)]


def test_default_workers_policy() -> None:
    assert default_workers(8, 8) == 0  # one batch: decode in-process
    assert default_workers(100, 8, "cuda") >= 1
    assert default_workers(100, 8, "cpu", Backend.OPENVINO) >= 1


SIDE_EFFECTS = """
import json, logging, sys
import PIL.Image, PIL.ImageFile
import torch
before = [logging.getLevelName(logging.WARNING), PIL.Image.MAX_IMAGE_PIXELS, PIL.ImageFile.LOAD_TRUNCATED_IMAGES,
          torch.get_num_threads()]
import imgclassify, imgclassify.cli, imgclassify.pipeline, imgclassify.server.app, imgclassify.run.runner, imgclassify.system.runtime
from imgclassify import load_classifier
clf = load_classifier("efficientnet_lite0", device="cpu")
list(clf.predict([sys.argv[1]]))
after = [logging.getLevelName(logging.WARNING), PIL.Image.MAX_IMAGE_PIXELS, PIL.ImageFile.LOAD_TRUNCATED_IMAGES,
         torch.get_num_threads()]
print(json.dumps({"before": before, "after": after, "allocator_tuned": imgclassify.system.runtime._applied}))
"""


@pytest.mark.slow
def test_importing_and_using_the_library_changes_nothing_process_wide() -> None:
    """Thread and allocator tuning belong to entry points (the CLI, a server worker), not to the library."""
    out = subprocess.run(
        [sys.executable, "-c", SIDE_EFFECTS, str(SAMPLES / "kitten.jpg")],
        capture_output=True, text=True, check=True, timeout=300,
    )  # fmt: skip
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["after"] == result["before"]
    assert result["allocator_tuned"] is False


def test_cli_log_lines_are_lower_case_without_renaming_levels(runner) -> None:  # type: ignore[no-untyped-def]
    import logging

    from imgclassify.cli import app

    args = ["predict", PHOTOS[0], str(SAMPLES / "missing.jpg"), "-m", "efficientnet_lite0", "-d", "cpu"]
    result = runner.invoke(app, args)
    assert "imgclassify: warning: " in result.stderr and result.exit_code == 1
    assert logging.getLevelName(logging.WARNING) == "WARNING"
