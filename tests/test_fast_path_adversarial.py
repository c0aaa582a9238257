"""The steady-state fast paths attacked: a world that changes under the caches a step keeps
(each parameter's record, optdsl.optim.param_records; the C runner's tables keyed by the
records' tokens; the NumPy runner's kept views; the Triton device plans; the memo of
checked states in optdsl.optim.step_checks).

The oracle, unless a test says otherwise: before each step of the optimizer under attack,
a fresh optimizer of the same back end is built on copies of the parameters (their layout
kept), loads a copy of its state_dict and takes the same step. Both must end bit for bit
alike, or both must refuse the step; a step that is refused changes nothing."""

from __future__ import annotations

import copy
import threading

from backends import require_backend
import pytest
import torch

import optdsl
from optdsl import library

BACKENDS = ("numpy", "c", "triton")


# every test runs Triton kernels in the interpreter (tests/conftest.py)
pytestmark = pytest.mark.usefixtures("triton_interpreter")


def _params(*shapes, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(s, generator=g)) for s in shapes]


def _grads(params, seed):
    g = torch.Generator().manual_seed(1000 + seed)
    for p in params:
        p.grad = torch.randn(p.shape, generator=g).to(p.dtype)


def _copy_params(params):
    out = []
    for p in params:
        q = torch.nn.Parameter(p.detach().clone(memory_format=torch.preserve_format))
        if p.grad is not None:
            if p.grad.dtype != q.dtype:
                q.grad_dtype = None
            q.grad = p.grad.detach().clone(memory_format=torch.preserve_format)
        out.append(q)
    return out


def _snapshot(opt, params):
    """Every parameter and state value (copies), to tell that a refused step changed nothing."""
    return ([p.detach().clone() for p in params],
            [{k: v.clone() if torch.is_tensor(v) else v for k, v in opt.state[p].items()}
             for p in params])


def _assert_same_snapshot(a, b):
    for x, y in zip(a[0], b[0]):
        assert torch.equal(x, y)
    for s, t in zip(a[1], b[1]):
        assert s.keys() == t.keys()
        for key in s:
            assert torch.equal(s[key], t[key]) if torch.is_tensor(s[key]) else s[key] == t[key]


def _assert_alike(opt, params, other, others):
    for i, (p, q) in enumerate(zip(params, others)):
        assert p.dtype == q.dtype and torch.equal(p.detach(), q.detach()), f"parameter {i}"
        mine, theirs = opt.state[p], other.state[q]
        assert mine.keys() == theirs.keys(), f"state keys of parameter {i}"
        for key, value in mine.items():
            if torch.is_tensor(value):
                what = f"state[{key!r}] of parameter {i}"
                assert (value.shape, value.dtype) == (theirs[key].shape, theirs[key].dtype), what
                assert torch.equal(value, theirs[key]), what


def _step_like_fresh(opt, params, make):
    """One step of ``opt`` and of a fresh optimizer (``make(params)``) loaded with its
    state: alike, bit for bit."""
    others = _copy_params(params)
    fresh = make(others)
    fresh.load_state_dict(copy.deepcopy(opt.state_dict()))
    fresh.step()
    opt.step()
    _assert_alike(opt, params, fresh, others)


def _steps_like_fresh(opt, params, make, steps, change=None, at=2):
    for s in range(steps):
        _grads(params, s)
        if s == at and change is not None:
            change(opt, params)
        _step_like_fresh(opt, params, make)


def _adam(backend, **kw):
    return lambda ps: library.Adam(ps, lr=0.1, backend=backend, **kw)


# -- hypers that pick another variant of the step ----------------------------------------------

@pytest.mark.parametrize("backend", BACKENDS)
def test_a_hyper_that_picks_another_variant_mid_training(backend):
    """weight_decay 0 -> 0.1 -> 0 (what a scheduler of weight decay does): the step of the
    group becomes another variant, with another hyper table and buffers. The C runner kept
    its tables by the records' tokens and the step's columns only, so the new variant found
    the old tables: the step raised IndexError (tables sized for four hypers) after the step
    counts were bumped. Now each loaded step has its own tables."""
    name = require_backend(backend)
    params = _params((3, 3), (4,))
    opt = _adam(name)(params)

    def change(opt, params):
        opt.param_groups[0]["weight_decay"] = 0.1

    _steps_like_fresh(opt, params, _adam(name), 4, change)
    opt.param_groups[0]["weight_decay"] = 0.0
    _steps_like_fresh(opt, params, _adam(name), 2)
    assert float(opt.state[params[0]]["step"]) == 6.0


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("change", ["lr", "lr tensor", "betas", "maximize", "eps"])
def test_hypers_changed_between_steps(backend, change):
    name = require_backend(backend)
    params = _params((3, 3), (4,))
    lr = torch.tensor(0.1) if change == "lr tensor" else 0.1

    def make(ps):
        return library.Adam(ps, lr=lr, backend=name)

    def mutate(opt, params):
        group = opt.param_groups[0]
        if change == "lr":
            group["lr"] = 0.03
        elif change == "lr tensor":
            group["lr"].fill_(0.02)
        elif change == "betas":
            group["betas"] = (0.5, 0.6)
        elif change == "maximize":
            group["maximize"] = True
        else:
            group["eps"] = 1e-3

    _steps_like_fresh(make(params), params, make, 4, mutate)


# -- state values changed in place -----------------------------------------------------------

def _transposed(opt, params):
    opt.state[params[0]]["exp_avg"].t_()  # a square matrix: same storage and shape


def _strided(opt, params):
    value = opt.state[params[0]]["exp_avg"]
    value.as_strided_(value.shape, (1, value.shape[0]))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("change", [_transposed, _strided], ids=["t_", "as_strided_"])
