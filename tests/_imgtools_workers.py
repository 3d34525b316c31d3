"""Workers and driver scripts for the med-imagetools tests (test_imgtools.py).

Needs med-imagetools. Each scenario runs in a fresh interpreter started by the
test (``python tests/_imgtools_workers.py SCENARIO ...``), so that installing
index-writer into med-imagetools, environment variables and worker pools never
leak into the pytest process or into each other. The driver prints one JSON
document on its last line of output.

The functions are importable (this directory is on ``sys.path`` of the driver
and, through multiprocessing's preparation data, of spawn and forkserver
children) so that workers can unpickle them.
"""

from __future__ import annotations

import csv
import json
import multiprocessing
import os
import sys
import threading
import time
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import index_writer
from index_writer._imgtools import ENV_VAR

NAMES = (
    "IndexWriter",
    "IndexWriterError",
    "IndexSchemaMismatchError",
    "IndexReadError",
    "IndexWriteError",
)
#: A row wider than its header: index-writer refuses it (IndexReadError);
#: med-imagetools' original silently drops the extra field.
MALFORMED = "filepath,note\nold.nii.gz,a,EXTRA\n"


def patched_names() -> dict[str, bool]:
    """For each replaced name in both modules: is it index-writer's object?"""
    import imgtools.io.writers.abstract_base_writer as abw
    import imgtools.io.writers.index_writer as iw

    return {
        f"{m.__name__.rsplit('.', 1)[1]}.{n}": getattr(m, n) is getattr(index_writer, n)
        for m in (iw, abw)
        for n in NAMES
    }


def is_patched() -> bool:
    flags = patched_names()
    if all(flags.values()):
        return True
    if not any(flags.values()):
        return False
    raise AssertionError(f"partly patched: {flags}")


def small_image(value: int) -> Any:
    import SimpleITK as sitk

    img = sitk.Image([8, 8, 4], sitk.sitkUInt8)
    img[0, 0, 0] = value % 256
    img.SetSpacing((1.0, 1.0, 2.5))
    return img


def nifti_writer(root: str | Path, filename_format: str, **kw: Any) -> Any:
    from imgtools.io.writers import NIFTIWriter

    return NIFTIWriter(
        root_directory=Path(root),
        filename_format=filename_format,
        existing_file_mode="fail",
        compression_level=1,
        **kw,
    )


def index_paths(index: str | Path) -> list[str]:
    with open(index, newline="", encoding="utf-8") as f:
        return [row["filepath"] for row in csv.DictReader(f)]


# ---------------------------------------------------------------- one worker


def worker_report(good: Any = None, bad: Any = None, root: str = "") -> dict[str, Any]:
    """What a worker sees: patched or not, and what a save does.

    ``good`` and ``bad`` are NIFTIWriters pickled from the parent (or None: the
    worker makes its own under ``root``). ``bad``'s index is malformed.
    """
    from imgtools.io.writers.abstract_base_writer import WriterIndexError

    pid = os.getpid()
    report: dict[str, Any] = {"pid": pid, "patched": is_patched(), "env": os.environ.get(ENV_VAR)}
    if good is None:
        good = nifti_writer(Path(root) / "good", "{pid}/img.nii.gz")
    if bad is None:
        bad_root = Path(root) / f"bad-{pid}"
        bad = nifti_writer(bad_root, "{pid}/img.nii.gz")
        bad.index_file.write_text(MALFORMED, encoding="utf-8")
    report["writer"] = type(good._index_writer).__module__
    saved = good.save(small_image(pid), pid=pid)
    report["saved_indexed"] = str(saved.relative_to(good.root_directory)) in index_paths(
        good.index_file
    )
    before = bad.index_file.read_bytes()
    try:
        bad.save(small_image(pid), pid=pid)
    except WriterIndexError as e:
        cause = e.__cause__
        report["error"] = "WriterIndexError"
        report["cause"] = f"{type(cause).__module__}.{type(cause).__qualname__}"
        report["cause_message"] = str(cause)
    else:
        report["error"] = None
    report["bad_index_unchanged"] = bad.index_file.read_bytes() == before
    return report


