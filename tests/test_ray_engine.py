"""--engine ray on a real two-node Ray cluster on loopback (no mocks): same records as the local
engine, both nodes used, and an actor killed mid-run loses nothing."""

from __future__ import annotations

import ipaddress
import json
import os
import select
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from conftest import LABELLED, parse_jsonl
from imgclassify.cli import app
from imgclassify.errors import UsageError
from imgclassify.results.records import Prediction
from imgclassify.run.engines.ray import RAY_CLUSTER_SWITCH, InOrder, check_cpus_left

MB = 1024 * 1024
ACTOR_TITLE = b"ray::MapWorker(MapBatches(ModelActor))"
LOOPBACK = "127.0.0.1"


@pytest.fixture(scope="module")
def cluster() -> Iterator[Any]:
    """Two Ray nodes on this machine, 2 CPUs each (one model actor + decoding), small object stores,
    on loopback only (:func:`driver_env` makes the drivers reach them there)."""
    pytest.importorskip("ray")
    from ray.cluster_utils import Cluster

    nodes = Cluster(
        initialize_head=True,
        head_node_args={
            "num_cpus": 2, "object_store_memory": 200 * MB, "include_dashboard": False, "node_ip_address": LOOPBACK,
        },
    )  # fmt: skip
    nodes.add_node(num_cpus=2, object_store_memory=200 * MB, node_ip_address=LOOPBACK)
    nodes.wait_for_nodes()
    yield nodes
    nodes.shutdown()  # type: ignore[no-untyped-call]


def driver_env(tmp_path: Path) -> dict[str, str]:
    """A Ray driver's environment (imgclassify or :data:`DRIVER`). With Ray's cluster switch on, a
    driver would turn the cluster's 127.0.0.1 address into this machine's network one, where
    nothing listens."""
    env = {**os.environ, "IMGCLASSIFY_OFFLINE": "1", "TORCH_HOME": str(tmp_path / "th"), RAY_CLUSTER_SWITCH: "0"}
    env.pop("RAY_ADDRESS", None)
    return env


