"""Run every notebook of the course as a user would, and stop at the first error, naming notebook and cell.

A user runs a notebook top to bottom in a fresh kernel, in a folder of their own, with nothing but what
`pip install .` (or the notebook's own first cell) installed. So this script:

1. makes a virtual environment (kept between runs in --env) with PyTorch, `pip install .` of this checkout
   (no dev extras: no nbdev, no fastcore) and a Jupyter kernel (ipykernel, nbclient);
2. copies the notebooks to a temporary folder outside the repository;
3. executes each in a fresh kernel of that environment, in course order, with TINY_GPT_QUICK=1 (a smoke run)
   unless --full is given;
4. with --outputs, writes the executed notebooks, outputs included, back into nbs/ (then run `nbdev_clean`).
   The outputs come from an environment with the optional extras too (`pip install ".[all]"`: TensorBoard, W&B,
   transformers, which Colab has), so the committed notebooks show those cells run; the quick check (and
   `--bare`) keeps the bare install, to prove that every such cell skips itself cleanly without them.

    python .ci/run_notebooks.py                    # quick: does every notebook run top to bottom?
    python .ci/run_notebooks.py --outputs          # full size on this machine, outputs saved for the docs and GitHub
    python .ci/run_notebooks.py 05_training        # only some notebooks
"""
from __future__ import annotations
import argparse, hashlib, json, os, shutil, subprocess, sys, tempfile, time, venv
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
TIMES = REPO / ".ci" / "notebook_seconds.json"   # how long each notebook took in the quick check: the longest start first
TORCH = os.environ.get("TINY_GPT_TORCH", "torch==2.13.0")   # this machine's CPU build; any torch>=2.4 works

def sh(*cmd, **kw):
    print("+", " ".join(map(str, cmd)), flush=True)
    subprocess.run([str(c) for c in cmd], check=True, **kw)

def make_env(env: Path, extras: bool = False) -> Path:
    "A virtual environment with torch, `pip install .` (with `extras`: `.[all]`) of this checkout and a kernel; returns its python."
    py = env / "bin" / "python"
    stamp = env / ".tiny_gpt_requirements"
    reqs = hashlib.sha256((REPO / "settings.ini").read_bytes() + (REPO / "setup.py").read_bytes() + TORCH.encode()
                          + str(extras).encode()).hexdigest()
    if not py.exists() or not stamp.exists() or stamp.read_text() != reqs:
        shutil.rmtree(env, ignore_errors=True)
        venv.create(env, with_pip=True)
        sh(py, "-m", "pip", "install", "-q", TORCH)
        sh(py, "-m", "pip", "install", "-q", f"{REPO}[all]" if extras else str(REPO), "nbclient", "ipykernel")
        stamp.write_text(reqs)
    else:   # the same requirements: only this checkout's code is new
        sh(py, "-m", "pip", "install", "-q", "--no-deps", "--force-reinstall", str(REPO))
    for dev_only in ("nbdev", "fastcore", "execnb"):
        r = subprocess.run([py, "-c", f"import {dev_only}"], capture_output=True)
        if r.returncode == 0: sys.exit(f"the user environment {env} has the dev-only package {dev_only}; delete it and run again")
    return py

EXECUTE = r'''
import json, sys, time
import nbformat
from jupyter_client.kernelspec import get_kernel_spec
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError
folder, names, save = sys.argv[1], sys.argv[2].split(","), sys.argv[3] == "1"
spec = get_kernel_spec("python3").argv[0]
if spec not in (sys.executable, "python", "python3"):   # a user's own python3 kernel would run outside this environment
    sys.exit(f"the python3 kernel runs {spec}, not this environment's {sys.executable}: remove that kernelspec or use --env")
for name in names:
    path = f"{folder}/{name}"
    nb = nbformat.read(path, as_version=4)
    t0 = time.time()
    client = NotebookClient(nb, timeout=1800, kernel_name="python3", resources={"metadata": {"path": folder}})
    try: client.execute()
    except Exception as e:   # an error in a cell, a cell past its timeout, a kernel that died
        cell = next((i for i, c in enumerate(nb.cells) if c.cell_type == "code" and any(o.get("output_type") == "error"
                     for o in c.get("outputs", []))), None)
        cid = nb.cells[cell].get("id") if cell is not None else "?"
        err = next((o for o in nb.cells[cell].outputs if o.get("output_type") == "error"), {}) if cell is not None else {}
        if cell is None:   # no cell holds an error: the kernel died or a cell ran out of time; name the last one that started
            cell = max((i for i, c in enumerate(nb.cells) if c.cell_type == "code" and c.get("execution_count")), default=None)
            cid = nb.cells[cell].get("id") if cell is not None else "?"
        print(f"FAILED: nbs/{name}, cell {cell} (id {cid}): {err.get('ename', type(e).__name__)}: "
              f"{err.get('evalue', str(e).splitlines()[-1] if str(e) else '')[:500]}", flush=True)
        if cell is not None: print("".join(nb.cells[cell].source)[:1500], flush=True)
        sys.exit(1)
    n_fig = sum(1 for c in nb.cells for o in c.get("outputs", []) if "image/png" in o.get("data", {}))
    print(f"ok: nbs/{name} in {time.time() - t0:.0f} s ({n_fig} figures)", flush=True)
    if save: nbformat.write(nb, path)
'''

