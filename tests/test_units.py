"""Unit tests: --resume's reader, --max-failures' parser, the server's dynamic batcher."""

from __future__ import annotations

import threading
import time
from concurrent.futures import Future
from pathlib import Path

import pytest
import torch

from imgclassify.errors import UsageError
from imgclassify.results.formats import OutputFormat
from imgclassify.results.resume import recorded_paths, resume_key
from imgclassify.run.runner import failure_limit
from imgclassify.server.batching import Answer, DynamicBatcher

# -- resume.recorded_paths ---------------------------------------------------------------------


def test_recorded_paths_missing_or_empty_file(tmp_path: Path) -> None:
    assert recorded_paths(tmp_path / "none.jsonl", OutputFormat.JSONL) == (set(), False)
    (tmp_path / "empty.csv").write_text("")
    assert recorded_paths(tmp_path / "empty.csv", OutputFormat.CSV) == (set(), False)


def test_recorded_paths_jsonl_truncates_a_cut_last_line(tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    whole = '{"path": "a.jpg", "class_id": 1}\n{"path": "b\\u00e9.jpg", "class_id": 2}\n'
    out.write_text(whole + '{"path": "c.jpg", "cla')
    assert recorded_paths(out, OutputFormat.JSONL) == ({"a.jpg", "bé.jpg"}, False)
    assert out.read_text() == whole


def test_recorded_paths_jsonl_refuses_a_damaged_line_before_the_last(tmp_path: Path) -> None:
    """Only a cut-short LAST line is dropped (the formats' one rule); records after a bad line are never cut away."""
    out = tmp_path / "out.jsonl"
    out.write_text('{"path": "a.jpg"}\nnot json\n{"path": "b.jpg"}\n')
    with pytest.raises(UsageError, match="line 2 is not JSON"):
        recorded_paths(out, OutputFormat.JSONL)
    assert out.read_text() == '{"path": "a.jpg"}\nnot json\n{"path": "b.jpg"}\n'


def test_recorded_paths_csv_quoted_newlines_and_cut_record(tmp_path: Path) -> None:
    out = tmp_path / "out.csv"
    header = "path,class_id,wnid,class_name,probability,top_k,error,confident\n"
    rows = '"odd\nname.jpg",1,,x,0.5,,,false\nplain.jpg,,,,,,file not found,\n'
    out.write_text(header + rows + '"cut, in')
    done, has_header = recorded_paths(out, OutputFormat.CSV)
    assert done == {"odd\nname.jpg", "plain.jpg"} and has_header
    assert out.read_text() == header + rows


def test_recorded_paths_csv_without_our_header_is_refused(tmp_path: Path) -> None:
    out = tmp_path / "out.csv"
    out.write_text("a,b\n1,2\n")
    with pytest.raises(UsageError, match="does not start with imgclassify's CSV header"):
        recorded_paths(out, OutputFormat.CSV)
    assert out.read_text() == "a,b\n1,2\n"


def test_recorded_paths_refuses_json_and_table(tmp_path: Path) -> None:
    for fmt in (OutputFormat.JSON, OutputFormat.TABLE):
        with pytest.raises(UsageError, match="jsonl or csv"):
            recorded_paths(tmp_path / "x", fmt)


def test_resume_key_matches_what_csv_holds_for_undecodable_names() -> None:
    name = b"caf\xe9.jpg".decode("utf-8", errors="surrogateescape")
    assert resume_key(name, OutputFormat.JSONL) == name
    assert resume_key(name, OutputFormat.CSV) == "caf\\xe9.jpg"


# -- runner.failure_limit ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "total", "limit"),
    [(None, 100, None), ("0", 100, 0), ("10", 5, 10), (" 3 ", 100, 3), ("5%", 200, 10), ("5%", 10, 0),
     ("100%", 7, 7), ("12.5%", 80, 10), ("0%", 50, 0)],
)  # fmt: skip
def test_failure_limit(spec: str | None, total: int, limit: int | None) -> None:
    assert failure_limit(spec, total) == limit


@pytest.mark.parametrize("spec", ["-1", "abc", "150%", "-5%", "", "%", "1.5", "10 %x"])
def test_failure_limit_rejects(spec: str) -> None:
    with pytest.raises(UsageError, match="--max-failures takes a count or a percentage"):
        failure_limit(spec, 100)


# -- batching.DynamicBatcher ---------------------------------------------------------------------


class Recorder:
    """A forward pass that returns its input rows as floats, and records the batch sizes."""

    def __init__(self, delay: float = 0.0) -> None:
        self.sizes: list[int] = []
        self.delay = delay

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        self.sizes.append(len(batch))
        time.sleep(self.delay)
        return batch.float()


def rows(first: int, count: int) -> torch.Tensor:
    return torch.arange(first, first + count).view(count, 1)


def probs(future: Future[Answer]) -> torch.Tensor:
    """A tensor job's rows: every image has a row, none an error."""
    answer = future.result(timeout=10)
    assert answer.probs is not None and answer.errors == {}
    return answer.probs


