"""A third party's backend plugs in through entry points, exactly as whisperkv's own do: the reference finds
it by name, the command offers it, and its errors are reported as whisperkv's own."""

from __future__ import annotations

import json
import os
from pathlib import Path

from whisperkv.reference.registry import BACKEND_GROUP, FOLDER_GROUP

from .helpers import AUDIO_DIR, whisperkv

PLUGIN = '''
from pathlib import Path

from whisperkv.reference.errors import InputError
from whisperkv.reference.model import NumpyModel
from whisperkv.reference.registry import FolderNotRecognised


class EchoBackend(NumpyModel):
    """The reference under another name: a stand-in for someone's compiled model."""
    name = "echo"


def make(checkpoint, **options):
    if options:
        raise InputError(f"echo: unknown options {sorted(options)}")
    return EchoBackend(checkpoint)


def open_folder(folder, checkpoint):
    if not (Path(folder) / "echo.txt").is_file():
        raise FolderNotRecognised("no echo.txt")
    return EchoBackend(checkpoint)
'''


def install_plugin(site: Path) -> dict[str, str]:
    """A minimal installed distribution (module + dist-info with entry points) on a path of its own."""
    site.mkdir(parents=True, exist_ok=True)
    (site / "echo_backend.py").write_text(PLUGIN)
    info = site / "echo_backend-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: echo-backend\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[{BACKEND_GROUP}]\necho = echo_backend:make\n\n"
                                           f"[{FOLDER_GROUP}]\necho = echo_backend:open_folder\n")
    return dict(os.environ, PYTHONPATH=str(site))


def test_a_third_party_backend_is_found_by_name_and_by_folder(tmp_path: Path) -> None:
    env = install_plugin(tmp_path)
    clip = AUDIO_DIR / "pocketsphinx_goforward.wav"
    p = whisperkv("transcribe", clip, "--backend", "echo", "--format", "json", "--quiet", env=env)
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["backend"] == "echo"
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "echo.txt").write_text("")
    p = whisperkv("verify", clip, "--candidate", folder, env=env)
    assert p.returncode == 0 and "candidate echo" in p.stdout and "AGREE" in p.stdout, p.stdout + p.stderr


def test_a_folder_nobody_recognises_names_what_each_opener_looked_for(tmp_path: Path) -> None:
    env = install_plugin(tmp_path / "site")
    empty = tmp_path / "empty"
    empty.mkdir()
    p = whisperkv("verify", AUDIO_DIR / "pocketsphinx_goforward.wav", "--candidate", empty, env=env)
    assert p.returncode == 2 and "Traceback" not in p.stderr
    line = p.stderr.strip()
    assert "\n" not in line and str(empty) in line
    assert "no echo.txt" in line and "no *.onnx and no *.so files" in line  # both openers said what they expected


def test_a_plugin_put_on_sys_path_later_in_the_process_is_found(tmp_path: Path, monkeypatch) -> None:
    # The registry scans the installed distributions once for every group, until sys.path changes.
    from whisperkv.reference import registry

    assert "echo" not in registry.available_backends()
    install_plugin(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    assert "echo" in registry.available_backends()
    assert set(registry.group_entry_points(FOLDER_GROUP)) >= {"echo", "onnx"}
    monkeypatch.undo()
    assert "echo" not in registry.available_backends()
