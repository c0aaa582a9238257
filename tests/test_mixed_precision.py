"""Mixed precision on both back ends (the Triton one through TRITON_INTERPRET=1): the state
dtype policy, fp32 master weights, stochastic rounding of bfloat16 writes, checkpoints, and
the errors of bad options. References are torch.optim on float32 copies of the parameters.
"""

from __future__ import annotations

import copy
import pickle

import numpy as np
from backends import require_backend
import pytest

torch = pytest.importorskip("torch")

import optdsl
from optdsl.optim import precision
from optdsl.library import SGD, Adam

BACKENDS = ("numpy", "triton", "c")


# every test runs Triton kernels in the interpreter (tests/conftest.py)
pytestmark = pytest.mark.usefixtures("triton_interpreter")


def _params(dtype, sizes=(7, 300, 1000), seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(n, generator=gen).to(dtype)) for n in sizes]


def _grads(params, steps, seed=1):
    gen = torch.Generator().manual_seed(seed)
    return [[torch.randn(p.shape, generator=gen).to(p.dtype) for p in params]
            for _ in range(steps)]


def _run(opt, params, grads):
    for step in grads:
        for p, g in zip(params, step):
            p.grad = g.clone()
        opt.step()


# -- the state dtype policy ---------------------------------------------------------------------
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("param_dtype, policy, expected", [
    (torch.float32, None, torch.float32),
    (torch.bfloat16, None, torch.float32),
    (torch.float16, None, torch.float32),
    (torch.float64, None, torch.float64),
    (torch.bfloat16, "param", torch.bfloat16),
    (torch.float16, "param", torch.float16),
    (torch.float32, torch.bfloat16, torch.bfloat16),
    (torch.float64, torch.float32, torch.float32),
])
def test_state_dtype_policy(backend, param_dtype, policy, expected):
    params = _params(param_dtype)
    opt = Adam(params, lr=1e-2, amsgrad=True, state_dtype=policy, backend=require_backend(backend))
    _run(opt, params, _grads(params, 3))
    for p in params:
        state = opt.state[p]
        for key in ("exp_avg", "exp_avg_sq", "max_exp_avg_sq"):
            assert state[key].dtype == expected, key
        assert state["step"].dtype == torch.float32
        assert p.dtype == param_dtype
        assert precision.MASTER_KEY not in state


@pytest.mark.parametrize("param_dtype", [torch.float32, torch.bfloat16])
def test_bf16_state_backends_agree(param_dtype):
    """Both back ends compute in float32 and round each state write to nearest bfloat16."""
    results = {}
    for backend in BACKENDS:
        params = _params(param_dtype, sizes=(7, 1000, 4099))
        opt = Adam(params, lr=1e-2, weight_decay=0.01, state_dtype=torch.bfloat16,
                   backend=require_backend(backend))
        _run(opt, params, _grads(params, 5))
        results[backend] = [torch.cat([p.detach().float().flatten() for p in params])] + [
            torch.cat([opt.state[p][k].float().flatten() for p in params])
            for k in ("exp_avg", "exp_avg_sq")]
    for ref, got in zip(results["numpy"], results["triton"]):
        # a 1-ulp float32 difference can move a bfloat16 rounding by one bf16 ulp
        close = torch.isclose(got, ref, rtol=2 ** -7, atol=1e-30)
        assert close.all()
        assert (got == ref).float().mean() > 0.99


def test_bf16_state_is_rounded_to_nearest():
    """The stored state is the float32 state of the same step rounded to bfloat16 (one step,
    from zero state: no earlier rounding can differ)."""
    for backend in BACKENDS:
        params = _params(torch.float32)
        low = Adam(params, lr=1e-2, state_dtype=torch.bfloat16, backend=require_backend(backend))
        ref_params = [torch.nn.Parameter(p.detach().clone()) for p in params]
        ref = torch.optim.Adam(ref_params, lr=1e-2)
        grads = _grads(params, 1)
        _run(low, params, grads)
        _run(ref, ref_params, grads)
        for p, q in zip(params, ref_params):
            for key in ("exp_avg", "exp_avg_sq"):
                assert torch.equal(low.state[p][key], ref.state[q][key].to(torch.bfloat16))