def test_a_state_value_whose_layout_changes_in_place(backend, change):
    """A state tensor transposed in place (or given other strides) keeps its identity, its
    storage and (square) its shape. The records and the kept views compared identities and
    data pointers only, so the cached step read the new layout's memory as the old one
    (a transposed exp_avg) where a fresh optimizer stages it."""
    name = require_backend(backend)
    params = _params((3, 3), (4,))
    opt = _adam(name)(params)
    _steps_like_fresh(opt, params, _adam(name), 4, change)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("change", [_transposed, _strided], ids=["t_", "as_strided_"])
def test_inference_mode_steps_see_layout_changes(backend, change):
    """Under torch.inference_mode every tensor is an inference tensor, which keeps no
    version counter (reading ``_version`` raises): the records then read the state's
    shapes and layouts every step, and a transposed state is still seen."""
    name = require_backend(backend)
    with torch.inference_mode():
        params = [torch.randn(3, 3), torch.randn(4)]
        opt = _adam(name)(params)
        for s in range(4):
            _grads(params, s)
            if s == 2:
                change(opt, params)
            _step_like_fresh(opt, params, _adam(name))


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_groups_parameters_reordered_mid_training(backend):
    """prepare_groups finds a parameter's record by its place in the group first: with the
    group's list reordered (two parameters of one shape swapped, a third dropped and put
    back at the end), every parameter still steps with its own state, as an optimizer
    whose list never changed."""
    name = require_backend(backend)
    params = _params((3, 3), (3, 3), (4,))
    others = _copy_params(params)
    opt, same = _adam(name)(params), _adam(name)(others)
    for s in range(5):
        _grads(params, s)
        _grads(others, s)
        if s == 2:
            group = opt.param_groups[0]["params"]
            group[0], group[1] = group[1], group[0]
        if s == 3:
            group = opt.param_groups[0]["params"]
            group.append(group.pop(0))
        opt.step()
        same.step()
    for p, q in zip(params, others):
        assert torch.equal(p, q)
        for key, value in opt.state[p].items():
            assert torch.equal(value, same.state[q][key]), key


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_state_changed_in_place_keeps_its_record(backend):
    """A state value's data changed in place (``mul_``) bumps its version counter: its
    shape and layout are read again, and as they hold, the record (and its token, which
    keys the runners' tables) is kept, with the new versions."""
    name = require_backend(backend)
    params = _params((3, 3), (4,))
    opt = _adam(name)(params)
    _steps_like_fresh(opt, params, _adam(name), 2)
    tokens = [opt._ready[id(p)].token for p in params]
    for s in range(2, 5):
        _grads(params, s)
        opt.state[params[0]]["exp_avg_sq"].mul_(3.0)
        _step_like_fresh(opt, params, _adam(name))
    assert [opt._ready[id(p)].token for p in params] == tokens


@pytest.mark.parametrize("backend", ["numpy", "c"])
def test_a_slow_groups_state_transposed_in_place(backend):
    """The same without records that hold (a non-contiguous parameter in the group: no
    tokens): the kept views compared pointers only."""
    name = require_backend(backend)
    params = _params((3, 3), (3, 3))
    with torch.no_grad():
        params[1].t_()
    opt = _adam(name)(params)
    _steps_like_fresh(opt, params, _adam(name), 4, _transposed)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shape", [(2, 3), (4, 3)], ids=["shrunk", "same numel"])
def test_a_state_value_resized_in_place_is_refused(backend, shape):
    """``state['exp_avg'].resize_(...)``: same identity and storage, another shape. A fresh
    optimizer refuses it (a state of another shape than its parameter's); the cached step
    took it, reading and writing its parameter's numel elements. Now the step refuses it
    too, naming the state, and changes nothing."""
    name = require_backend(backend)
    params = _params((3, 4), (4,))
    opt = _adam(name)(params)
    for s in range(2):
        _grads(params, s)
        opt.step()
    opt.state[params[0]]["exp_avg"].resize_(shape)
    _grads(params, 2)
    before = _snapshot(opt, params)
    with pytest.raises(RuntimeError, match=r"state\['exp_avg'\] of parameter 0"):
        opt.step()
    _assert_same_snapshot(before, _snapshot(opt, params))


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_state_value_given_another_storage_of_another_shape_is_refused(backend):
    name = require_backend(backend)
    params = _params((2, 3), (4,))
    opt = _adam(name)(params)
    for s in range(2):
        _grads(params, s)
        opt.step()
    opt.state[params[0]]["exp_avg"].data = torch.zeros(5)
    before = _snapshot(opt, params)
    with pytest.raises(RuntimeError, match=r"state\['exp_avg'\] of parameter 0 .* shape"):
        opt.step()
    _assert_same_snapshot(before, _snapshot(opt, params))


def _clone_state(opt, params):
    opt.state[params[0]]["exp_avg"] = opt.state[params[0]]["exp_avg"].clone() * 2


def _double_state(opt, params):
    opt.state[params[0]]["exp_avg"] = opt.state[params[0]]["exp_avg"].double()


def _data_double_state(opt, params):
    value = opt.state[params[0]]["exp_avg"]
    value.data = value.data.double()


def _in_place_state(opt, params):
    opt.state[params[0]]["exp_avg_sq"].mul_(3.0)


def _shared_state(opt, params):
    opt.state[params[0]]["step"].share_memory_()
    opt.state[params[1]]["exp_avg"].share_memory_()


def _step_filled(opt, params):
    opt.state[params[0]]["step"].fill_(10.0)


def _step_replaced(opt, params):
    opt.state[params[0]]["step"] = torch.tensor(7.0, dtype=torch.float64)


def _step_as_float(opt, params):
    opt.state[params[1]]["step"] = 2.0


def _state_deleted(opt, params):
    del opt.state[params[0]]


def _state_reset(opt, params):
    opt.state[params[0]] = {}


def _state_dict_copied(opt, params):
    opt.state[params[0]] = dict(opt.state[params[0]])  # (the same tensors, another dict)


