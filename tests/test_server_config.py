"""The server's configuration on its way to the worker processes: one versioned JSON object
(``IMGCLASSIFY_SERVER_CONFIG``), the individual ``IMGCLASSIFY_*`` variables as the fallback, and
which wins when both are there. No model is loaded here."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from pathlib import Path
from typing import Any

import pytest

from imgclassify.decode.imaging import DecodeMode, DecodeOptions
from imgclassify.errors import UsageError
from imgclassify.options import ModelOptions
from imgclassify.server import asgi
from imgclassify.server.config import (
    CONFIG_ENV,
    CONFIG_VERSION,
    ServerConfig,
    WorkerConfig,
    config_to_env,
    superseded_variables,
)
from imgclassify.system.devices import Backend, Precision

KEY = "s3rver-config-k3y-never-serialized"


@pytest.fixture
def logs(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.DEBUG, logger="imgclassify.server")
    return caplog


def every_field_set(tmp_path: Path) -> ServerConfig:
    """A config with no field at its default: every type of field (str, Path, enum, bool, int,
    float, optional int/float/str, nested options) carries a value of its own."""
    key_file = tmp_path / "key.txt"
    key_file.write_text(KEY + "\n")
    samples: dict[str, Any] = {  # a value for every field of ModelOptions: a new one needs one here
        "model": "resnet50", "weights": tmp_path / "w.pth", "labels": tmp_path / "labels.json", "device": "cuda:1",
        "precision": Precision.FP16, "backend": Backend.OPENVINO,
        "decode": DecodeOptions(DecodeMode.FAST, allow_truncated=True, max_pixels=12_345), "offline": True,
        "resize": 300, "crop": 256, "interpolation": "nearest", "mean": (0.5, 0.25, 0.125), "std": (0.5, 0.5, 2.0),
        "multi_label": False,
    }  # fmt: skip
    names = {f.name for f in dataclasses.fields(ModelOptions)}
    assert names <= set(samples), f"no sample value for ModelOptions.{sorted(names - set(samples))}"
    options = ModelOptions(**{name: value for name, value in samples.items() if name in names})
    config = ServerConfig(
        options=options, top_k=5, max_upload_mb=2.5, max_batch_size=16, max_batch_delay_ms=0.0, max_files=7,
        max_queue=3, request_timeout_s=1.5, read_timeout_s=0.25, threshold=0.75, api_key_file=str(key_file),
    )  # fmt: skip
    defaults, model_defaults = ServerConfig(), ModelOptions()
    for f in dataclasses.fields(ServerConfig):
        assert getattr(config, f.name) != getattr(defaults, f.name), f"{f.name} is at its default"
    for f in dataclasses.fields(ModelOptions):
        assert getattr(options, f.name) != getattr(model_defaults, f.name), f"options.{f.name} is at its default"
    return config


def test_round_trip_of_every_field(tmp_path: Path) -> None:
    config = every_field_set(tmp_path)
    worker = WorkerConfig(config, threads=3, workers=4)
    back = WorkerConfig.from_json(worker.to_json(), environ={})
    assert back == worker and back.server.api_key == KEY  # the key read back from its file
    options = back.server.options
    assert isinstance(options.weights, Path) and isinstance(options.labels, Path)
    assert options.precision is Precision.FP16 and options.backend is Backend.OPENVINO
    assert isinstance(back.server.max_batch_delay_ms, float) and isinstance(back.server.top_k, int)
    # the defaults, None in every optional field, come back too
    assert WorkerConfig.from_json(WorkerConfig(ServerConfig()).to_json(), environ={}) == WorkerConfig(ServerConfig())


def test_every_field_is_serialized(tmp_path: Path) -> None:
    """A field added to ServerConfig, ModelOptions or DecodeOptions must be added to the format too."""
    data = every_field_set(tmp_path).to_dict()
    assert set(data) == {f.name for f in dataclasses.fields(ServerConfig)} - {"api_key"}
    assert set(data["options"]) == {f.name for f in dataclasses.fields(ModelOptions)}
    assert set(data["options"]["decode"]) == {f.name for f in dataclasses.fields(DecodeOptions)}
    document = json.loads(WorkerConfig(ServerConfig()).to_json())
    assert document["version"] == CONFIG_VERSION and set(document) == {"version", "threads", "workers", "server"}


def test_json_numbers_are_read_by_the_field_type() -> None:
    data = json.loads(WorkerConfig(ServerConfig()).to_json())
    data["server"].update(max_upload_mb=20, threshold=1, request_timeout_s=3)  # integers in float fields
    config = WorkerConfig.from_json(json.dumps(data), environ={}).server
    assert (config.max_upload_mb, config.threshold, config.request_timeout_s) == (20.0, 1.0, 3.0)
    assert all(isinstance(v, float) for v in (config.max_upload_mb, config.threshold, config.request_timeout_s))


def test_the_key_is_never_serialized(tmp_path: Path) -> None:
    # from the variable (or the Python API): the workers get it in IMGCLASSIFY_API_KEY, where serve found it
    keyed = ServerConfig(api_key=KEY, top_k=2)
    assert KEY not in json.dumps(keyed.to_dict()) and KEY not in WorkerConfig(keyed).to_json()
    env: dict[str, str] = {}
    WorkerConfig(keyed).export(env)
    assert set(env) == {CONFIG_ENV, "IMGCLASSIFY_API_KEY"} and env["IMGCLASSIFY_API_KEY"] == KEY
    assert KEY not in env[CONFIG_ENV]
    assert ServerConfig.from_env(env).api_key == KEY and ServerConfig.from_env(env).top_k == 2
    # from a file: only its path travels, each worker reads the file
    config = every_field_set(tmp_path)
    env = {"IMGCLASSIFY_API_KEY": "stale"}
    WorkerConfig(config).export(env)
    assert env["IMGCLASSIFY_API_KEY"] == "" and all(KEY not in value for value in env.values())
    assert ServerConfig.from_env(env).api_key == KEY
    # no key: none in the workers either, whatever the environment had
    env = {"IMGCLASSIFY_API_KEY": "stale"}
    WorkerConfig(ServerConfig()).export(env)
    assert ServerConfig.from_env(env).api_key is None


def test_the_individual_variables_without_the_object() -> None:
    env = {
        "IMGCLASSIFY_MODEL": "resnet50", "IMGCLASSIFY_PRECISION": "bf16", "IMGCLASSIFY_FAST_DECODE": "1",
        "IMGCLASSIFY_TOP_K": "3", "IMGCLASSIFY_MAX_UPLOAD_MB": "2.5", "IMGCLASSIFY_MAX_QUEUE": "9",
        "IMGCLASSIFY_THRESHOLD": "0.5", "IMGCLASSIFY_MAX_BATCH_SIZE": "", "IMGCLASSIFY_API_KEY": KEY,
        "IMGCLASSIFY_THREADS": "3", "IMGCLASSIFY_WORKERS": "2",
    }  # fmt: skip
    worker = WorkerConfig.from_env(env)
    config = worker.server
    assert (config.options.model, config.options.precision, config.options.decode.fast) == (
        "resnet50",
        Precision.BF16,
        True,
    )
    assert (config.top_k, config.max_upload_mb, config.max_queue, config.threshold) == (3, 2.5, 9, 0.5)
    assert config.max_batch_size is None and config.api_key == KEY
    assert (worker.threads, worker.workers) == (3, 2)
    assert WorkerConfig.from_env({}) == WorkerConfig(ServerConfig())
    assert ServerConfig.from_env(config_to_env(config)) == config  # the individual form, both ways
    with pytest.raises(UsageError, match=r"IMGCLASSIFY_TOP_K='three' is not a valid int"):
        ServerConfig.from_env({"IMGCLASSIFY_TOP_K": "three"})


@pytest.mark.parametrize(
    ("variables", "mode"),
    [
        ({}, DecodeMode.REDUCED),
        ({"IMGCLASSIFY_EXACT_DECODE": "1"}, DecodeMode.EXACT),
        ({"IMGCLASSIFY_FAST_DECODE": "1"}, DecodeMode.FAST),
        ({"IMGCLASSIFY_EXACT_DECODE": "0", "IMGCLASSIFY_FAST_DECODE": ""}, DecodeMode.REDUCED),
    ],
)
def test_the_decode_mode_from_the_environment_and_back(variables: dict[str, str], mode: DecodeMode) -> None:
    options = ModelOptions.from_env(variables)
    assert options.decode.mode is mode and options.decode.fast is (mode is DecodeMode.FAST)
    assert ModelOptions.from_env(options.to_env()).decode == options.decode


def test_exact_and_fast_decode_together_are_refused() -> None:
    with pytest.raises(UsageError, match="--exact-decode and --fast-decode"):
        ModelOptions.from_env({"IMGCLASSIFY_EXACT_DECODE": "1", "IMGCLASSIFY_FAST_DECODE": "1"})


def test_the_individual_variables_carry_every_server_setting(tmp_path: Path) -> None:
    """config_to_env and from_env, the gunicorn user's form, both ways for every field (the model's
    own variables are ModelOptions.to_env's)."""
    config = every_field_set(tmp_path)
    back = ServerConfig.from_env(config_to_env(config))
    for f in dataclasses.fields(ServerConfig):
        if f.name != "options":
            assert getattr(back, f.name) == getattr(config, f.name), f.name


