"""The ABI between the runtime and a generated C step: ``Args``, the ctypes mirror of the
prelude's ``optdsl_args`` (optdsl.codegen.c_prelude), field for field, and the contract
line every generated C source starts with."""

from __future__ import annotations

import ctypes
import json
import re

from optdsl.codegen.c_prelude import ABI_VERSION

SweepCallback = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_int64)

_P = ctypes.c_void_p


class Args(ctypes.Structure):
    """What one step hands the C code (the prelude's ``optdsl_args``)."""

    _fields_ = [
        ("n", ctypes.c_int64), ("ncol", ctypes.c_int64),
        ("ptr", _P), ("dtype", _P), ("numel", _P), ("t", _P),
        ("sptr", _P), ("sdtype", _P), ("sval", _P), ("hyper", _P),
        ("inv_grad_scale", ctypes.c_double),
        ("rows", _P), ("red", _P), ("totals", _P), ("raw", _P),
        ("nblocks", ctypes.c_int64), ("blocks", _P), ("partials", _P),
        ("threads", ctypes.c_int64), ("parallel_min", ctypes.c_int64), ("sr", ctypes.c_int64),
        ("seed", _P), ("ti", _P), ("facts", _P),
        ("sweep_cb", SweepCallback),
        ("lib", _P), ("library_cb", SweepCallback),
        ("stat", _P), ("statpart", _P), ("stat_group", _P), ("nunits", ctypes.c_int64),
        ("units", _P), ("steps", _P), ("step_dtype", _P), ("count_steps", ctypes.c_int64),
    ]


_CONTRACT = re.compile(r"/\* optdsl-contract: (\{.*\}) \*/")


def read_contract(source: str) -> dict:
    """The contract line of a generated C source (checked against this ABI)."""
    found = _CONTRACT.search(source[:65536])
    if found is None:
        raise ValueError("not a generated C step: no optdsl-contract line")
    contract = json.loads(found.group(1))
    if contract.get("abi") != ABI_VERSION:
        raise ValueError(f"generated C step of ABI {contract.get('abi')}, not {ABI_VERSION}")
    return contract