# -- master weights -------------------------------------------------------------------------------
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("low", [torch.bfloat16, torch.float16])
def test_master_weights_track_fp32_reference(backend, low):
    params = _params(low)
    opt = Adam(params, lr=1e-3, weight_decay=0.01, master_weights=True,
               backend=require_backend(backend))
    ref_params = [torch.nn.Parameter(p.detach().float()) for p in params]
    ref = torch.optim.Adam(ref_params, lr=1e-3, weight_decay=0.01)
    grads = _grads(params, 20)
    _run(opt, params, grads)
    _run(ref, ref_params, [[g.float() for g in step] for step in grads])
    for p, q in zip(params, ref_params):
        master = opt.state[p][precision.MASTER_KEY]
        assert master.dtype == torch.float32
        torch.testing.assert_close(master, q.detach(), rtol=1e-5, atol=1e-6)
        assert torch.equal(p.detach(), master.to(low))  # rounded to nearest
        torch.testing.assert_close(opt.state[p]["exp_avg"], ref.state[q]["exp_avg"])


@pytest.mark.parametrize("backend", BACKENDS)
def test_master_weights_keep_updates_below_half_an_ulp(backend):
    """An update of a quarter bfloat16 ulp is lost by round-to-nearest every step; a master
    weight accumulates it."""
    step = 2.0 ** -10  # the bfloat16 ulp just below 1.0 is 2^-8
    results = {}
    for master in (False, True):
        w = torch.nn.Parameter(torch.ones(512, dtype=torch.bfloat16))
        opt = SGD([w], lr=step, master_weights=master, backend=require_backend(backend))
        _run(opt, [w], [[torch.ones_like(w)]] * 64)
        results[master] = w.detach().float()
    assert torch.equal(results[False], torch.ones(512))
    assert torch.equal(results[True], torch.full((512,), 1.0 - 64 * step))


def test_master_weights_mixed_group_triton_matches_numpy():
    """fp32 and bf16 parameters in one group: the bf16 ones (with masters, a copy column)
    launch in their own bucket; both back ends agree."""
    results = {}
    for backend in BACKENDS:
        params = _params(torch.bfloat16, sizes=(5, 300)) + _params(torch.float32, (1000,), 3)
        gen = torch.Generator().manual_seed(5)  # and one non-contiguous (staged) parameter
        params.append(torch.nn.Parameter(torch.randn(40, 30, generator=gen).to(torch.bfloat16).t()))
        opt = Adam(params, lr=1e-2, master_weights=True, backend=require_backend(backend))
        _run(opt, params, _grads(params, 4))
        results[backend] = [p.detach().float().clone() for p in params]
        assert precision.MASTER_KEY not in opt.state[params[2]]
    for ref, got in zip(results["numpy"], results["triton"]):
        torch.testing.assert_close(got, ref, rtol=2 ** -8, atol=1e-6)


# -- stochastic rounding --------------------------------------------------------------------------
@pytest.mark.parametrize("backend", BACKENDS)
def test_stochastic_rounding_is_unbiased(backend):
    """Quarter-ulp steps: round-to-nearest never moves w; stochastic rounding moves it by the
    exact expected amount on average."""
    n, steps, lr = 16384, 8, 2.0 ** -10
    torch.manual_seed(1234)
    w = torch.nn.Parameter(torch.ones(n, dtype=torch.bfloat16))
    opt = SGD([w], lr=lr, stochastic_rounding=True, backend=require_backend(backend))
    _run(opt, [w], [[torch.ones_like(w)]] * steps)
    values = w.detach().double()
    expected = 1.0 - steps * lr
    # each step is a quarter of an ulp (2^-8 below 1.0), so each element moved by a random
    # number of ulps with mean steps/4; the mean of n elements is within a few 1e-4 of it
    assert abs(values.mean().item() - expected) < 5 * 2.0 ** -8 * np.sqrt(steps * 0.25) / np.sqrt(n)
    assert len(values.unique()) > 2  # the elements went different ways
    bf16 = values.to(torch.bfloat16).double()
    assert torch.equal(values, bf16)  # every value is a bfloat16 (low bits cleared)