def test_batcher_gives_each_caller_its_own_rows_in_shared_batches() -> None:
    forward = Recorder(delay=0.01)
    batcher = DynamicBatcher(forward, max_batch_size=8, max_delay_s=0.05)
    results: dict[int, torch.Tensor] = {}
    start = threading.Barrier(12)

    def call(i: int) -> None:
        start.wait()
        results[i] = probs(batcher.submit(rows(i * 10, 1 + i % 3)))

    threads = [threading.Thread(target=call, args=(i,)) for i in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    batcher.close()
    for i in range(12):
        assert results[i].flatten().tolist() == [float(i * 10 + j) for j in range(1 + i % 3)]
    assert max(forward.sizes) > 3  # callers really shared forward passes
    assert max(forward.sizes) <= 8 and sum(forward.sizes) == sum(1 + i % 3 for i in range(12))


def test_batcher_never_exceeds_max_batch_size_and_carries_the_rest() -> None:
    forward = Recorder()
    batcher = DynamicBatcher(forward, max_batch_size=4, max_delay_s=0.2)
    futures = [batcher.submit(rows(0, 3)), batcher.submit(rows(3, 3)), batcher.submit(rows(6, 1))]
    got = [probs(f).flatten().tolist() for f in futures]
    batcher.close()
    assert got == [[0.0, 1.0, 2.0], [3.0, 4.0, 5.0], [6.0]]
    assert forward.sizes == [3, 4]  # the second job would overflow the first batch: it starts the next


def test_batcher_failure_reaches_every_caller_of_that_batch_and_it_keeps_going() -> None:
    calls = {"n": 0}

    def flaky(batch: torch.Tensor) -> torch.Tensor:
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("model failed")
        return batch.float()

    batcher = DynamicBatcher(flaky, max_batch_size=8, max_delay_s=0.2)
    first = [batcher.submit(rows(0, 1)), batcher.submit(rows(1, 1))]
    for future in first:
        with pytest.raises(RuntimeError, match="model failed"):
            future.result(timeout=10)
    assert probs(batcher.submit(rows(5, 2))).flatten().tolist() == [5.0, 6.0]
    batcher.close()


def test_batcher_without_delay_runs_alone_and_close_stops_the_thread() -> None:
    forward = Recorder()
    batcher = DynamicBatcher(forward, max_batch_size=8, max_delay_s=0.0)
    assert probs(batcher.submit(rows(0, 2))).flatten().tolist() == [0.0, 1.0]
    batcher.close()
    assert not batcher._thread.is_alive()
    with pytest.raises(ValueError, match="max_batch_size"):
        DynamicBatcher(forward, max_batch_size=0)


def test_quick_exit_waits_for_threads_and_children(monkeypatch: pytest.MonkeyPatch) -> None:
    import multiprocessing
    import threading

    from imgclassify.system.runtime import _still_running

    # the threads and children this process sees, as the test sets them (earlier tests leave some)
    main = threading.main_thread()
    threads: list[threading.Thread] = [main]
    children: list[object] = []
    monkeypatch.setattr(threading, "enumerate", lambda: list(threads))
    monkeypatch.setattr(multiprocessing, "active_children", lambda: list(children))
    assert not _still_running()
    release = threading.Event()
    worker = threading.Thread(target=release.wait)  # not a daemon: the interpreter would join it
    worker.start()
    threads.append(worker)
    try:
        assert _still_running()
    finally:
        release.set()
        worker.join()
    assert not _still_running()  # finished
    hold = threading.Event()
    daemon = threading.Thread(target=hold.wait, daemon=True)
    daemon.start()
    threads[1:] = [daemon]
    try:
        assert daemon.is_alive() and not _still_running()  # daemon threads are not waited for at exit
    finally:
        hold.set()
    children.append(object())
    assert _still_running()  # a child process is


def test_replaced_atomically_replaces_whole_or_not_at_all(tmp_path: Path) -> None:
    from imgclassify.system.fs import replaced_atomically

    target = tmp_path / "out" / "results.jsonl"
    with replaced_atomically(target, fsync=True) as tmp:
        tmp.write_text("first\n")
        assert not target.exists()  # nothing shows before the block ends
    assert target.read_text() == "first\n"
    with pytest.raises(RuntimeError), replaced_atomically(target, temp_suffix=".part") as tmp:
        assert tmp.name == "results.jsonl.part"
        tmp.write_text("half")
        raise RuntimeError("interrupted")
    assert target.read_text() == "first\n" and sorted(p.name for p in target.parent.iterdir()) == ["results.jsonl"]


def test_errors_pickle_with_their_option_and_fields() -> None:
    import pickle

    from imgclassify.errors import UsageError, WeightsUnavailableError

    error = pickle.loads(pickle.dumps(UsageError("{option} must be at least 1", option="top_k")))
    assert str(error) == "--top-k must be at least 1" and error.naming("top_k") == "top_k must be at least 1"
    weights = pickle.loads(pickle.dumps(WeightsUnavailableError("long message", reason="offline")))
    assert (str(weights), weights.reason, weights.option) == ("long message", "offline", None)