def _state_dict_mutated(opt, params):
    # torch's state_dict aliases the live states: a change to what it returns is a change
    # to the optimizer's state
    saved = opt.state_dict()
    saved["state"][0]["exp_avg"].add_(1.0)
    saved["state"][1]["step"].fill_(40.0)


STATE_CHANGES = [_clone_state, _double_state, _data_double_state, _in_place_state,
                 _shared_state, _step_filled, _step_replaced, _step_as_float, _state_deleted,
                 _state_reset, _state_dict_copied, _state_dict_mutated]


@pytest.mark.parametrize("backend", ["numpy", "c"])
@pytest.mark.parametrize("change", STATE_CHANGES, ids=lambda f: f.__name__.strip("_"))
def test_state_values_replaced_or_changed(backend, change):
    name = require_backend(backend)
    params = _params((3, 3), (4,))
    opt = _adam(name)(params)
    _steps_like_fresh(opt, params, _adam(name), 4, change)


@pytest.mark.parametrize("backend", ["triton"])
@pytest.mark.parametrize("change", [_clone_state, _data_double_state, _step_filled,
                                    _state_deleted], ids=lambda f: f.__name__.strip("_"))
def test_state_values_replaced_or_changed_on_the_device_step(backend, change):
    name = require_backend(backend)
    params = _params((2, 2), (3,))
    opt = _adam(name)(params)
    _steps_like_fresh(opt, params, _adam(name), 3, change)


def test_an_empty_state_in_a_checkpoint_loads_as_torch_loads_it():
    """An empty state entry (a parameter never updated: torch.optim saves the {} that
    ``opt.state[p]`` made) loads as {} in torch.optim; here it loaded as one done update
    (step 1, as a torch.optim.SGD checkpoint's entry without a step), so the next step's
    bias corrections were the second update's."""
    start = _params((3,), (4,))
    runs = []
    for make in (torch.optim.Adam, lambda ps, lr: library.Adam(ps, lr=lr, backend="numpy")):
        params = [torch.nn.Parameter(p.detach().clone()) for p in start]
        opt = make(params, lr=0.1)
        _grads(params[:1], 0)
        opt.step()
        opt.state[params[1]]  # (touched: an empty entry in the state dict)
        saved = copy.deepcopy(opt.state_dict())
        assert saved["state"][1] == {}
        others = [torch.nn.Parameter(p.detach().clone()) for p in params]
        loaded = make(others, lr=0.1)
        loaded.load_state_dict(saved)
        assert dict(loaded.state[others[1]]) == {}
        _grads(others, 1)
        loaded.step()
        runs.append([p.detach() for p in others])
    for a, b in zip(*runs):
        torch.testing.assert_close(b, a)


# -- parameters changed under the records ------------------------------------------------------

def _data_same_shape(opt, params):
    params[0].data = torch.randn(params[0].shape)


def _data_double(opt, params):
    params[1].data = params[1].data.double()


def _set_same_shape(opt, params):
    params[0].data.set_(torch.randn(params[0].shape))


def _param_shared(opt, params):
    params[0].share_memory_()


def _param_copied_into(opt, params):
    with torch.no_grad():
        params[0].copy_(torch.randn(params[0].shape))


def _param_transposed(opt, params):
    with torch.no_grad():
        params[0].t_()  # (3, 3): same storage and shape, another layout


def _param_strided(opt, params):
    with torch.no_grad():
        params[0].as_strided_((3, 3), (1, 3))


PARAM_CHANGES = [_data_same_shape, _data_double, _set_same_shape, _param_shared,
                 _param_copied_into, _param_transposed, _param_strided]


@pytest.mark.parametrize("backend", ["numpy", "c"])
@pytest.mark.parametrize("change", PARAM_CHANGES, ids=lambda f: f.__name__.strip("_"))
def test_parameters_changed_under_the_records(backend, change):
    name = require_backend(backend)
    params = _params((3, 3), (4,))
    opt = _adam(name)(params)
    _steps_like_fresh(opt, params, _adam(name), 4, change)


@pytest.mark.parametrize("backend", ["triton"])
@pytest.mark.parametrize("change", [_data_same_shape, _param_transposed, _param_strided],
                         ids=lambda f: f.__name__.strip("_"))
def test_parameters_changed_under_the_device_plan(backend, change):
    """A square parameter transposed in place keeps its identity and storage: the device
    plan checked identities and data pointers only and launched on the old layout."""
    name = require_backend(backend)
    params = _params((3, 3), (4,))
    opt = _adam(name)(params)
    _steps_like_fresh(opt, params, _adam(name), 3, change)


FACTS = "hyper lr = 0.01\nw = w - lr * g * (w.rows + 10 * w.cols)"


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("group", ["records", "no records"])
def test_a_parameter_viewed_in_another_shape_of_the_same_size(backend, group):
    """``p.data = p.data.view(6, 2)``: the same storage and element count, other facts
    (w.rows, w.cols). The NumPy kept views compared the element count and the device plan
    the data pointers, so both stepped with the old shape's facts."""
    name = require_backend(backend)
    prog = optdsl.compile(FACTS)
    params = _params((2, 6), (3,) if group == "records" else (3, 3))
    if group == "no records":
        with torch.no_grad():
            params[1].t_()

    def make(ps):
        return prog.optimizer(ps, backend=name)

    def change(opt, params):
        params[0].data = params[0].data.view(6, 2)
        _grads(params, 2)

    _steps_like_fresh(make(params), params, make, 4, change)


# -- gradients ---------------------------------------------------------------------------------

def _grad_none(opt, params):
    params[0].grad = None


def _grad_bf16(opt, params):
    params[0].grad_dtype = None
    params[0].grad = params[0].grad.bfloat16()


def _grad_double(opt, params):
    params[1].grad_dtype = None
    params[1].grad = params[1].grad.double()


def _grad_not_contiguous(opt, params):
    params[0].grad = params[0].grad.t().contiguous().t()


