"""The README's commands work as printed (only the port differs: the test's server has its own)."""

from __future__ import annotations

import json
import re
import subprocess
import time
from pathlib import Path

from support import Service, service_env

ROOT = Path(__file__).resolve().parent.parent


def shell_block(heading: str) -> str:
    """The first ```sh block under a README heading."""
    text = (ROOT / "README.md").read_text()
    section = text.split(f"\n## {heading}\n", 1)[1].split("\n## ", 1)[0]
    match = re.search(r"```sh\n(.*?)```", section, re.DOTALL)
    assert match, heading
    return match.group(1)


def test_see_a_report_stored(db_url: str, tmp_path: Path) -> None:
    receiver = ROOT / ".venv" / "bin" / "receiver"
    assert receiver.exists(), "the README's commands use the .venv that `python3 dev.py` makes"
    env = service_env(tmp_path / "data", db_url)
    service = Service(env, workers=1).start()
    time.sleep(1.1)  # a reader comes later than that: the registry reads the applications at most once a second
    try:
        script = shell_block("See a report stored").replace("127.0.0.1:8080", f"127.0.0.1:{service.port}")
        done = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", script], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        answer, message = done.stdout.split("\n", 1)
        assert answer == "200"
        stored = json.loads(message)
        assert stored["sms_msg_id"] == "b9d9b4fe-ad0e-4a2a-a2c7-445505b674ac_6"
        assert stored["status"] == "DELIVRD" and len(stored["reports"]) == 1
    finally:
        assert service.terminate() == 0