def test_the_object_wins_over_the_individual_variables(logs: pytest.LogCaptureFixture) -> None:
    env = {CONFIG_ENV: WorkerConfig(ServerConfig(top_k=2), threads=5).to_json()}
    env.update(IMGCLASSIFY_TOP_K="7", IMGCLASSIFY_MODEL="resnet50", IMGCLASSIFY_THREADS="9", IMGCLASSIFY_OFFLINE="1")
    worker = WorkerConfig.from_env(env)
    assert worker.server.top_k == 2 and worker.server.options.model is None and worker.threads == 5
    assert ServerConfig.from_env(env) == worker.server  # create_app's own reading: the same
    warnings = [r.getMessage() for r in logs.records if r.levelno == logging.WARNING]
    assert warnings and all(CONFIG_ENV in w for w in warnings)
    for name in ("IMGCLASSIFY_TOP_K", "IMGCLASSIFY_MODEL", "IMGCLASSIFY_THREADS"):
        assert name in warnings[0]
    assert "IMGCLASSIFY_OFFLINE" not in warnings[0]  # still turns downloads off process-wide
    # the API key is not in the object: the variable still gives it
    assert ServerConfig.from_env({**env, "IMGCLASSIFY_API_KEY": KEY}).api_key == KEY
    # an empty object variable is no object: the individual variables apply
    assert ServerConfig.from_env({CONFIG_ENV: " ", "IMGCLASSIFY_TOP_K": "7"}).top_k == 7


