"""The real Dagster webserver on a free 127.0.0.1 port, asked over GraphQL what it loaded."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from cl_assets.defs.home import prepare_dagster_home
from cl_assets.launcher import answers, start, stop
from tests.conftest import REPO, make_settings

QUERY = """
{
  assetNodes { assetKey { path } assetChecksOrError { ... on AssetChecks { checks { name blocking } } } }
  repositoriesOrError { ... on RepositoryConnection { nodes { name sensors { name } jobs { name } } } }
}
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def graphql(port: int, query: str) -> dict:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/graphql",
        data=json.dumps({"query": query}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310 - our own local server
        return json.loads(response.read())["data"]


def test_webserver_loads_all_assets_checks_and_sensors(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    home = prepare_dagster_home(settings)
    env = {k: v for k, v in os.environ.items() if not k.startswith("CL_")}
    env.update({"DAGSTER_HOME": str(home), "CL_HOME": str(tmp_path), "CL_USER_HASH_SALT": "x"})
    port = free_port()
    argv = [sys.executable, "-m", "dagster_webserver", "-w", str(REPO / "workspace.yaml"), "-h", "127.0.0.1", "-p", str(port)]
    server = start("webserver", argv, f"http://127.0.0.1:{port}/server_info", env, REPO)
    try:
        deadline = time.monotonic() + 120
        while not answers(server.url):
            assert server.process.poll() is None, "webserver exited"
            assert time.monotonic() < deadline, "webserver did not answer within 120 s"
            time.sleep(0.5)
        data = graphql(port, QUERY)
    finally:
        stop([server])
    assert server.process.poll() is not None

    assets = {"/".join(n["assetKey"]["path"]): n for n in data["assetNodes"]}
    assert set(assets) == {
        "raw_interactions", "knowledge_facts", "curated_snapshot", "base_anchor", "lora_adapter",
        "adapter_eval", "deployed_adapter", "quality_metrics",
    }
    checks = {c["name"]: c["blocking"] for n in assets.values() for c in n["assetChecksOrError"]["checks"]}
    assert checks == {
        "snapshot_is_valid_chatml": True,
        "snapshot_has_no_pii": True,
        "adapter_files_load": True,
        "eval_not_worse_than_deployed": True,
        "forgetting_within_bound": True,
    }
    (repo,) = data["repositoriesOrError"]["nodes"]
    assert {s["name"] for s in repo["sensors"]} == {"feedback_sensor", "quality_sensor"}
    assert {"cycle_job", "rollback_job", "ingest_job"} <= {j["name"] for j in repo["jobs"]}


def test_dg_loads_the_same_definitions_as_workspace_yaml(tmp_path: Path) -> None:
    """`[tool.dg]` in pyproject.toml: `dg list defs` / `dg check defs` see the assets, checks and sensors."""
    from cl_assets.launcher import DG

    env = {k: v for k, v in os.environ.items() if not k.startswith("CL_")}
    env.update({"DAGSTER_HOME": str(prepare_dagster_home(make_settings(tmp_path))), "CL_HOME": str(tmp_path),
                "CL_USER_HASH_SALT": "x", "COLUMNS": "200"})
    checked = subprocess.run([*DG, "check", "defs"], env=env, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert checked.returncode == 0 and "All definitions loaded successfully" in checked.stdout, checked.stdout + checked.stderr
    listed = subprocess.run([*DG, "list", "defs", "--json"], env=env, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert listed.returncode == 0, listed.stderr
    text = listed.stdout
    for name in ("curated_snapshot", "deployed_adapter", "snapshot_has_no_pii", "feedback_sensor", "quality_sensor", "cycle_job"):
        assert name in text