def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("notebooks", nargs="*", help="names (without .ipynb) to run; default: all, in course order")
    ap.add_argument("--full", action="store_true", help="full size (no TINY_GPT_QUICK)")
    ap.add_argument("--outputs", action="store_true", help="full size, and write the executed notebooks back into nbs/")
    ap.add_argument("--bare", action="store_true", help="with --outputs: without the optional extras")
    ap.add_argument("--jobs", type=int, default=0, help="notebooks run side by side (default: one per core, up to 4, for the quick check; 1 with --full/--outputs)")
    ap.add_argument("--save_times", action="store_true", help=f"write each notebook's seconds into {TIMES.name} (the order of later runs)")
    ap.add_argument("--env", default=None, help="where the environment lives (default: tiny_gpt_user_env[_all] in the temp folder)")
    a = ap.parse_args()
    names = sorted(p.name for p in (REPO / "nbs").glob("*.ipynb") if not p.name.startswith("_"))
    names = [n for n in names if n != "index.ipynb"] + ["index.ipynb"]
    if a.notebooks:
        unknown = [n for n in a.notebooks if n.removesuffix(".ipynb") + ".ipynb" not in names]
        if unknown: ap.error(f"no notebook {', '.join(unknown)} in nbs/")
        names = [n for n in names if n.removesuffix(".ipynb") in a.notebooks or n in a.notebooks]
    t0 = time.time()
    extras = a.outputs and not a.bare
    py = make_env(Path(a.env or Path(tempfile.gettempdir()) / ("tiny_gpt_user_env_all" if extras else "tiny_gpt_user_env")), extras)
    work = Path(tempfile.mkdtemp(prefix="tiny_gpt_user_run_"))   # outside the repository
    for n in names:   # each notebook in a folder of its own, as a user's: two running side by side never share files
        (work / n[:-6]).mkdir(); shutil.copy(REPO / "nbs" / n, work / n[:-6] / n)
    env = {k: v for k, v in os.environ.items() if k not in ("IN_TEST", "MPLBACKEND", "PYTHONPATH", "VIRTUAL_ENV")}
    env["PATH"] = f"{py.parent}{os.pathsep}{env.get('PATH', '')}"
    if not (a.full or a.outputs): env["TINY_GPT_QUICK"] = "1"
    else: env.pop("TINY_GPT_QUICK", None)
    # The quick check runs notebooks side by side, one core each (they are small models: two single-threaded kernels do
    # twice the work of one with two threads). The committed outputs come from one at a time, so their timings are fair.
    jobs = a.jobs or (1 if a.outputs or a.full else max(1, min(4, os.cpu_count() or 1)))
    if jobs > 1: env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // jobs))
    known = json.loads(TIMES.read_text()) if TIMES.exists() else {}
    queue = sorted(names, key=lambda n: -known.get(n, 1e9)) if jobs > 1 else list(names)   # the longest (or new) ones first
    print(f"running {len(names)} notebooks in {work} with {py} ({'full size' if a.full or a.outputs else 'TINY_GPT_QUICK=1'}, "
          f"{jobs} at a time)", flush=True)
    running, failed, started, took = {}, None, {}, {}
    while (queue or running) and failed is None:
        while queue and len(running) < jobs:
            n = queue.pop(0); started[n] = time.time()
            running[n] = subprocess.Popen([str(py), "-c", EXECUTE, str(work / n[:-6]), n, "1" if a.outputs else "0"],
                                          env=env, cwd=work / n[:-6])
        time.sleep(0.2)
        for n, proc in list(running.items()):
            if proc.poll() is not None:
                del running[n]; took[n] = round(time.time() - started[n])
                if proc.returncode: failed = n
    for proc in running.values(): proc.kill(); proc.wait()   # the first failure ends the run
    if failed is not None: return 1
    if a.save_times: TIMES.write_text(json.dumps(dict(sorted({**known, **took}.items())), indent=1) + "\n")
    if a.outputs:
        for n in names: shutil.copy(work / n[:-6] / n, REPO / "nbs" / n)
        print("outputs written into nbs/; now run nbdev_clean and check the diff")
    shutil.rmtree(work, ignore_errors=True)
    print(f"every notebook ran top to bottom, in {time.time() - t0:.0f} s")
    print(f"{len(names)} passed, 0 failed")
    return 0

if __name__ == "__main__":
    sys.exit(main())