@pytest.mark.parametrize("backend", BACKENDS)
def test_stochastic_rounding_is_reproducible_and_leaves_global_rng_alone(backend):
    def run():
        torch.manual_seed(7)
        w = torch.nn.Parameter(torch.linspace(-3, 3, 2000).to(torch.bfloat16))
        opt = Adam([w], lr=1e-3, state_dtype=torch.bfloat16, stochastic_rounding=True,
                   backend=require_backend(backend))
        _run(opt, [w], _grads([w], 3))
        return w.detach().clone(), opt.state[w]["exp_avg"].clone(), torch.rand(3)

    first, second = run(), run()
    for a, b in zip(first, second):
        assert torch.equal(a, b)
    torch.manual_seed(7)
    assert torch.equal(first[2], torch.rand(3))  # the optimizer drew nothing from torch's RNG


def test_rounding_seeds_differ_between_steps_and_groups():
    seeds = precision.RoundingSeeds(5)
    a = seeds.seed(0, 1)
    assert seeds.seed(1, 1) != a and seeds.seed(0, 2) != a
    assert seeds.seed(0, 1) == a  # a function of (base, group, count) only
    assert seeds.seed(0, 1, 3) != a  # (a shard's coordinates)
    # never small enough for Triton to pass as an int32 (found in review: a seed below 2^32
    # made `seed & 0xFFFFFFFF` overflow in the kernel)
    assert all(2 ** 61 <= seeds.seed(0, n) < 2 ** 62 for n in range(1000))


@pytest.mark.parametrize("backend", BACKENDS)
def test_stochastic_rounding_streams_are_independent_across_buckets(backend):
    """Found in review: bucket seeds were seed + index, and the kernel's hash turned that
    into the same random bits a few elements away. Halfway values in two buckets (fp32 and
    bf16 parameters with bf16 state) must round independently: no shift of one tensor's
    decisions matches the other's."""
    n = 4096
    torch.manual_seed(1)
    p0 = torch.nn.Parameter(torch.full((n,), 2.0 ** -8))
    p1 = torch.nn.Parameter(torch.full((n,), 2.0 ** -8, dtype=torch.bfloat16))
    opt = SGD([p0, p1], lr=0.0, momentum=0.9, weight_decay=1.0, state_dtype=torch.bfloat16,
              stochastic_rounding=True, backend=require_backend(backend))
    p0.grad, p1.grad = torch.ones(n), torch.ones(n, dtype=torch.bfloat16)
    opt.step()  # momentum_buffer = 1 + 2^-8: halfway between two bfloat16 values
    up0 = opt.state[p0]["momentum_buffer"].float() > 1
    up1 = opt.state[p1]["momentum_buffer"].float() > 1
    assert 0.45 < up0.float().mean() < 0.55 and 0.45 < up1.float().mean() < 0.55
    index = torch.arange(n)
    agreement = max((up0 == up1[index ^ d]).float().mean().item() for d in range(256))
    assert agreement < 0.56


