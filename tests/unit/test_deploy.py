"""Deployment files agree with the code: every queue has a consumer and a scaler, workers get
a warm-shutdown grace period above the longest task time limit."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from pipeline.queue import QUEUES
from pipeline.settings import Settings

ROOT = Path(__file__).resolve().parents[2]


def _docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def _queues_of(command: list[str]) -> set[str]:
    return set(command[command.index("-Q") + 1].split(","))


def test_compose_consumes_every_queue_and_stops_warmly() -> None:
    services = _docs(ROOT / "docker-compose.yml")[0]["services"]
    assert {"postgres", "redis", "minio", "api", "worker-cpu", "worker-gpu", "flower"} <= set(
        services
    )
    workers = [s for name, s in services.items() if name.startswith("worker-")]
    consumed = set().union(*(_queues_of(w["command"]) for w in workers))
    assert consumed == set(QUEUES)
    longest = Settings().visibility_timeout - 600
    for worker in workers:
        assert int(worker["stop_grace_period"].rstrip("s")) > longest
    gpu = services["worker-gpu"]["deploy"]["resources"]["reservations"]["devices"][0]
    assert gpu["capabilities"] == ["gpu"]


def test_k8s_pools_and_keda_cover_every_queue() -> None:
    k8s = ROOT / "deploy" / "k8s"
    listed = _docs(k8s / "kustomization.yaml")[0]["resources"]
    assert all((k8s / name).exists() for name in listed)
    deployments = [d for f in k8s.glob("worker-*.yaml") for d in _docs(f)]
    consumed = set().union(
        *(
            _queues_of(d["spec"]["template"]["spec"]["containers"][0]["command"])
            for d in deployments
        )
    )
    assert consumed == set(QUEUES)
    for d in deployments:
        assert d["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] >= 3900
    scaled = {
        t["metadata"]["listName"] for s in _docs(k8s / "keda.yaml") for t in s["spec"]["triggers"]
    }
    assert scaled == set(QUEUES)


def test_prometheus_sends_the_metrics_token_compose_sets() -> None:
    env = _docs(ROOT / "docker-compose.yml")[0]["x-openimm-env"]
    scrape = _docs(ROOT / "deploy" / "prometheus.yml")[0]["scrape_configs"]
    api = next(job for job in scrape if job["job_name"] == "openimm-api")
    assert api["authorization"]["credentials"] == env["OPENIMM_METRICS_TOKEN"]
    secret = _docs(ROOT / "deploy" / "k8s" / "secret.example.yaml")[0]["stringData"]
    assert "OPENIMM_METRICS_TOKEN" in secret
