"""predict_anomaly through a real MCP client on the real binary: the baseline answers from the
first second, the LSTM trains in the background on the host's own history, a real failure
(a storm of refused connects) is flagged with the features behind it, and the model is saved,
reloaded on restart and refused when its schema does not match."""
import json
import socket

import anyio
import pytest
from mcp.shared.exceptions import MCPError

from conftest import Workload, call, run_with_server, settle

FEATURES = {
    "runqueue_delay_p99_ms", "page_alloc_per_s", "retransmits_per_s", "io_latency_p99_ms",
    "context_switches_per_s", "syscall_errors_per_s", "failed_connects_per_s", "cpu_pct",
}


def closed_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


async def wait_for_model(s, timeout=240):
    for _ in range(timeout // 5):
        p = await call(s, "predict_anomaly", {})
        if p["model"]["state"] == "trained":
            return p
        assert p["model"]["state"] in ("collecting", "training"), p["model"]
        await anyio.sleep(5)
    pytest.fail(f"no model after {timeout}s: {p['model']}")


def test_predict_anomaly_from_cold_start_to_a_trained_lstm_that_flags_refused_connects(tmp_path):
    data = tmp_path / "data"
    serve = ("serve", "--train-after", "60s", "--data-dir", str(data))

    async def body(s):
        p = await call(s, "predict_anomaly", {})
        assert p["service"] == "host" and p["detector"] == "robust-z", p
        assert p["model"]["state"] == "collecting" and p["model"]["samples_until_training"] > 0, p["model"]

        for args, hint in [
            ({"horizon": "2h"}, "allowed 10s to 300s"),
            ({"horizon": "5s"}, "allowed 10s to 300s"),
            ({"window": "soon"}, "window"),
            ({"service": "no-such-service"}, "no feature history"),
            ({"service": ""}, "service"),
            ({"bogus": 1}, "bogus"),
        ]:
            with pytest.raises(MCPError) as e:
                await s.call_tool("predict_anomaly", args)
            assert e.value.error.code == -32602 and hint in e.value.error.message, (args, e.value.error.message)

        # Steady activity while the first model trains on the host's own history.
        steady = Workload("sleeper", "pred-steady", 0, seconds=300)
        p = await wait_for_model(s)
        m = p["model"]
        assert m["trained_at"] and m["training_windows"] >= 64 and m["val_error"] is not None, m
        assert not m["loaded"]
        assert (data / "predictor" / "forecaster.bpk").exists()
        meta = json.loads((data / "predictor" / "forecaster.json").read_text())
        assert meta["schema"]["name"] == "host" and {f["name"] for f in meta["schema"]["features"]} == FEATURES

        # The new model calibrated itself on recent history: it answers at once.
        await settle()
        p = await call(s, "predict_anomaly", {"horizon": "30s"})
        assert p["detector"] == "lstm" and p["threshold"] is not None, p
        assert {f["feature"] for f in p["forecast"]} == FEATURES
        assert all(len(f["values"]) == 30 for f in p["forecast"])

        # A real failure: thousands of connects refused by a closed port.
        storm = Workload("refused", "pred-refused", closed_port(), count=20000)
        await anyio.to_thread.run_sync(storm.wait)
        await settle()
        p = await call(s, "predict_anomaly", {"window": "15s"})
        assert p["detector"] == "lstm" and p["is_anomaly"], p
        top = [c["feature"] for c in p["contributors"][:2]]
        assert {"failed_connects_per_s", "syscall_errors_per_s"} & set(top), p["contributors"]
        c = next(c for c in p["contributors"] if c["feature"] in top)
        assert c["value"] > 100 and c["value"] > 10 * c["expected"], c
        steady.kill()
        return m["trained_at"]

    trained_at = run_with_server(body, serve)

    async def reloaded(s):
        p = await call(s, "predict_anomaly", {})
        assert p["model"]["state"] == "trained" and p["model"]["loaded"], p["model"]
        assert p["model"]["trained_at"] == trained_at

    run_with_server(reloaded, serve)

    # A model of another schema version is set aside, not used.
    meta_path = data / "predictor" / "forecaster.json"
    meta = json.loads(meta_path.read_text())
    meta["schema"]["version"] = 99
    meta_path.write_text(json.dumps(meta))

    async def refused(s):
        p = await call(s, "predict_anomaly", {})
        assert p["model"]["state"] == "collecting" and not p["model"]["loaded"], p["model"]

    run_with_server(refused, serve)