@pytest.mark.parametrize("backend", BACKENDS)
def test_rounding_noise_is_fresh_every_step_whichever_parameter_comes_first(backend):
    """Found in review: the seed came from the first parameter's step count, so when
    parameters take turns (experts of a mixture), a tensor got the same noise twice."""
    a, a2, b = (torch.nn.Parameter(torch.ones(4096, dtype=torch.bfloat16)) for _ in range(3))
    opt = SGD([a, a2, b], lr=1.0, stochastic_rounding=True, backend=require_backend(backend))
    ups = []
    for first in (a, a2):  # a steps first, then a2: both have count 1 then
        for p in (a, a2, b):
            p.grad = None
        first.grad = torch.zeros_like(first)
        b.grad = torch.full_like(b, -(2.0 ** -9))  # a quarter ulp up from b's value
        before = b.detach().clone()
        opt.step()
        ups.append(b.detach() > before)
    assert not torch.equal(ups[0], ups[1])


@pytest.mark.parametrize("backend", BACKENDS)
def test_float64_values_stored_as_float16_round_alike(backend):
    """Found in review: Triton converted float64 to float16 directly, NumPy via float32."""
    x = torch.full((4,), 1 + 2.0 ** -11 + 2.0 ** -40, dtype=torch.float64)
    p = torch.nn.Parameter(torch.zeros(4, dtype=torch.float64))
    opt = SGD([p], lr=0.0, momentum=0.9, state_dtype=torch.float16, backend=require_backend(backend))
    p.grad = x.clone()
    opt.step()
    assert torch.equal(opt.state[p]["momentum_buffer"], x.float().half())


@pytest.mark.parametrize("backend", BACKENDS)
def test_resumed_run_rounds_as_the_uninterrupted_one(backend):
    def make(params):
        torch.manual_seed(11)
        return Adam(params, lr=1e-3, state_dtype=torch.bfloat16, stochastic_rounding=True,
                    backend=require_backend(backend))

    params = _params(torch.bfloat16, sizes=(300,))
    grads = _grads(params, 4)
    whole = make(params)
    _run(whole, params, grads)
    resumed_params = _params(torch.bfloat16, sizes=(300,))
    first = make(resumed_params)
    _run(first, resumed_params, grads[:2])
    second = make(resumed_params)
    second.load_state_dict(copy.deepcopy(first.state_dict()))
    _run(second, resumed_params, grads[2:])
    assert torch.equal(params[0], resumed_params[0])
    assert torch.equal(whole.state[params[0]]["exp_avg"],
                       second.state[resumed_params[0]]["exp_avg"])


@pytest.mark.parametrize("backend", BACKENDS)
def test_stochastic_rounding_keeps_special_values(backend):
    values = torch.tensor([float("nan"), float("inf"), -float("inf"), 0.0, -0.0, 1.0, 3e38])
    w = torch.nn.Parameter(values.to(torch.bfloat16))
    opt = SGD([w], lr=0.0, stochastic_rounding=True, backend=require_backend(backend))
    _run(opt, [w], [[torch.zeros_like(w)]])
    got = w.detach().float()
    assert torch.isnan(got[0])
    assert torch.equal(got[1:], values[1:].to(torch.bfloat16).float())
    assert torch.signbit(got[4])


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("sr", [False, True])
def test_bf16_state_of_float64_and_subnormal_values(backend, sr):
    """Found in review: float64 values stored as bfloat16 (Triton converted float64 to
    bfloat16 wrongly) and bfloat16 subnormals (the interpreter's cast mishandles them)."""
    x = torch.tensor([1.3, -2.7, 1e-3, 1.01e-39, -3.03e-39], dtype=torch.float64)
    p = torch.nn.Parameter(x.clone())
    opt = SGD([p], lr=0.0, momentum=0.9, state_dtype=torch.bfloat16, stochastic_rounding=sr,
              backend=require_backend(backend))
    p.grad = x.clone()
    opt.step()
    got = opt.state[p]["momentum_buffer"].double()
    ulp = torch.tensor([2 ** -7, 2 ** -6, 2 ** -17, 2 ** -133, 2 ** -133], dtype=torch.float64)
    assert ((got - x).abs() <= ulp).all(), got  # within a bfloat16 ulp of the value
    if not sr:
        assert torch.equal(got, x.float().to(torch.bfloat16).double())
    w = torch.nn.Parameter(torch.tensor([1.01e-39, -3.03e-39]).to(torch.bfloat16))
    kept = w.detach().clone()
    w.grad = torch.zeros_like(w)
    SGD([w], lr=0.0, stochastic_rounding=sr, backend=require_backend(backend)).step()
    assert torch.equal(w.detach(), kept)  # subnormal bfloat16 parameters survive a step