def _grad_view_of_another(opt, params):
    other = torch.randn(40)
    params[0].grad = other[3:3 + params[0].numel()].view(params[0].shape)
    params[1].grad = other[20:20 + params[1].numel()]


def _grad_kept(opt, params):
    opt.zero_grad(set_to_none=False)
    for i, p in enumerate(params):
        p.grad.add_(float(i + 1))


GRAD_CHANGES = [_grad_none, _grad_bf16, _grad_double, _grad_not_contiguous,
                _grad_view_of_another, _grad_kept]


@pytest.mark.parametrize("backend", ["numpy", "c"])
@pytest.mark.parametrize("change", GRAD_CHANGES, ids=lambda f: f.__name__.strip("_"))
def test_gradients_that_change(backend, change):
    name = require_backend(backend)
    params = _params((3, 3), (4,))
    opt = _adam(name)(params)
    _steps_like_fresh(opt, params, _adam(name), 5, change)
    _grad_none(opt, params)  # (and back again at the next step)
    opt.step()


@pytest.mark.parametrize("change", [_grad_none, _grad_bf16, _grad_not_contiguous],
                         ids=lambda f: f.__name__.strip("_"))
def test_gradients_that_change_on_the_device_step(change):
    name = require_backend("triton")
    params = _params((2, 2), (3,))
    opt = _adam(name)(params)
    _steps_like_fresh(opt, params, _adam(name), 3, change)


# -- param groups and several optimizers -----------------------------------------------------

@pytest.mark.parametrize("backend", BACKENDS)
def test_a_param_group_added_mid_training(backend):
    name = require_backend(backend)
    params = _params((2, 2), (3,), (4,), (2, 3))
    opt = _adam(name)(params[:2])

    def make(ps):
        out = library.Adam(ps[:2], lr=0.1, backend=name)
        out.add_param_group({"params": ps[2:], "lr": 0.05})
        return out

    for s in range(2):
        _grads(params, s)
        opt.step()
    opt.add_param_group({"params": params[2:], "lr": 0.05})
    for s in range(2, 4):
        _grads(params, s)
        _step_like_fresh(opt, params, make)


@pytest.mark.parametrize("backend", ["numpy", "c"])
@pytest.mark.parametrize("change", ["remove", "reverse", "replace"])
def test_a_groups_parameter_list_changed(backend, change):
    name = require_backend(backend)
    params = _params((3, 3), (4,), (2, 2))
    opt = _adam(name)(params)
    for s in range(3):
        _grads(params, s)
        _step_like_fresh(opt, params, _adam(name))
    group = opt.param_groups[0]["params"]
    if change == "remove":
        group.pop(1)
        del opt.state[params[1]]
        params.pop(1)
    elif change == "reverse":
        group.reverse()
        params.reverse()
    else:
        del opt.state[params[0]]  # (as with torch.optim: state_dict maps live params)
        group[0] = params[0] = _params((3, 3), seed=5)[0]
    for s in range(3, 5):
        _grads(params, s)
        _step_like_fresh(opt, params, _adam(name))


@pytest.mark.parametrize("backend", BACKENDS)
def test_one_tensor_in_two_optimizers(backend):
    """Two optimizers of one parameter (each its own state and records), its storage moved
    between their steps: as torch.optim's pair."""
    name = require_backend(backend)
    ours = _params((2, 3), (4,))
    theirs = [torch.nn.Parameter(p.detach().clone()) for p in ours]
    a = library.Adam(ours, lr=0.1, backend=name)
    b = library.SGD(ours, lr=0.01, momentum=0.9, backend=name)
    ta = torch.optim.Adam(theirs, lr=0.1)
    tb = torch.optim.SGD(theirs, lr=0.01, momentum=0.9)
    for s in range(4):
        _grads(ours, s)
        _grads(theirs, s)
        for o in (a, b, ta, tb):
            o.step()
        if s == 1:
            ours[0].data = ours[0].data.clone()
            theirs[0].data = theirs[0].data.clone()
    for p, q in zip(ours, theirs):
        torch.testing.assert_close(p.detach(), q.detach())


@pytest.mark.parametrize("backend", BACKENDS)
def test_two_optimizers_of_one_program_interleaved(backend):
    """Each optimizer's runner and tables are its own: stepping two of one compiled program
    in turn equals stepping each alone."""
    name = require_backend(backend)
    prog = optdsl.compile("hyper lr = 0.1\nhyper beta = 0.9\nstate m = 0\nm = beta * m + g\n"
                          "w = w - lr * m")
    first, second = _params((2, 2), (3,)), _params((5,), (2, 3), seed=1)
    alone = [_copy_params(first), _copy_params(second)]
    one, two = prog.optimizer(first, backend=name), prog.optimizer(second, backend=name, lr=0.2)
    for s in range(3):
        _grads(first, s)
        _grads(second, 50 + s)
        one.step()
        two.step()
    for params, lr, seed in ((alone[0], 0.1, 0), (alone[1], 0.2, 50)):
        opt = prog.optimizer(params, backend=name, lr=lr)
        for s in range(3):
            _grads(params, seed + s)
            opt.step()
    for p, q in zip(first + second, alone[0] + alone[1]):
        assert torch.equal(p.detach(), q.detach())


