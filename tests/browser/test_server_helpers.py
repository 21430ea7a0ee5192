"""The prompt helpers of tests/browser/comfy_server.py against the real server (no browser page):
the lead's real-training browser test relies on them."""
import pytest

pytestmark = pytest.mark.browser

# sizes no other browser test uses: the server is shared by the session, and a node whose inputs an earlier
# prompt already ran is served from its cache (no "executing" event)
PROMPT = {
    "1": {"class_type": "EmptyLatentImage", "inputs": {"width": 72, "height": 56, "batch_size": 3}},
    "2": {"class_type": "SaveLatent", "inputs": {"samples": ["1", 0], "filename_prefix": "lora_loop_helper_test"}},
}


def test_run_prompt_ws_follows_a_prompt_to_completion(comfy_server):
    run = comfy_server.run_prompt_ws(PROMPT, timeout=120)
    assert run.end == "execution_success", run.messages[-5:]
    executed = {e["node"] for e in run.events("executing") if e.get("prompt_id") == run.prompt_id}
    assert {"1", "2"} <= executed, run.messages
    assert run.history["status"]["status_str"] == "success"
    assert "2" in run.history["outputs"]  # SaveLatent's UI output


def test_queue_prompt_reports_validation_errors(comfy_server):
    bad = {"1": {"class_type": "EmptyLatentImage", "inputs": {"width": 64}}}
    with pytest.raises(RuntimeError, match="HTTP 400"):
        comfy_server.queue_prompt(bad, client_id="lora-loop-test")