def test_export_replaces_what_the_object_supersedes(logs: pytest.LogCaptureFixture) -> None:
    env = {"IMGCLASSIFY_TOP_K": "7", "IMGCLASSIFY_DEVICE": "cpu", "IMGCLASSIFY_THREADS": "1",
           "IMGCLASSIFY_GPU_DECODE": "0", "IMGCLASSIFY_OFFLINE": "1", "PATH": "/bin"}  # fmt: skip
    WorkerConfig(ServerConfig(top_k=3), threads=2, workers=2).export(env)
    assert not set(superseded_variables()) & set(env)
    assert {"IMGCLASSIFY_GPU_DECODE", "IMGCLASSIFY_OFFLINE", "PATH"} <= set(env)  # not the config's to remove
    worker = WorkerConfig.from_env(env)
    assert (worker.server.top_k, worker.threads, worker.workers) == (3, 2, 2)
    assert not [r for r in logs.records if r.levelno >= logging.WARNING]  # nothing ignored: no warning


def valid() -> dict[str, Any]:
    return json.loads(WorkerConfig(ServerConfig()).to_json())  # type: ignore[no-any-return]


def edited(change: Any) -> Any:
    """The valid object with ``change`` made, built when the test runs (not at collection)."""

    def build() -> str:
        data = valid()
        change(data)
        return json.dumps(data)

    return build


