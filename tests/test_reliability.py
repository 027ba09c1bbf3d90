"""Bad manifests refused cleanly, restarts with back-off, and the security promises that are
not proven elsewhere: keys compared in constant time and stored privately, files changed on
disk never loaded again, and a flavor that unpickles said so by `validate`.

The manifest corpus lives in tests/data/corpus/manifests/: one bad manifest per class of mistake,
its first line ``# expect: EXIT | fragment of the message``.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import stat
import time
from pathlib import Path

import psutil
import pytest
import yaml

from tdsp_deploy.backends.local.supervisor import RestartPolicy
from tdsp_deploy.errors import BackendError, DeploymentFailed, ExitCode
from tests import paths

CORPUS = paths.DATA / "corpus" / "manifests"
CLASSES = {
    "syntax.yaml", "duplicate-keys.yaml", "types.yaml", "ranges.yaml", "unknown-keys.yaml",
    "missing-files.yaml", "escaping-paths.yaml", "undefined-variable.yaml", "platform-limits.yaml",
    "code-tag.yaml",
}  # fmt: skip


def corpus() -> list[tuple[str, int, str]]:
    found = []
    for path in sorted(CORPUS.glob("*.yaml")):
        first = path.read_text(encoding="utf-8").splitlines()[0]
        code, _, fragment = first.removeprefix("# expect: ").partition(" | ")
        found.append((path.name, int(code), fragment))
    return found


def test_the_corpus_has_one_manifest_per_class_of_mistake():
    assert {name for name, *_ in corpus()} == CLASSES


@pytest.mark.parametrize(("name", "exit_code", "fragment"), corpus(), ids=[c[0] for c in corpus()])
def test_a_bad_manifest_gets_its_exit_code_and_message_and_changes_nothing(
    cli, state_home, name, exit_code, fragment
):
    path = CORPUS / name
    environ = {k: v for k, v in os.environ.items() if k != "TDSP_CORPUS_NEVER_SET"}
    for command in ("validate", "push"):
        result = cli(command, path, "--json", environ=environ)
        assert result.exit_code == exit_code, (command, result.stdout)
        error = result.json()
        assert fragment in error["message"], error["message"]
        assert error["exit_code"] == exit_code
        human = cli(command, path, environ=environ)
        assert human.exit_code == exit_code and fragment in human.stderr
        assert "Traceback" not in human.stderr + human.stdout
    assert not (state_home / "endpoints").exists()  # nothing deployed, nothing half-written
    assert not Path("/tmp/tdsp-corpus-pwned").exists()  # the code tag never ran


# --- restarts ---------------------------------------------------------------------------------


def test_restart_back_off_doubles_to_its_ceiling_and_resets_after_a_healthy_stretch():
    policy = RestartPolicy(first=0.5, ceiling=30.0, healthy_stretch=60.0)
    assert [policy.next_delay() for _ in range(9)] == [0.5, 1, 2, 4, 8, 16, 30, 30, 30]
    policy.ran_for(59.0)  # not long enough: the next crash still waits the ceiling
    assert policy.next_delay() == 30
    policy.ran_for(60.0)
    assert [policy.next_delay() for _ in range(3)] == [0.5, 1, 2]
    # a slot that crash-loops for hours: the delay stays at the ceiling (2**1024 is no float)
    assert {policy.next_delay() for _ in range(3000)} == {4, 8, 16, 30}


def test_the_lock_of_a_killed_command_is_taken_over_at_once(state_home):
    """A command killed while it holds the endpoint's lock leaves no lock behind."""
    import subprocess
    import sys

    from tdsp_deploy.backends.local.state import EndpointFiles
    from tdsp_deploy.locks import FileLock

    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import sys, time\n"
         "from tdsp_deploy.backends.local.state import EndpointFiles\n"
         "from tdsp_deploy.locks import FileLock\n"
         "with FileLock(EndpointFiles('iris').lock_path, 'iris', timeout=5):\n"
         "    print('held', flush=True); time.sleep(600)\n"],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "held"
        with (
            pytest.raises(BackendError, match="locked by another command"),
            FileLock(EndpointFiles("iris").lock_path, "iris", timeout=0.2),
        ):
            pass
        holder.kill()
        holder.wait(timeout=30)
        # a stale lock would time out
        with FileLock(EndpointFiles("iris").lock_path, "iris", timeout=30) as lock:
            assert lock.path.read_text() == str(os.getpid())  # this process holds it now
    finally:
        holder.kill()
        holder.wait(timeout=30)