def _run_in(method: str, args: tuple[Any, ...], n: int = 1) -> list[dict[str, Any]]:
    """Run ``worker_report(*args)`` in ``n`` workers started by ``method``."""
    if method in ("spawn", "forkserver", "fork"):
        ctx = multiprocessing.get_context(method)
        with ProcessPoolExecutor(n, mp_context=ctx) as pool:
            return [f.result(120) for f in [pool.submit(worker_report, *args) for _ in range(n)]]
    if method == "loky":
        from joblib import Parallel, delayed

        out = Parallel(n_jobs=n, backend="loky")(delayed(worker_report)(*args) for _ in range(n))
        return list(out)
    if method == "dask":
        from distributed import Client, LocalCluster

        with (
            LocalCluster(
                n_workers=n, threads_per_worker=1, processes=True, dashboard_address=None
            ) as cluster,
            Client(cluster) as client,
        ):
            futures = [client.submit(worker_report, *args, pure=False) for _ in range(n)]
            return list(client.gather(futures))
    raise ValueError(method)


def scenario_workers(method: str, route: str, root: str) -> dict[str, Any]:
    """Workers started by ``method`` (spawn, forkserver, fork, loky, dask) after
    the parent was patched by ``route``.

    - ``pickled``: the parent calls install_as_imgtools(), then removes the
      environment variable, so only the writers pickled to the worker can
      patch it;
    - ``control``: as ``pickled``, but no writer is sent: the worker must
      stay unpatched (proves the pickled route is what patches);
    - ``env``: the parent calls install_as_imgtools() (which sets the
      variable), the worker makes its own writers;
    - ``shell``: the parent does not call it; the test started the parent with
      the variable set.
    """
    if route != "shell":
        index_writer.install_as_imgtools()
    if route in ("pickled", "control"):
        os.environ.pop(ENV_VAR, None)
    args: tuple[Any, ...] = ("", "", root)
    if route == "pickled":
        good = nifti_writer(Path(root) / "good", "{pid}/img.nii.gz")
        bad = nifti_writer(Path(root) / "bad", "{pid}/img.nii.gz")
        bad.index_file.write_text(MALFORMED, encoding="utf-8")
        args = (good, bad, root)
    else:
        args = (None, None, root)
    parent = {"patched": is_patched(), "env": os.environ.get(ENV_VAR)}
    workers = _run_in(method, args, n=2 if method == "loky" else 1)
    return {"parent": parent, "workers": workers}


# ---------------------------------------------------------------- the stress run