@pytest.mark.parametrize("backend", ["numpy", "c"])
def test_two_optimizers_stepped_from_two_threads(backend):
    """(Not on the Triton interpreter, which is not thread-safe.)"""
    name = require_backend(backend)
    pairs = [_params(*[(32, 32)] * 3, seed=k) for k in range(2)]
    alone = [_copy_params(ps) for ps in pairs]
    errors = []

    def train(opt, params, seed):
        try:
            for s in range(15):
                _grads(params, seed + s)
                opt.step()
        except Exception as exc:  # (reported below)
            errors.append(exc)

    threads = [threading.Thread(target=train, args=(_adam(name)(ps), ps, 100 * k))
               for k, ps in enumerate(pairs)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    for k, ps in enumerate(alone):
        train(_adam(name)(ps), ps, 100 * k)
    for p, q in zip(pairs[0] + pairs[1], alone[0] + alone[1]):
        assert torch.equal(p.detach(), q.detach())


@pytest.mark.parametrize("backend", BACKENDS)
def test_load_state_dict_mid_training_from_another_optimizer(backend):
    name = require_backend(backend)
    params, others = _params((2, 2), (3,)), _params((2, 2), (3,), seed=3)
    opt, other = _adam(name)(params), _adam(name)(others)
    for s in range(2):
        _grads(params, s)
        _grads(others, 10 + s)
        opt.step()
        other.step()
    opt.load_state_dict(other.state_dict())
    _steps_like_fresh(opt, params, _adam(name), 2)


@pytest.mark.parametrize("backend", ["numpy", "c"])
def test_a_skipped_nonfinite_step_in_the_steady_state(backend):
    """skip_nonfinite: a gradient with inf in a steady state skips the step and counts
    nothing; the next step is a fresh optimizer's."""
    name = require_backend(backend)
    make = _adam(name, skip_nonfinite=True)
    params = _params((3, 3), (4,))
    opt = make(params)
    _steps_like_fresh(opt, params, make, 3)
    _grads(params, 3)
    params[1].grad[2] = float("inf")
    before = _snapshot(opt, params)
    opt.step()
    _assert_same_snapshot(before, _snapshot(opt, params))
    assert opt.skipped_steps == 1
    _steps_like_fresh(opt, params, make, 2)


# -- the library's programs -------------------------------------------------------------------

PROGRAMS = {
    "SGD momentum": (lambda b: lambda ps: library.SGD(ps, lr=0.1, momentum=0.9, backend=b),
                     "momentum_buffer"),
    "AdamW": (lambda b: lambda ps: library.AdamW(ps, lr=0.1, backend=b), "exp_avg"),
    "Muon": (lambda b: lambda ps: library.Muon(ps, lr=0.1, backend=b), "momentum_buffer"),
    "Adafactor": (lambda b: lambda ps: library.Adafactor(ps, lr=0.1, backend=b), None),
}


@pytest.mark.parametrize("backend", ["numpy", "c"])
@pytest.mark.parametrize("program", list(PROGRAMS))
def test_library_programs_under_changes(backend, program):
    """The parameter's storage replaced, then a state value transposed in place (square),
    then the learning rate changed: each step a fresh optimizer's."""
    name = require_backend(backend)
    factory, key = PROGRAMS[program]
    make = factory(name)
    params = _params((3, 3), (3, 4))
    opt = make(params)

    def storage(opt, params):
        params[0].data = torch.randn(3, 3)

    def layout(opt, params):
        if key is not None:
            opt.state[params[0]][key].t_()
        opt.param_groups[0]["lr"] = 0.05

    _steps_like_fresh(opt, params, make, 3, storage, at=1)
    _steps_like_fresh(opt, params, make, 2, layout, at=0)


# -- complex parameters (stepped on kept real views) --------------------------------------------

def _complex_grads(params, seed):
    g = torch.Generator().manual_seed(2000 + seed)
    for p in params:
        p.grad = torch.randn(p.shape, generator=g, dtype=p.dtype)


def _complex_state_storage(opt, params):
    value = opt.state[params[0]]["exp_avg"]
    value.data = value.data.clone()  # the same tensor, another storage


def _complex_state_transposed(opt, params):
    opt.state[params[0]]["exp_avg"].t_()


def _complex_param_transposed(opt, params):
    with torch.no_grad():
        params[0].t_()


def _complex_param_storage(opt, params):
    params[0].data = torch.randn(3, 3, dtype=torch.complex64)


@pytest.mark.parametrize("backend", ["numpy", "c"])
@pytest.mark.parametrize("change", [_complex_state_storage, _complex_state_transposed,
                                    _complex_param_transposed, _complex_param_storage],
                         ids=lambda f: f.__name__.strip("_"))
def test_complex_parameters_real_views_follow_their_tensors(backend, change):
    """A complex parameter is stepped on real views of it and of its states, kept between
    steps while the tensors are the same objects at the same parameter pointer. A state
    given another storage (``.data =``) or transposed in place, or the parameter transposed
    in place, kept the old views: the step wrote the old storage (the live state never
    changed again) or read the old layout."""
    name = require_backend(backend)
    g = torch.Generator().manual_seed(7)
    params = [torch.nn.Parameter(torch.randn(3, 3, dtype=torch.complex64, generator=g)),
              torch.nn.Parameter(torch.randn(4, dtype=torch.complex64, generator=g))]
    make = _adam(name)
    opt = make(params)
    for s in range(4):
        _complex_grads(params, s)
        if s == 2:
            change(opt, params)
        _step_like_fresh(opt, params, make)


# -- mixed precision -----------------------------------------------------------------------------

@pytest.mark.parametrize("backend", ["numpy", "c"])
def test_master_weights_and_low_precision_states_under_changes(backend):
    """bfloat16 parameters with fp32 master weights and bfloat16 states (no fast records:
    the tables are found by every tensor's storage): the master transposed in place, a state
    replaced, the learning rate changed."""
    name = require_backend(backend)
    make = _adam(name, master_weights=True, state_dtype=torch.bfloat16)
    params = [torch.nn.Parameter(p.detach().bfloat16()) for p in _params((3, 3), (4,))]
    opt = make(params)

    def change(opt, params):
        opt.state[params[0]]["master_param"].t_()
        opt.state[params[1]]["exp_avg"] = opt.state[params[1]]["exp_avg"].clone()
        opt.param_groups[0]["lr"] = 0.05

    _steps_like_fresh(opt, params, make, 4, change)


# -- torch.optim's own behaviour as the oracle -------------------------------------------------

@pytest.mark.parametrize("backend", ["numpy", "c", pytest.param("triton", marks=pytest.mark.xfail(
    strict=True, reason="the device step reads each row's t from the step tensor before "
                        "finish_step advances it, so a parameter listed twice gets the same "
                        "t twice (and on a GPU its two rows race)"))])
@pytest.mark.filterwarnings("ignore:optimizer contains a parameter group with duplicate")
def test_a_parameter_listed_twice_in_a_group_is_stepped_twice(backend):
    """torch.optim steps a parameter listed twice twice (deprecated, with a warning), the
    second with the next step number. The NumPy runner's kept slot is per parameter, so the
    second entry overwrote the first's step number in the shared slot: both updates took the
    second's bias corrections."""
    name = require_backend(backend)
    start = _params((5,), (3,))
    runs = []
    for make in (lambda ps: torch.optim.Adam(ps, lr=0.1),
                 lambda ps: library.Adam(ps, lr=0.1, backend=name)):
        params = [torch.nn.Parameter(p.detach().clone()) for p in start]
        opt = make([params[0], params[1], params[0]])
        for s in range(3):
            _grads(params, s)
            opt.step()
        assert float(opt.state[params[0]]["step"]) == 6.0
        runs.append(params)
    for a, b in zip(*runs):
        torch.testing.assert_close(b.detach(), a.detach())


@pytest.mark.xfail(strict=True, reason="SGD's buffer starts at `t == 1` (the parameter's first "
                   "update), torch.optim.SGD's when the buffer is first used: momentum turned "
                   "on mid-training with dampening starts from (1 - dampening) g, not g")
def test_momentum_turned_on_mid_training_with_dampening():
    start = _params((5,))
    runs = []
    for make in (lambda ps: torch.optim.SGD(ps, lr=0.1),
                 lambda ps: library.SGD(ps, lr=0.1, backend="numpy")):
        params = [torch.nn.Parameter(p.detach().clone()) for p in start]
        opt = make(params)
        for s in range(4):
            _grads(params, s)
            if s == 2:
                opt.param_groups[0].update(momentum=0.9, dampening=0.5)
            opt.step()
        runs.append(params)
    for a, b in zip(*runs):
        torch.testing.assert_close(b.detach(), a.detach())


# -- more of the same optimizer ----------------------------------------------------------------

@pytest.mark.parametrize("backend", ["numpy", "c"])
@pytest.mark.parametrize("change", ["load its own state_dict", "lr float to tensor",
                                    "state made a Parameter"])
def test_more_changes_between_steps(backend, change):
    name = require_backend(backend)
    params = _params((3, 3), (4,))
    opt = _adam(name)(params)

    def mutate(opt, params):
        if change == "load its own state_dict":
            opt.load_state_dict(opt.state_dict())
        elif change == "lr float to tensor":
            opt.param_groups[0]["lr"] = torch.tensor(0.05)
        else:  # (not a plain tensor: no fast record)
            value = opt.state[params[0]]["exp_avg"]
            opt.state[params[0]]["exp_avg"] = torch.nn.Parameter(value.clone(),
                                                                 requires_grad=False)

    _steps_like_fresh(opt, params, _adam(name), 4, mutate)


@pytest.mark.parametrize("backend", ["numpy", "c"])
@pytest.mark.parametrize("how", ["deepcopy", "pickle"])
def test_a_copy_made_mid_training_steps_as_the_original(backend, how):
    import pickle

    name = require_backend(backend)
    params = _params((3, 3), (4,))
    opt = _adam(name)(params)
    for s in range(2):
        _grads(params, s)
        opt.step()
    twin = copy.deepcopy(opt) if how == "deepcopy" else pickle.loads(pickle.dumps(opt))
    others = [p for g in twin.param_groups for p in g["params"]]
    for s in range(2, 5):
        _grads(params, s)
        _grads(others, s)
        opt.step()
        twin.step()
    for p, q in zip(params, others):
        assert torch.equal(p.detach(), q.detach())


@pytest.mark.parametrize("backend", ["numpy", "c"])
def test_one_optimizer_stepped_from_two_threads_refuses_without_writing(backend):
    """A second thread's step while one runs is refused before it writes anything: the
    steps that ran equal as many steps of a fresh optimizer."""
    name = require_backend(backend)
    params = _params((16, 16), (4,))
    opt = _adam(name)(params)
    for p in params:
        p.grad = torch.ones_like(p)
    done, refused = [0], [0]

    def loop():
        for _ in range(100):
            try:
                opt.step()
                done[0] += 1
            except RuntimeError:
                refused[0] += 1

    threads = [threading.Thread(target=loop) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert done[0] + refused[0] == 200
    assert float(opt.state[params[0]]["step"]) == done[0]
    others = _params((16, 16), (4,))
    fresh = _adam(name)(others)
    for p in others:
        p.grad = torch.ones_like(p)
    for _ in range(done[0]):
        fresh.step()
    for p, q in zip(params, others):
        assert torch.equal(p.detach(), q.detach())


def _bad_lr_in_a_later_group(opt, params):
    opt.param_groups[1]["lr"] = -1.0


def _grad_of_another_shape(opt, params):
    params[1].grad.data = torch.ones(7)


def _sparse_grad(opt, params):
    params[1].grad = params[1].grad.to_sparse()


def _state_of_another_dtype_kind(opt, params):
    opt.state[params[2]]["exp_avg"] = torch.zeros(params[2].shape, dtype=torch.int32)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("change, error, words", [
    (_bad_lr_in_a_later_group, ValueError, "lr"),
    (_grad_of_another_shape, RuntimeError, "gradient of parameter 1"),
    (_sparse_grad, RuntimeError, "sparse"),
    (_state_of_another_dtype_kind, RuntimeError, r"state\['exp_avg'\] of parameter 0 of "
                                                 r"param group 1"),
], ids=["bad lr", "grad shape", "sparse grad", "int state"])
def test_a_steady_state_step_that_is_refused_changes_nothing(backend, change, error, words):
    name = require_backend(backend)
    params = _params((2, 2), (3,), (2,))
    opt = library.Adam(params[:2], lr=0.1, backend=name)
    opt.add_param_group({"params": params[2:], "lr": 0.05})
    for s in range(3):
        _grads(params, s)
        opt.step()
    _grads(params, 3)
    change(opt, params)
    before = _snapshot(opt, params)
    with pytest.raises(error, match=words):
        opt.step()
    _assert_same_snapshot(before, _snapshot(opt, params))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind", ["complex", "master weight"])
def test_a_parameter_without_a_fast_record_viewed_in_another_shape(backend, kind):
    """The same as test_a_parameter_viewed_in_another_shape_of_the_same_size for the
    parameters whose tables are found by every tensor's storage (no fast record): a complex
    parameter's real view, a bfloat16 parameter's master weight. The C tables' signature
    had the element count, not the shape, so the facts were the old shape's."""
    name = require_backend(backend)
    prog = optdsl.compile(FACTS)
    g = torch.Generator().manual_seed(3)
    if kind == "complex":
        params = [torch.nn.Parameter(torch.randn(2, 6, dtype=torch.complex64, generator=g)),
                  torch.nn.Parameter(torch.randn(3, dtype=torch.complex64, generator=g))]
    else:
        params = [torch.nn.Parameter(torch.randn(2, 6, generator=g).bfloat16()),
                  torch.nn.Parameter(torch.randn(3, generator=g).bfloat16())]

    def make(ps):
        return prog.optimizer(ps, backend=name, master_weights=kind != "complex")

    def grads(params, seed):
        gen = torch.Generator().manual_seed(seed)
        for p in params:
            p.grad = torch.randn(p.shape, generator=gen, dtype=p.dtype)

    opt = make(params)
    for s in range(4):
        grads(params, s)
        if s == 2:
            params[0].data = params[0].data.view(6, 2)
            if kind != "complex":
                master = opt.state[params[0]]["master_param"]
                master.data = master.data.view(6, 2)
            grads(params, s)
        _step_like_fresh(opt, params, make)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("first, then", [(torch.tensor(0.1), 0.0), (0.0, torch.tensor(0.1)),
                                         (torch.tensor(0.1), torch.tensor(0.02))],
                         ids=["tensor to 0.0", "0.0 to tensor", "tensor to tensor"])
def test_a_hyper_switched_between_a_tensor_and_a_number(backend, first, then):
    """The device step's hyper table is rewritten when the numbers change; a hyper given as
    a tensor stood there as 0.0, so a tensor lr replaced by the number 0.0 left the table
    holding the tensor's last value: the steps went on with lr 0.1. As torch.optim."""
    name = require_backend(backend)
    start = _params((4,))
    runs = []
    for make in (lambda ps, lr: torch.optim.Adam(ps, lr=lr),
                 lambda ps, lr: library.Adam(ps, lr=lr, backend=name)):
        params = [torch.nn.Parameter(p.detach().clone()) for p in start]
        opt = make(params, first.clone() if torch.is_tensor(first) else first)
        for s in range(4):
            _grads(params, s)
            if s == 2:
                opt.param_groups[0]["lr"] = then.clone() if torch.is_tensor(then) else then
            opt.step()
        runs.append(params)
    for a, b in zip(*runs):
        torch.testing.assert_close(b.detach(), a.detach())


@pytest.mark.parametrize("backend", BACKENDS)
def test_stochastic_rounding_after_a_step_count_written_in_place(backend):
    """Stochastic rounding's seed comes from the group's update count, which the device
    step keeps on the host (read from the step tensors once per plan): a count written in
    place (``state['step'].fill_(10)``) was not seen, and the rounding bits were not a fresh
    optimizer's."""
    name = require_backend(backend)

    def make(ps):
        return library.Adam(ps, lr=0.01, backend=name, stochastic_rounding=True)

    params = [torch.nn.Parameter(p.detach().bfloat16()) for p in _params((8,), (5,))]
    opt = make(params)

    def change(opt, params):
        opt.state[params[0]]["step"].fill_(10.0)

    _steps_like_fresh(opt, params, make, 4, change)


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_grad_scaler_that_comes_and_goes(backend):
    """fused=True with torch.amp's grad_scale and found_inf set for some steps and not
    others: the unscaling step is another variant with another hyper table. Before the C
    tables were keyed by the loaded step, the C step of the new variant ran on the old
    variant's tables and corrupted the heap (``free(): invalid size``)."""
    name = require_backend(backend)
    scale = {}

    def make(ps):
        opt = library.Adam(ps, lr=0.1, backend=name, fused=True)
        for key, value in scale.items():
            setattr(opt, key, value.clone())
        return opt

    params = _params((3, 3), (4,))
    opt = make(params)
    for s in range(6):
        _grads(params, s)
        if s == 2:
            scale.update(grad_scale=torch.tensor(4.0), found_inf=torch.tensor(0.0))
            for key, value in scale.items():
                setattr(opt, key, value.clone())
        if s == 4:
            scale.clear()
            del opt.grad_scale, opt.found_inf
        _step_like_fresh(opt, params, make)


@pytest.mark.parametrize("backend", ["c", pytest.param("numpy", marks=pytest.mark.xfail(
    strict=True, reason="the NumPy runner's zero-copy views (Tensor.numpy()) make torch mark "
                        "the parameters' and states' storages not resizable"))])
def test_a_parameters_storage_can_be_freed_and_given_back(backend):
    """What FSDP-style code does between steps: free a parameter's storage and give it
    back (``untyped_storage().resize_(0)``, then its size again, refilled); as with
    torch.optim, the next step is a fresh optimizer's."""
    name = require_backend(backend)
    params = _params((3, 3), (4,))
    opt = _adam(name)(params)

    def change(opt, params):
        values = params[0].detach().clone()
        storage = params[0].untyped_storage()
        size = storage.nbytes()
        storage.resize_(0)
        storage.resize_(size)
        with torch.no_grad():
            params[0].copy_(values)

    _steps_like_fresh(opt, params, _adam(name), 4, change)


def test_gradients_moved_to_unaligned_views_rebuild_an_aligned_launch():
    """A device plan whose pointers were all 16-byte aligned is compiled with ALIGNED (the
    kernel tells the compiler so: tl.multiple_of). Gradients that moved were pointed at as
    they were, so views of a flat buffer at other offsets ran a launch that promised an
    alignment they do not have (on a GPU: misaligned vector loads). Such gradients rebuild
    the plan; the steps are a fresh optimizer's. (The interpreter ignores the promise: the
    test reads the launch's constexpr.)"""
    name = require_backend("triton")
    params = _params((5,), (3,))
    opt = _adam(name)(params)

    def aligned_flags():
        plans = opt._runner_of[1]._plans
        return [b.constexprs["ALIGNED"] for plan in plans.values() for b in plan.buckets]

    for s in range(2):
        _grads(params, s)
        _step_like_fresh(opt, params, _adam(name))
    assert aligned_flags() == [True]
    flat = torch.zeros(16)
    for s in range(2, 4):
        _grads(params, s)
        flat[1:6] = params[0].grad  # (4 bytes past an aligned address)
        flat[7:10] = params[1].grad
        params[0].grad, params[1].grad = flat[1:6], flat[7:10]
        _step_like_fresh(opt, params, _adam(name))
        assert aligned_flags() == [False]


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_state_replaced_by_one_of_another_dtype_is_kept_in_the_policys(backend):
    """state_dtype=bfloat16: a state replaced by a float32 tensor mid-training is kept in
    bfloat16, as a checkpoint's state is when it loads and as a state made by the step is.
    The record's "made" check looked at the step tensor only, so a replaced value was
    stepped in its own dtype (float32 here: other values than a fresh optimizer's)."""
    name = require_backend(backend)
    make = _adam(name, state_dtype=torch.bfloat16)
    params = _params((3, 3), (4,))
    opt = make(params)

    def change(opt, params):
        opt.state[params[0]]["exp_avg"] = opt.state[params[0]]["exp_avg"].float()

    _steps_like_fresh(opt, params, make, 4, change)
    assert opt.state[params[0]]["exp_avg"].dtype == torch.bfloat16


def _record_of(layout):
    """A fast record of a (3, 4) parameter whose state has a step, then one value per entry
    of ``layout`` (True: an array of the parameter's shape, False: a number tensor)."""
    from optdsl.optim.param_records import ParamRecord

    param = torch.nn.Parameter(torch.randn(3, 4))
    param.grad = torch.randn(3, 4)
    state = {"step": torch.tensor(1.0)}
    for i, array in enumerate(layout):
        state[f"s{i}"] = torch.randn(3, 4) if array else torch.tensor(0.5)
    return ParamRecord(param, param.grad, state, frozenset(), True), param, state


LAYOUTS = [(), (True,), (False, True), (True, True), (True, False, True, True)]


def _last_array(state):
    return next(k for k in reversed(state) if state[k].dim())


CHANGES = {
    "a value replaced": lambda p, s: s.__setitem__("step", torch.tensor(1.0)),
    "a value given another storage": lambda p, s: setattr(s["step"], "data",
                                                          torch.tensor(1.0)),
    "a key added": lambda p, s: s.__setitem__("extra", torch.tensor(0.0)),
    "a key removed": lambda p, s: s.pop("step"),
    "the parameter given another storage": lambda p, s: setattr(p, "data", p.data.clone()),
    "the parameter viewed in another shape": lambda p, s: setattr(p, "data", p.data.view(4, 3)),
    "the parameter made non-contiguous": lambda p, s: setattr(
        p, "data", torch.empty(4, 3).t().copy_(p.data)),
    # (torch refuses such a .grad: the step's gradient is given as the check's argument)
    "a gradient of another dtype": lambda p, s: p.grad.double(),
    "a gradient of another shape": lambda p, s: torch.zeros(12),
    "an array transposed in place": lambda p, s: s[_last_array(s)].t_(),
    "an array given another storage": lambda p, s: setattr(s[_last_array(s)], "data",
                                                           torch.zeros(3, 4)),
}


@pytest.mark.parametrize("layout", LAYOUTS, ids=str)
@pytest.mark.parametrize("change", sorted(CHANGES))
def test_a_records_written_out_check_tells_each_change(layout, change):
    """The record's check is written out per state layout (param_records._checking_class):
    for every layout it holds while nothing changed, and each change breaks it."""
    record, param, state = _record_of(layout)
    assert record.fast and type(record).__name__ == f"ParamRecord{1 + len(layout)}"
    assert record.still(param, param.grad, state)
    assert record.still(param, param.grad, state, param.grad.shape)
    if "array" in change and not any(layout):
        pytest.skip("no array in this layout")
    grad = CHANGES[change](param, state)
    if not isinstance(grad, torch.Tensor):
        grad = param.grad
    assert not record.still(param, grad, state)


@pytest.mark.parametrize("layout", [x for x in LAYOUTS if any(x)], ids=str)
def test_a_records_written_out_check_keeps_arrays_changed_in_data_only(layout):
    """Data written in place bumps an array's version: its layout is read again, holds,
    and the new versions are kept (the next check reads no layout)."""
    record, param, state = _record_of(layout)
    for value in state.values():
        if value.dim():
            value.add_(1.0)
    assert record.still(param, param.grad, state)
    assert record.versions == tuple(v._version for v in state.values() if v.dim())
    assert record.expect[-len(record.versions):] == record.versions
    assert record.still(param, param.grad, state)