def test_round_bf16_stochastic_helper():
    x = np.array([1.0 + 2.0 ** -9] * 40000, dtype=np.float32)  # a quarter ulp above 1.0
    r = precision.round_bf16_stochastic(x, 3)
    assert set(np.unique(r)) == {np.float32(1.0), np.float32(1.0 + 2.0 ** -7)}
    assert abs(float(np.mean(r == np.float32(1.0 + 2.0 ** -7))) - 0.25) < 0.02
    special = np.array([np.nan, np.inf, -np.inf, -0.0], dtype=np.float32)
    out = precision.round_bf16_stochastic(special, 3)
    assert np.isnan(out[0]) and list(out[1:3]) == [np.inf, -np.inf] and np.signbit(out[3])


# -- checkpoints and copies -----------------------------------------------------------------------
@pytest.mark.parametrize("backend", BACKENDS)
def test_checkpoint_keeps_policy_dtypes(backend):
    """torch.optim's load_state_dict casts state to the parameter's dtype; ours keeps the
    fp32 master weight and fp32 states of bf16 parameters exact."""
    params = _params(torch.bfloat16)
    opt = Adam(params, lr=1e-3, master_weights=True, backend=require_backend(backend))
    _run(opt, params, _grads(params, 3))
    saved = copy.deepcopy(opt.state_dict())
    fresh = Adam(params, lr=1e-3, master_weights=True, backend=require_backend(backend))
    fresh.load_state_dict(saved)
    for p in params:
        for key in (precision.MASTER_KEY, "exp_avg", "exp_avg_sq"):
            assert fresh.state[p][key].dtype == torch.float32
            assert torch.equal(fresh.state[p][key], opt.state[p][key])
    grads = _grads(params, 2, seed=9)
    snapshot = [p.detach().clone() for p in params]
    _run(opt, params, grads)
    after = [p.detach().clone() for p in params]
    with torch.no_grad():
        for p, s in zip(params, snapshot):
            p.copy_(s)
    _run(fresh, params, grads)
    for p, a in zip(params, after):
        assert torch.equal(p.detach(), a)


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_master_left_behind_is_dropped(backend):
    """Found in review: a master kept (and not updated) by an optimizer without master
    weights, loaded later by one with them, reverted the parameter."""
    p = torch.nn.Parameter(torch.ones(4, dtype=torch.bfloat16))
    grad = [[torch.ones(4, dtype=torch.bfloat16)]]
    a = SGD([p], lr=0.5, master_weights=True, backend=require_backend(backend))
    _run(a, [p], grad)  # p = 0.5
    b = SGD([p], lr=0.5, backend=require_backend(backend))
    b.load_state_dict(a.state_dict())
    assert precision.MASTER_KEY not in b.state[p]
    _run(b, [p], grad * 3)  # p = -1.0
    c = SGD([p], lr=0.5, master_weights=True, backend=require_backend(backend))
    c.load_state_dict(b.state_dict())
    _run(c, [p], grad)
    assert torch.equal(p.detach().float(), torch.full((4,), -1.5))


def test_loaded_state_does_not_share_the_checkpoints_tensors():
    params = _params(torch.bfloat16, sizes=(10,))
    opt = Adam(params, lr=1e-3)
    _run(opt, params, _grads(params, 1))
    other = Adam(params, lr=1e-3)
    other.load_state_dict(opt.state_dict())
    for key in ("exp_avg", "exp_avg_sq"):
        assert other.state[params[0]][key].data_ptr() != opt.state[params[0]][key].data_ptr()