def stress_process(
    root: str, proc: int, n_threads: int, n_images: int, ready: Any
) -> dict[str, Any]:
    """``n_threads`` threads, each with its own NIFTIWriter, save ``n_images`` each."""
    errors: Counter[str] = Counter()
    lock = threading.Lock()
    writers = [
        nifti_writer(root, "p{proc}/t{thread}/img{i}.nii.gz") for _ in range(n_threads)
    ]
    images = [small_image(i) for i in range(n_images)]
    patched = is_patched()
    ready.wait(300)
    start = time.perf_counter()

    def run(t: int) -> None:
        for i in range(n_images):
            try:
                writers[t].save(images[i], proc=proc, thread=t, i=f"{i:04d}")
            except Exception as e:
                with lock:
                    errors[type(e).__name__] += 1

    threads = [threading.Thread(target=run, args=(t,)) for t in range(n_threads)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    return {
        "patched": patched,
        "seconds": time.perf_counter() - start,
        "errors": dict(errors),
    }


def scenario_stress(
    mode: str, root: str, procs: int, threads: int, images: int
) -> dict[str, Any]:
    """``procs`` spawned processes × ``threads`` × ``images`` saves into one index."""
    if mode == "ours":
        index_writer.install_as_imgtools()
    elif ENV_VAR in os.environ:
        raise SystemExit(f"{ENV_VAR} is set: the original cannot be measured")
    ctx = multiprocessing.get_context("spawn")
    with ctx.Manager() as manager, ProcessPoolExecutor(procs, mp_context=ctx) as pool:
        # Every process builds its writers, then all start at once with us.
        ready = manager.Barrier(procs + 1)
        futures = [
            pool.submit(stress_process, root, p, threads, images, ready) for p in range(procs)
        ]
        ready.wait(300)
        start = time.perf_counter()
        results = [f.result(600) for f in futures]
        seconds = time.perf_counter() - start
    index = Path(root) / f"{Path(root).name}_index.csv"
    paths = index_paths(index) if index.exists() else []
    counts = Counter(paths)
    expected = {
        f"p{p}/t{t}/img{i:04d}.nii.gz"
        for p in range(procs)
        for t in range(threads)
        for i in range(images)
    }
    on_disk = {
        str(f.relative_to(root)) for f in Path(root).rglob("*.nii.gz")
    }
    with open(index, encoding="utf-8", newline="") as f:
        header = next(csv.reader(f), [])
    return {
        "mode": mode,
        "patched": [r["patched"] for r in results],
        "errors": dict(sum((Counter(r["errors"]) for r in results), Counter())),
        "seconds": seconds,
        "expected": len(expected),
        "on_disk": len(on_disk),
        "files_missing_on_disk": len(expected - on_disk),
        "kept": len(set(paths) & expected),
        "rows": len(paths),
        "duplicates": sum(1 for c in counts.values() if c > 1),
        "unexpected": len(set(paths) - expected),
        "header": header,
    }


# ---------------------------------------------------------------- the error path


def scenario_malformed(root: str) -> dict[str, Any]:
    """After the stress run: a malformed line in its index, then a save in a worker."""
    index_writer.install_as_imgtools()
    index = Path(root) / f"{Path(root).name}_index.csv"
    with open(index, "a", encoding="utf-8", newline="") as f:
        f.write("broken.nii.gz,1,2,3,4,5,6,7,8,9,10,11,12\n")
    writer = nifti_writer(root, "after/{pid}.nii.gz")
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(1, mp_context=ctx) as pool:
        return pool.submit(worker_report, None, writer, root).result(120)


# ---------------------------------------------------------------- DICOM input


def write_ct_series(directory: str | Path, patient: str, slices: int = 6) -> None:
    """A small CT series (one file per slice) for ``patient``, written with SimpleITK."""
    import numpy as np
    import SimpleITK as sitk
    from pydicom.uid import generate_uid

    out = Path(directory) / patient
    out.mkdir(parents=True, exist_ok=True)
    study, series, frame = generate_uid(), generate_uid(), generate_uid()
    seed = sum(map(ord, patient))
    volume = (np.arange(slices * 16 * 16).reshape(slices, 16, 16) % 200 + seed).astype(np.int16)
    image = sitk.GetImageFromArray(volume)
    image.SetSpacing((1.0, 1.0, 2.0))
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    for z in range(slices):
        position = image.TransformIndexToPhysicalPoint((0, 0, z))
        tags = {
            "0008|0016": "1.2.840.10008.5.1.4.1.1.2",  # CT Image Storage
            "0008|0018": generate_uid(),
            "0008|0020": "20240101",
            "0008|0030": "120000",
            "0008|0060": "CT",
            "0010|0010": patient,
            "0010|0020": patient,
            "0018|0050": "2",
            "0020|000d": study,
            "0020|000e": series,
            "0020|0013": str(z + 1),
            "0020|0032": "\\".join(f"{c:g}" for c in position),
            "0020|0037": "1\\0\\0\\0\\1\\0",
            "0020|0052": frame,
            "0028|0030": "1\\1",
            "0028|1052": "0",
            "0028|1053": "1",
            "0028|1054": "HU",
        }
        slice_ = image[:, :, z]
        for key, value in tags.items():
            slice_.SetMetaData(key, value)
        writer.SetFileName(str(out / f"{z:03d}.dcm"))
        writer.Execute(slice_)


if __name__ == "__main__":
    scenario, *rest = sys.argv[1:]
    if scenario == "workers":
        result = scenario_workers(rest[0], rest[1], rest[2])
    elif scenario == "stress":
        result = scenario_stress(rest[0], rest[1], *map(int, rest[2:5]))
    elif scenario == "malformed":
        result = scenario_malformed(rest[0])
    elif scenario == "dicom":
        for patient in rest[1:]:
            write_ct_series(rest[0], patient)
        result = {"patients": rest[1:]}
    elif scenario == "report":
        result = {"patched": is_patched(), "env": os.environ.get(ENV_VAR)}
    else:
        raise SystemExit(f"unknown scenario {scenario!r}")
    print(json.dumps(result))