@pytest.mark.parametrize(
    ("blob", "message"),
    [
        ("{not json", r"IMGCLASSIFY_SERVER_CONFIG: not valid JSON"),
        ("[1, 2]", r"the value must be a JSON object, got a list"),
        (edited(lambda d: d.pop("version")), r"no version of the format, and imgclassify .* reads version 2 only"),
        (edited(lambda d: d.update(version=1)), r"version 1 of the format, and imgclassify .* reads version 2 only"),
        (edited(lambda d: d.update(version=0)), r"version 0 of the format"),
        (edited(lambda d: d.update(version="1")), r'version "1" of the format'),
        (edited(lambda d: d.update(version=True)), r"version true of the format"),
        (edited(lambda d: d["server"].pop("top_k")), r"server\.top_k is missing"),
        (edited(lambda d: d["server"]["options"].pop("device")), r"server\.options\.device is missing"),
        (edited(lambda d: d["server"].update(colour="red")), r"unknown setting\(s\) server\.colour for version 2"),
        (edited(lambda d: d.update(extra=1)), r"unknown setting\(s\) extra for version 2"),
        (edited(lambda d: d["server"]["options"]["decode"].update(mode="quick")),
         r'server\.options\.decode\.mode must be one of exact, reduced, fast, got "quick"'),
        (edited(lambda d: d["server"]["options"]["decode"].update(fast=True)),
         r"unknown setting\(s\) server\.options\.decode\.fast for version 2"),
        (edited(lambda d: d["server"].update(top_k="3")), r'server\.top_k must be an integer, got "3"'),
        (edited(lambda d: d["server"].update(top_k=True)), r"server\.top_k must be an integer, got true"),
        (edited(lambda d: d["server"].update(top_k=1.5)), r"server\.top_k must be an integer, got 1\.5"),
        (edited(lambda d: d["server"].update(top_k=None)), r"server\.top_k must be an integer, got null"),
        (edited(lambda d: d["server"].update(threshold="x")), r'server\.threshold must be a number or null, got "x"'),
        (edited(lambda d: d["server"]["options"].update(precision="fp64")),
         r'server\.options\.precision must be one of fp32, bf16, fp16, int8, got "fp64"'),
        (edited(lambda d: d["server"].update(options=[])), r"server\.options must be a JSON object, got a list"),
        (edited(lambda d: d.update(threads=0)), r"threads must be at least 1, got 0"),
        (edited(lambda d: d["server"]["options"].update(weights=3)), r"server\.options\.weights must be a string \(a path\) or null, got 3"),
        (edited(lambda d: d.update(server=None)), r"server must be a JSON object, got null"),
    ],
)  # fmt: skip
def test_a_bad_object_says_what_is_wrong(blob: Any, message: str) -> None:
    text = blob if isinstance(blob, str) else blob()
    with pytest.raises(UsageError, match=message) as caught:
        ServerConfig.from_env({CONFIG_ENV: text})  # as a worker (or create_app) reads it
    assert str(caught.value).startswith(f"{CONFIG_ENV}: ")


def test_app_from_env_starts_the_worker_from_the_object(monkeypatch: pytest.MonkeyPatch) -> None:
    """What ``imgclassify serve`` exports is what each worker process's ``app_from_env`` builds."""
    seen: dict[str, Any] = {}

    def fake_uvicorn(**kwargs: Any) -> None:  # a worker process, started with the exported environment
        seen["env"] = dict(os.environ)
        seen["front"] = asgi.app_from_env()

    def fake_create_app(config: ServerConfig) -> Any:
        seen["config"] = config
        return "app"

    def fake_wrap(app: Any, config: ServerConfig, *, threads: int, multiprocess: bool = False) -> Any:
        return (app, config, threads, multiprocess)

    for name in [*superseded_variables(), CONFIG_ENV, "IMGCLASSIFY_API_KEY"]:
        monkeypatch.delenv(name, raising=False)  # all restored after the test
    monkeypatch.setenv("IMGCLASSIFY_TOP_K", "9")  # stale: replaced by the object
    monkeypatch.setattr(asgi, "_run_uvicorn", fake_uvicorn)
    monkeypatch.setattr(asgi, "create_app", fake_create_app)
    monkeypatch.setattr(asgi, "wrap", fake_wrap)
    monkeypatch.setattr(asgi, "configure_logging", lambda level: None)
    monkeypatch.setattr("imgclassify.system.runtime.configure_process", lambda: None)
    monkeypatch.setattr(asgi.HeaderTimeoutProtocol, "timeout_s", asgi.HeaderTimeoutProtocol.timeout_s)
    config = ServerConfig(top_k=4, read_timeout_s=2.0, max_queue=5)
    asgi.run(config, host="127.0.0.1", port=0, threads=3, workers=2, quiet=True)
    assert "IMGCLASSIFY_TOP_K" not in seen["env"] and CONFIG_ENV in seen["env"]
    assert seen["config"] == config and seen["front"] == ("app", config, 3, True)
    assert asgi.HeaderTimeoutProtocol.timeout_s == 2.0