def test_torch_checkpoint_of_bf16_params_loads_into_fp32_state():
    params = _params(torch.bfloat16)
    ref = torch.optim.Adam(params, lr=1e-3)
    _run(ref, params, _grads(params, 2))
    opt = Adam(params, lr=1e-3)
    opt.load_state_dict(ref.state_dict())
    _run(opt, params, _grads(params, 1, seed=4))
    assert all(opt.state[p]["exp_avg"].dtype == torch.float32 for p in params)
    # and back: torch casts our fp32 state to its parameters' bf16
    back = torch.optim.Adam(params, lr=1e-3)
    back.load_state_dict(opt.state_dict())
    _run(back, params, _grads(params, 1, seed=5))


def test_options_survive_pickle_and_deepcopy():
    params = _params(torch.bfloat16, sizes=(10,))
    opt = Adam(params, lr=1e-3, state_dtype="param", master_weights=True,
               stochastic_rounding=True)
    for clone in (copy.deepcopy(opt), pickle.loads(pickle.dumps(opt))):
        assert clone.state_dtype == "param"
        assert clone.master_weights and clone.stochastic_rounding


# -- bad options ----------------------------------------------------------------------------------
@pytest.mark.parametrize("kwargs, error, text", [
    ({"state_dtype": "bf16"}, ValueError, "state_dtype"),
    ({"state_dtype": 3}, TypeError, "state_dtype"),
    ({"state_dtype": torch.int32}, ValueError, "state_dtype"),
    ({"master_weights": "yes"}, TypeError, "master_weights"),
    ({"stochastic_rounding": 2}, TypeError, "stochastic_rounding"),
    ({"skip_nonfinite": "no"}, TypeError, "skip_nonfinite"),
])
def test_bad_options_name_themselves(kwargs, error, text):
    with pytest.raises(error, match=text):
        Adam(_params(torch.float32), lr=1e-3, **kwargs)


def test_master_key_taken_by_a_program_state():
    """The master weight's key is reserved in every program (tests/test_state_keys.py)."""
    with pytest.raises(optdsl.DslError, match="master_param"):
        optdsl.compile("state m = 0 as master_param\nm = 0.9 * m + g\nw = w - 0.1 * m")


@pytest.mark.parametrize("name", ["state_dtype", "master_weights", "stochastic_rounding"])
def test_option_names_cannot_be_hypers(name):
    with pytest.raises(optdsl.DslError, match="keyword of the optimizer"):
        optdsl.compile(f"hyper {name} = 1\nw = w - {name} * g")


def test_shard_coordinates_cover_sharded_mesh_dims_only(tmp_path):
    """Stochastic rounding hashes the rank's coordinates along the mesh dimensions a group's
    DTensors are sharded on: shards round independently, replicas (tensor-parallel
    replicated weights, HSDP's replicate dimension) alike (found in review: the global rank
    made replicas drift apart). One process, a 1x1 mesh, in a subprocess."""
    import subprocess
    import sys
    import textwrap

    code = textwrap.dedent("""
        import os, torch, torch.distributed as dist
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.tensor import Replicate, Shard, distribute_tensor
        from optdsl.optim.distributed import shard_coordinates
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT="0")
        dist.init_process_group("gloo", rank=0, world_size=1,
                                store=dist.HashStore())
        mesh = init_device_mesh("cpu", (1, 1))
        hsdp = distribute_tensor(torch.ones(4), mesh, [Replicate(), Shard(0)])
        tp = distribute_tensor(torch.ones(4), mesh, [Replicate(), Replicate()])
        print(shard_coordinates([hsdp, hsdp]), shard_coordinates([tp]),
              shard_coordinates([hsdp, tp]), shard_coordinates([torch.ones(2)]))
        dist.destroy_process_group()
    """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["(0,)", "()", "()", "()"]
