"""Experiment trackers, as practitioners use them: TensorBoard event files in every run's folder, a real
MLflow tracking server on loopback, W&B offline, and a tracker that cannot be reached (the run goes on,
with one warning in its log). Each run is a tiny job through the worker's own ``run_job``."""
from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import free_port, wait_for

STEPS = 4


def _job(tiny_model_dir, tmp_path, name: str, **kw):
    """A queued row for a tiny SFT job (not handed to a queue: the test runs it itself)."""
    from identity_data import write
    from studio import db, library
    from studio.settings import get_settings
    from studio.spec import JobSpec

    if db.get_dataset("identity") is None:
        library.add(write(tmp_path / "identity.jsonl"), name="identity")
    spec = JobSpec(base_model=str(tiny_model_dir), dataset="identity", load_in_4bit=False, r=4, lora_alpha=8,
                   learning_rate=1e-3, per_device_train_batch_size=2, max_length=128, max_steps=STEPS,
                   eval_split=0.2, eval_steps=2, name=name, **kw)
    job = db.Job(name=name, spec_json=spec.to_json(), output_dir=f"jobs/{name}")
    with db.session() as s:
        s.add(job)
        s.commit()
    return job.id, get_settings().resolve(job.output_dir)


def _train(job_id):
    from studio import db
    from workers import train

    assert train.run_job(job_id) == "completed", db.get_job(job_id).error


def _warnings(folder: Path) -> list[str]:
    return [line for line in (folder / "train.log").read_text().splitlines() if " WARNING " in line]