def start_predict(args: list[str], tmp_path: Path) -> subprocess.Popen[str]:
    exe = shutil.which("imgclassify", path=str(Path(sys.executable).parent)) or "imgclassify"
    return subprocess.Popen(
        [exe, "predict", *args, "-m", "efficientnet_lite0", "--engine", "ray", "--no-progress"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=driver_env(tmp_path),
    )  # fmt: skip


def actor_pids(cluster: Any) -> list[int]:
    """This cluster's model actors (workers are children of its raylets)."""
    raylets = {
        info.process.pid
        for node in cluster.list_all_nodes()
        for name, infos in node.all_processes.items()
        if name == "raylet"
        for info in infos
    }
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        if cmdline.startswith(ACTOR_TITLE) and ppid in raylets:
            pids.append(int(entry.name))
    return sorted(pids)


@pytest.mark.slow
def test_two_nodes_give_the_local_records(cluster: Any, lite0: Any, tmp_path: Path) -> None:
    photos = sorted(str(p) for p in LABELLED.iterdir())
    out = tmp_path / "ray.jsonl"
    proc = start_predict(
        [*photos, "-k", "3", "-b", "5", "--ray-address", cluster.address, "--ray-actors", "2", "-o", str(out)], tmp_path
    )
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stderr
    assert stdout == ""
    got: list[dict[str, Any]] = parse_jsonl(out.read_text())
    expected = [p.to_dict(top_k=True) for p in lite0.predict(photos, top_k=3)]
    assert [r["path"] for r in got] == photos  # input order
    for record, local in zip(got, expected, strict=True):
        assert [c["class_id"] for c in record["top_k"]] == [c["class_id"] for c in local["top_k"]], record["path"]
        for c, lc in zip(record["top_k"], local["top_k"], strict=True):
            assert c["probability"] == pytest.approx(lc["probability"], abs=1e-5)
        assert record["error"] is None

    manifest = json.loads((tmp_path / "ray.jsonl.manifest.json").read_text())
    engine = manifest["engine"]
    assert engine["name"] == "ray" and engine["address"] == cluster.address and engine["actors"] == 2
    nodes = engine["nodes"]
    assert {n["node_id"] for n in nodes} == {n.node_id for n in cluster.list_all_nodes()}  # both nodes ran the model
    assert all(n["images"] > 0 and n["ip"] for n in nodes)
    assert sum(n["images"] for n in nodes) == 50
    assert manifest["status"] == "complete" and manifest["counts"]["classified"] == 50


@pytest.mark.slow
def test_a_killed_actor_loses_nothing(cluster: Any, tmp_path: Path) -> None:
    photos = sorted(LABELLED.iterdir())
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for i in range(200):  # long enough to be killed mid-run; a bad file stays an error record
        shutil.copy(photos[i % len(photos)], corpus / f"img{i:03d}.jpg")
    (corpus / "img050.jpg").write_bytes(b"not an image")
    out = tmp_path / "killed.jsonl"
    proc = start_predict([str(corpus), "-b", "4", "--ray-address", cluster.address, "-o", str(out)], tmp_path)
    deadline = time.monotonic() + 240
    while not (out.exists() and out.read_text().count("\n") >= 8):
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "no records within 240 s"
        time.sleep(0.05)
    victims = actor_pids(cluster)
    assert victims, "no model actor found"
    os.kill(victims[0], signal.SIGKILL)
    written_at_kill = out.read_text().count("\n")
    _, stderr = proc.communicate(timeout=300)

    records = parse_jsonl(out.read_text())
    assert written_at_kill < 200  # the kill came mid-run
    assert [r["path"] for r in records] == [str(corpus / f"img{i:03d}.jpg") for i in range(200)], stderr
    assert [r["path"] for r in records if r["error"]] == [str(corpus / "img050.jpg")]
    assert proc.returncode == 1  # the one bad file
    assert victims[0] not in actor_pids(cluster)


#: A driver as ``--engine ray`` starts it (argv[1]: an address, or "" for the engine's own local
#: Ray); prints the addresses Ray reports, then stays connected until a line on stdin.
DRIVER = """
import json, sys
import ray
from imgclassify.run.engines.ray import RayEngine
from imgclassify.models.plan import plan_model
from imgclassify.options import ModelOptions

engine = RayEngine(plan_model(ModelOptions(model="efficientnet_lite0", device="cpu")), address=sys.argv[1] or None)
engine.start()
where = ray.remote(num_cpus=1, scheduling_strategy="SPREAD")(ray.util.get_node_ip_address)
print(json.dumps({
    "gcs": ray.get_runtime_context().gcs_address,
    "driver": ray.util.get_node_ip_address(),
    "tasks": ray.get([where.remote() for _ in range(2)]),
    "nodes": [{key: node[key] for key in ("NodeManagerAddress", "NodeName", "NodeManagerPort")} for node in ray.nodes()],
}), flush=True)
sys.stdin.readline()
engine.close()
"""


def is_loopback(host: str) -> bool:
    address = ipaddress.ip_address(host.strip("[]"))
    mapped = getattr(address, "ipv4_mapped", None)  # ::ffff:127.0.0.1, as gRPC's dual-stack sockets show it
    return address.is_loopback or (mapped is not None and mapped.is_loopback)


def listening(pids: list[int]) -> dict[int, set[str]]:
    """Port -> the addresses listening on it (TCP), for these processes and all their descendants."""
    psutil = pytest.importorskip("psutil")
    procs = {}
    for pid in pids:
        try:
            root = psutil.Process(pid)
            procs.update({p.pid: p for p in [root, *root.children(recursive=True)]})
        except psutil.NoSuchProcess:
            continue
    ports: dict[int, set[str]] = {}
    for proc in procs.values():
        try:
            conns = proc.net_connections(kind="tcp")
        except (psutil.NoSuchProcess, psutil.ZombieProcess):
            continue
        for conn in conns:
            if conn.status == psutil.CONN_LISTEN:
                ports.setdefault(conn.laddr.port, set()).add(conn.laddr.ip)
    return ports


def check_loopback_only(address: str, tmp_path: Path, ray_pids: list[int]) -> None:
    """Start :data:`DRIVER` on ``address``; every address Ray reports, and every socket its processes
    listen on (GCS, raylets, agents, workers, the driver), is loopback."""
    driver = subprocess.Popen(
        [sys.executable, "-c", DRIVER, address], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True, env=driver_env(tmp_path),
    )  # fmt: skip
    assert driver.stdout is not None
    line = ""
    try:
        if select.select([driver.stdout], [], [], 180)[0]:
            line = driver.stdout.readline()
        if line:
            ports = listening([driver.pid, *ray_pids])  # while the driver and its workers are up
        else:
            driver.kill()
    finally:
        stderr = driver.communicate("\n", timeout=120)[1]
    assert line and driver.returncode == 0, stderr[-3000:]
    seen = json.loads(line)
    gcs_host, _, gcs_port = seen["gcs"].rpartition(":")
    reported = {"gcs": gcs_host, "driver": seen["driver"]} | {f"task {i}": ip for i, ip in enumerate(seen["tasks"])}
    for i, node in enumerate(seen["nodes"]):
        reported |= {f"node {i} {key}": node[key] for key in ("NodeManagerAddress", "NodeName")}
    wide = {f"port {port}": sorted(hosts) for port, hosts in ports.items() if not all(map(is_loopback, hosts))}
    problems = {name: host for name, host in reported.items() if not is_loopback(host)} | wide
    assert not problems, problems
    # the scan saw Ray's servers: an empty list passes nothing
    assert {int(gcs_port), *(node["NodeManagerPort"] for node in seen["nodes"])} <= set(ports), (seen, ports)


@pytest.mark.slow
def test_the_test_cluster_listens_on_loopback_only(cluster: Any, tmp_path: Path) -> None:
    nodes = cluster.list_all_nodes()
    assert len(nodes) == 2
    ray_pids = [info.process.pid for node in nodes for infos in node.all_processes.values() for info in infos]
    check_loopback_only(cluster.address, tmp_path, ray_pids)
    assert [node.node_ip_address for node in nodes if not is_loopback(node.node_ip_address)] == []


@pytest.mark.slow
def test_the_engines_own_ray_listens_on_loopback_only(tmp_path: Path) -> None:
    pytest.importorskip("ray")
    check_loopback_only("", tmp_path, [])  # the local Ray's processes are the driver's children


def test_in_order_writes_each_index_once_in_input_order() -> None:
    order = InOrder(5)
    got = []
    for index in [1, 0, 0, 3, 1, 2, 3, 7]:  # out of order, retried duplicates, an unknown index
        got += [record.path for record, _ in order.add(index, Prediction(f"p{index}"), "node")]
    assert got == ["p0", "p1", "p2", "p3"]
    assert order.duplicates == 4
    assert order.missing() == [4]


def test_actors_must_leave_a_cpu_for_decoding() -> None:
    check_cpus_left(3, 1.0, 4)
    with pytest.raises(
        UsageError,
        match="--ray-actors 2 leaves no CPU for decoding on a Ray cluster of 2 CPUs; give --ray-actors 1 or less",
    ):
        check_cpus_left(2, 1.0, 2)


def test_ray_options_need_the_ray_engine(runner) -> None:  # type: ignore[no-untyped-def]
    result = runner.invoke(app, ["predict", str(LABELLED), "--ray-actors", "2"])
    assert result.exit_code == 2
    assert "imgclassify: error: --ray-address and --ray-actors need --engine ray" in result.stderr
