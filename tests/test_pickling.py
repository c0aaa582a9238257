"""Programs, their optimizer classes and their optimizers pickle, and unpickle in a fresh
process by compiling the program again from its source (issue 16, item 4): torch.save of a
whole optimizer, spawn workers, Lightning's save_hyperparameters (which keeps only what
pickle.dumps accepts: lightning/pytorch/utilities/parsing.py, ``is_picklable``)."""

from __future__ import annotations

import io
import json
import multiprocessing
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import optdsl
from optdsl import library

ROOT = Path(__file__).resolve().parent.parent
SOURCE = """
optimizer Heavy "momentum with a decay"
hyper lr = 0.1 in [0, inf)
hyper a = 0.9
state v = 0 as velocity
v = a * v - lr * g
w = w + v
"""


def fresh_python(script: str, tmp_path: Path) -> dict:
    """Run ``script`` in a new interpreter (this checkout on its path); its last line of
    output is JSON."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), OPTDSL_CACHE_DIR=str(tmp_path / "cache"))
    done = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def stepped_optimizer(prog, steps=2):
    ps = [torch.nn.Parameter(torch.linspace(-1, 1, 6).reshape(2, 3)),
          torch.nn.Parameter(torch.ones(4))]
    opt = prog.optimizer(ps, lr=0.05)
    for i in range(steps):
        for p in ps:
            p.grad = torch.full_like(p, 0.1 * (i + 1))
        opt.step()
    return opt, ps


def test_program_pickles_after_optimizer_was_called(tmp_path):
    prog = optdsl.compile(SOURCE)
    prog.optimizer([torch.nn.Parameter(torch.ones(2))])  # caches a class and runners
    data = pickle.dumps(prog)
    assert pickle.loads(data) is prog  # in this process: the same program
    (tmp_path / "prog.pkl").write_bytes(data)
    out = fresh_python(
        "import json, pickle\n"
        "prog = pickle.loads(open('prog.pkl', 'rb').read())\n"
        "print(json.dumps({'name': prog.name, 'hypers': list(prog.hypers),"
        " 'states': list(prog.states), 'numpy': prog.source('numpy')}))", tmp_path)
    assert out == {"name": "Heavy", "hypers": ["lr", "a"], "states": ["v"],
                   "numpy": prog.source("numpy")}


def test_optimizer_class_pickles(tmp_path):
    prog = optdsl.compile(SOURCE)
    cls = prog.optimizer_class
    assert pickle.loads(pickle.dumps(cls)) is cls
    (tmp_path / "cls.pkl").write_bytes(pickle.dumps(cls))
    out = fresh_python(
        "import json, pickle, torch\n"
        "cls = pickle.loads(open('cls.pkl', 'rb').read())\n"
        "p = torch.nn.Parameter(torch.ones(3))\n"
        "opt = cls([p], 0.5, 0.0)\n"  # positional hypers, as the class takes them
        "p.grad = torch.ones(3); opt.step()\n"
        "print(json.dumps({'name': cls.__name__, 'w': p.detach().tolist(),"
        " 'same': cls is cls.program.optimizer_class}))", tmp_path)
    assert out == {"name": "Heavy", "w": [0.5, 0.5, 0.5], "same": True}


def test_whole_optimizer_through_torch_save(tmp_path):
    """torch.save(opt) in this process, torch.load in a fresh one: it steps on as the
    original does."""
    prog = optdsl.compile(SOURCE)
    opt, ps = stepped_optimizer(prog)
    buf = io.BytesIO()
    torch.save({"opt": opt}, buf)
    (tmp_path / "opt.pt").write_bytes(buf.getvalue())
    for p in ps:
        p.grad = torch.full_like(p, 0.7)
    opt.step()
    want = [p.detach().tolist() for p in ps]
    out = fresh_python(
        "import json, torch\n"
        "opt = torch.load('opt.pt', weights_only=False)['opt']\n"
        "ps = [p for g in opt.param_groups for p in g['params']]\n"
        "for p in ps: p.grad = torch.full_like(p, 0.7)\n"
        "opt.step()\n"
        "print(json.dumps({'w': [p.detach().tolist() for p in ps],"
        " 'cls': type(opt).__name__, 'lr': opt.param_groups[0]['lr']}))", tmp_path)
    assert out == {"w": want, "cls": "Heavy", "lr": 0.05}


def test_library_classes_pickle_by_name():
    data = pickle.dumps(library.Adam)
    assert b"optdsl.library" in data and pickle.loads(data) is library.Adam
    opt = library.Adam([torch.nn.Parameter(torch.ones(2))])
    assert type(pickle.loads(pickle.dumps(opt))) is library.Adam


def test_class_of_a_loaded_file_pickles(tmp_path):
    path = tmp_path / "heavy.opt"
    path.write_text(SOURCE, encoding="utf-8")
    prog = optdsl.load(path)
    data = pickle.dumps(prog.optimizer_class)
    path.unlink()  # recompiled from the pickled source, not from the file
    (tmp_path / "cls.pkl").write_bytes(data)
    out = fresh_python("import json, pickle\ncls = pickle.loads(open('cls.pkl', 'rb').read())\n"
                       "print(json.dumps({'file': cls.program.filename}))", tmp_path)
    assert out == {"file": str(path)}


def _build_in_worker(cls):
    p = torch.nn.Parameter(torch.ones(2))
    opt = cls([p], lr=1.0, a=0.0)
    p.grad = torch.ones(2)
    opt.step()
    return p.detach().tolist()


def test_spawn_worker_gets_the_class():
    prog = optdsl.compile(SOURCE)
    ctx = multiprocessing.get_context("spawn")
    env = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = str(ROOT) + (os.pathsep + env if env else "")
    try:
        with ctx.Pool(1) as pool:
            assert pool.apply(_build_in_worker, (prog.optimizer_class,)) == [0.0, 0.0]
    finally:
        if env is None:
            del os.environ["PYTHONPATH"]
        else:
            os.environ["PYTHONPATH"] = env


def test_lightning_keeps_the_class_in_hyperparameters():
    """Lightning's save_hyperparameters drops what pickle.dumps refuses (``is_picklable``:
    ``pickle.dumps(obj)`` in a try); a program's class and optimizer now pass it."""
    prog = optdsl.compile(SOURCE)

    def is_picklable(obj) -> bool:  # lightning.pytorch.utilities.parsing.is_picklable
        try:
            pickle.dumps(obj)
            return True
        except (pickle.PickleError, AttributeError, RuntimeError, TypeError):
            return False

    assert is_picklable(prog.optimizer_class)
    assert is_picklable(prog)
    assert is_picklable(stepped_optimizer(prog)[0])


def test_a_class_made_with_other_arguments_pickles_as_itself():
    from optdsl.optim.torch_optimizer import make_optimizer_class

    prog = optdsl.compile(SOURCE)
    cls = make_optimizer_class(prog, name="Other", positional=("a",))
    again = pickle.loads(pickle.dumps(cls))
    assert again.__name__ == "Other" and again.positional == ("a",)
    assert pickle.loads(pickle.dumps(cls)) is again
    with pytest.raises(TypeError):
        again([torch.nn.Parameter(torch.ones(1))], 0.5, 0.1)  # one positional only