# --- keys ---------------------------------------------------------------------------------------


def test_the_router_compares_every_key_in_constant_time(tmp_path, monkeypatch):
    """hmac.compare_digest against each key, every time: how long the check takes says
    neither whether a key matched nor which one."""
    from tdsp_deploy.backends.local import admission
    from tdsp_deploy.backends.local import router as router_module
    from tdsp_deploy.backends.local.routes import RouterConfig

    keys = tmp_path / "keys.json"
    keys.write_text(json.dumps({"primary_key": "p" * 43, "secondary_key": "s" * 43}))
    admin = tmp_path / "admin.json"
    admin.write_text(json.dumps({"admin_key": "a" * 43, "slot_key": "k" * 43}))
    config = tmp_path / "router.json"
    RouterConfig(endpoint="e", host="127.0.0.1", port=1, keys_file=str(keys), admin_file=str(admin)).write(
        config
    )
    router = router_module.Router(config)
    compared: list[tuple[bytes, bytes]] = []
    real = admission.hmac.compare_digest

    def counting(a: bytes, b: bytes) -> bool:
        compared.append((a, b))
        return real(a, b)

    monkeypatch.setattr(admission.hmac, "compare_digest", counting)
    tries = ((b"Bearer " + b"p" * 43, None), (b"Bearer " + b"s" * 43, None), (b"Bearer x", 401))
    for header, refused in tries:
        compared.clear()
        refusal = router.credentials.refusal(admission.SCORING, [header])
        assert (refusal and refusal[0]) == refused
        assert len(compared) == 3, "every key (two scoring, one admin) is compared, also after a match"
    assert router.credentials.refusal(admission.SCORING, [])[0] == 401


def test_rotated_keys_stay_private_and_are_written_nowhere_else(cli, iris, state_home):
    pushed = cli("push", iris, "--json")
    try:
        assert pushed.exit_code == 0, pushed.stderr
        old = cli("credentials", iris, "--json").json()
        new = cli("credentials", iris, "--regenerate", "--json").json()
        assert set(old.values()).isdisjoint(new.values())
        root = state_home / "endpoints" / "iris"
        assert stat.S_IMODE((root / "keys.json").stat().st_mode) == 0o600
        for path in (p for p in state_home.rglob("*") if p.is_file() and p.name != "keys.json"):
            content = path.read_bytes()
            for key in (*old.values(), *new.values()):
                assert key.encode() not in content, path
    finally:
        cli("delete", iris, "--yes")


# --- what is loaded is what was checked -------------------------------------------------------