def test_a_log_before_training_begins_writes_into_the_run_folder_not_the_working_directory(studio_home, tiny_model_dir,
                                                                                           tmp_path, monkeypatch):
    """TensorBoard opens its writer at the first log; a trainer that logs before training begins (a metric the
    worker logs itself) must still write into the run's folder, never into ./runs where the process started."""
    from transformers import TrainerCallback

    from studio.spec import JobSpec
    from workers import train

    started_in = tmp_path / "cwd"
    started_in.mkdir()
    monkeypatch.chdir(started_in)
    spec = JobSpec(base_model=str(tiny_model_dir), dataset="d", load_in_4bit=False, r=4, lora_alpha=8, max_steps=1,
                   max_length=64, eval_split=0.0)
    model, tok = train.load_model_for_training(spec, tiny_model_dir, "cpu")
    rows = [{"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]}]
    trainer = train.build_trainer(spec, "chat", model, tok, rows, [], tmp_path / "job", TrainerCallback(), "cpu")
    trainer.log({"loss": 1.0})
    assert list(started_in.iterdir()) == []
    assert list((tmp_path / "job" / "tensorboard").glob("events.out.tfevents.*"))


def test_every_run_writes_tensorboard_events_in_its_folder(studio_home, tiny_model_dir, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    job_id, folder = _job(tiny_model_dir, tmp_path, "tb")
    _train(job_id)
    events = list((folder / "tensorboard").glob("events.out.tfevents.*"))
    assert events, "the run's tensorboard folder holds event files"
    acc = EventAccumulator(str(folder / "tensorboard"))
    acc.Reload()
    tags = acc.Tags()["scalars"]
    assert "train/loss" in tags and "eval/loss" in tags, tags
    assert [e.step for e in acc.Scalars("train/loss")] == list(range(1, STEPS + 1))
    assert not _warnings(folder)


def _mlflow_server_command() -> list[str] | None:
    """An ``mlflow`` that can serve: this environment's when the full mlflow is installed here, else the one
    named by MLFLOW_SERVER_BIN (a separate environment: mlflow's server pins pyarrow below this project's)."""
    if os.environ.get("MLFLOW_SERVER_BIN"):
        return [os.environ["MLFLOW_SERVER_BIN"]]
    if importlib.util.find_spec("flask") is not None and shutil.which("mlflow"):
        return [sys.executable, "-m", "mlflow"]
    return None


@pytest.fixture
def mlflow_server(tmp_path):
    if importlib.util.find_spec("mlflow") is None:
        pytest.skip("the mlflow client is not installed (pip install mlflow-skinny)")
    command = _mlflow_server_command()
    if command is None:
        pytest.skip("no MLflow server here: install mlflow in a separate environment and set MLFLOW_SERVER_BIN "
                    "to its mlflow executable")
    port = free_port()
    log = open(tmp_path / "mlflow-server.log", "wb")
    proc = subprocess.Popen([*command, "server", "--host", "127.0.0.1", "--port", str(port),
                             "--backend-store-uri", f"sqlite:///{tmp_path / 'mlflow.db'}",
                             "--default-artifact-root", str(tmp_path / "mlartifacts"), "--workers", "1"],
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        from workers.trackers import reachable

        wait_for(lambda: proc.poll() is None and reachable(f"{url}/health"), 120, what="the MLflow server")
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()


def test_mlflow_server_receives_params_metrics_and_the_adapter(studio_home, tiny_model_dir, tmp_path,
                                                              mlflow_server, monkeypatch):
    import mlflow
    from mlflow.tracking import MlflowClient

    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    job_id, folder = _job(tiny_model_dir, tmp_path, "ml", report_to="mlflow")
    _train(job_id)
    assert not _warnings(folder)
    client = MlflowClient(tracking_uri=mlflow_server)
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()],
                              filter_string="attributes.run_name = 'ml'")
    assert len(runs) == 1
    run = runs[0]
    assert run.info.status == "FINISHED"
    assert run.data.params["spec/learning_rate"] == "0.001" and run.data.params["spec/r"] == "4"
    assert run.data.params["spec/report_to"] == "mlflow"
    assert "learning_rate" in run.data.params  # transformers' TrainingArguments, beside the spec
    losses = client.get_metric_history(run.info.run_id, "loss")
    assert [m.step for m in losses] == list(range(1, STEPS + 1))
    assert client.get_metric_history(run.info.run_id, "eval_loss")
    files = {f.path for f in client.list_artifacts(run.info.run_id, "adapter")}
    assert {"adapter/adapter_config.json", "adapter/adapter_model.safetensors"} <= files
    mlflow.set_tracking_uri("")  # the process-wide URI must not follow this test's server into the next


def test_an_unreachable_tracker_is_one_warning_and_the_run_completes(studio_home, tiny_model_dir, tmp_path,
                                                                     monkeypatch):
    if importlib.util.find_spec("mlflow") is None:
        pytest.skip("the mlflow client is not installed (pip install mlflow-skinny)")
    closed = free_port()  # nothing listens there
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{closed}")
    job_id, folder = _job(tiny_model_dir, tmp_path, "unreachable", report_to="mlflow")
    _train(job_id)
    warnings = _warnings(folder)
    assert len(warnings) == 1, warnings
    assert f"127.0.0.1:{closed} does not answer" in warnings[0]
    assert list((folder / "tensorboard").glob("events.out.tfevents.*")), "TensorBoard still records the run"


def test_wandb_offline_run_holds_the_metrics_the_spec_and_the_adapter(studio_home, tiny_model_dir, tmp_path,
                                                                      monkeypatch):
    if importlib.util.find_spec("wandb") is None:
        pytest.skip("wandb is not installed (pip install wandb)")
    import json

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb-dir"))
    monkeypatch.setenv("WANDB_SILENT", "true")
    (tmp_path / "wandb-dir").mkdir()
    job_id, folder = _job(tiny_model_dir, tmp_path, "wb", report_to="wandb")
    _train(job_id)
    assert not _warnings(folder)
    runs = list((tmp_path / "wandb-dir" / "wandb").glob("offline-run-*/*.wandb"))
    assert len(runs) == 1, runs
    # wandb 0.31 has no Python reader for its run file: the records are protobuf in a log, their keys and
    # names plain bytes in it
    data = runs[0].read_bytes()
    for needed in (b"train/loss", b"eval/loss", b"spec", b"report_to", b"adapter-wb", b"adapter_model.safetensors",
                   b"adapter_config.json"):
        assert needed in data, needed