def test_an_extracted_package_is_checked_against_its_lock_before_it_is_loaded_again(iris, tmp_path):
    from tdsp_deploy.manifest import load_manifest
    from tdsp_deploy.packaging import build_package, extract_package
    from tdsp_deploy.packaging.extract import verify_extracted

    built = build_package(load_manifest(iris).manifest, tmp_path / "out")
    dest = tmp_path / "slot" / "package"
    extract_package(built.path, dest)
    (dest / "code" / "__pycache__").mkdir()
    (dest / "code" / "__pycache__" / "score.cpython-311.pyc").write_bytes(b"written by the running script")
    assert verify_extracted(dest, built.package_id).package_id == built.package_id
    with pytest.raises(DeploymentFailed, match="not of"):
        verify_extracted(dest, "0" * 64)
    model = dest / "model" / "model" / "model.onnx"
    data = bytearray(model.read_bytes())
    data[len(data) // 2] ^= 0x01
    model.write_bytes(bytes(data))
    with pytest.raises(DeploymentFailed, match="does not match the package's lock") as caught:
        verify_extracted(dest, built.package_id)
    assert caught.value.exit_code == ExitCode.DEPLOYMENT_FAILED
    model.unlink()
    with pytest.raises(DeploymentFailed, match="cannot be read"):
        verify_extracted(dest, built.package_id)


@pytest.mark.timeout(240)
def test_a_slot_whose_model_changed_on_disk_is_not_restarted(cli, iris, state_home):
    pushed = cli("push", iris, "--json")
    try:
        assert pushed.exit_code == 0, pushed.stderr
        blue = cli("status", iris, "--json").json()["slots"][0]["details"]
        model = state_home / "endpoints" / "iris" / "slots" / "blue" / blue["revision"] / "package" / "model"
        (model / "model" / "model.onnx").write_bytes(b"not the model that was checked")
        group = [psutil.Process(blue["pid"]), *psutil.Process(blue["pid"]).children(recursive=True)]
        os.killpg(blue["pid"], signal.SIGKILL)
        psutil.wait_procs(group, timeout=30)
        deadline = time.monotonic() + 60
        while "not restarted" not in "\n".join(cli("logs", iris, "--json").json()["lines"]):
            assert time.monotonic() < deadline, "the supervisor did not refuse the restart"
            time.sleep(0.2)
        assert "does not match the package's lock" in cli("logs", iris).stdout
        assert cli("status", iris, "--json").json()["slots"][0]["state"] == "stopped"
        # a push neither loads it: it says why, and deploys the checked package to the other slot
        healed = cli("push", iris, "--json")
        assert healed.exit_code == 0, healed.stderr
        assert any("deployment 'blue' not restarted" in w for w in healed.json()["warnings"])
        assert healed.json()["traffic"] == {"blue": 0, "green": 100}
        invoked = cli("invoke", iris, "--request", iris.parent / "sample-request.json", "--json")
        assert invoked.exit_code == 0 and invoked.json()["deployment"] == "green"
    finally:
        cli("delete", iris, "--yes")


# --- pickles ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("flavor", "model_file", "warned"),
    [
        ("sklearn", "model.pkl", True),
        ("sklearn", "model.joblib", True),
        ("sklearn", "model.skops", False),  # skops loads without unpickling
        ("mlflow", "model.pkl", True),
        ("onnx", "model.onnx", False),
        (None, "model.pkl", False),  # no flavor: the scoring script loads it, as the user wrote it
    ],
)
def test_validate_says_when_a_flavor_loads_a_pickle(cli, tmp_path, flavor, model_file, warned):
    root = tmp_path / "project"
    shutil.copytree(CORPUS / "model", root / "model")
    (root / "model" / "model.bin").rename(root / "model" / model_file)
    if flavor == "mlflow":
        (root / "model" / "MLmodel").write_text(
            "flavors:\n  python_function:\n    loader_module: mlflow.sklearn\n    model_path: model.pkl\n"
        )
    shutil.copy(CORPUS / "score.py", root / "score.py")
    manifest = {"name": "pickles", "model": {"path": "model/"}, "scoring": {"script": "score.py"}}
    if flavor:
        manifest["model"]["flavor"] = flavor
    (root / "deploy.yaml").write_text(yaml.safe_dump(manifest))
    result = cli("validate", root / "deploy.yaml", "--json")
    assert result.exit_code == 0, result.stdout
    found = [w for w in result.json()["warnings"] if "unpickling" in w]
    assert bool(found) is warned, result.json()["warnings"]
    if warned:
        assert f"model/{model_file}" in found[0] and "model.flavor: onnx" in found[0]


def test_a_skops_model_is_locked_with_the_library_that_loads_it_without_running_code(tmp_path):
    from tdsp_deploy.manifest import load_manifest
    from tdsp_deploy.packaging import build_package

    root = tmp_path / "project"
    shutil.copytree(CORPUS / "model", root / "model")
    (root / "model" / "model.bin").rename(root / "model" / "model.skops")
    shutil.copy(CORPUS / "score.py", root / "score.py")
    manifest = {"name": "skops", "model": {"path": "model/", "flavor": "sklearn"}}
    manifest["scoring"] = {"script": "score.py"}
    (root / "deploy.yaml").write_text(yaml.safe_dump(manifest))
    built = build_package(load_manifest(root / "deploy.yaml").manifest, tmp_path / "out")
    assert set(built.lock.libraries) == {"scikit-learn", "skops"}
